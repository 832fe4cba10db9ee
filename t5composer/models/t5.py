"""A readable T5 (v1.1 and the original), top to bottom in one file.

The module tree mirrors ``transformers.T5ForConditionalGeneration`` so that ``state_dict()`` keys
are identical and Hugging Face weights load with ``load_state_dict`` and no conversion:

    shared                                  token embedding (also encoder/decoder.embed_tokens)
    encoder.block.{i}.layer.0               self-attention   (SelfAttention, layer_norm)
    encoder.block.{i}.layer.1               feed-forward     (DenseReluDense, layer_norm)
    encoder.final_layer_norm
    decoder.block.{i}.layer.0               causal self-attention
    decoder.block.{i}.layer.1               cross-attention  (EncDecAttention, layer_norm)
    decoder.block.{i}.layer.2               feed-forward
    decoder.final_layer_norm
    lm_head

T5 specifics worth knowing when reading the code:
- Pre-norm residual blocks with RMS norm (no mean subtraction, no bias).
- No 1/sqrt(d_kv) scaling in attention (it is folded into the q initialisation instead).
- Positions enter only through a learned relative-position bias added to the attention scores.
  Only block 0 of each stack owns the bias table; the bias is computed once per stack and the
  same tensor is added by every layer's self-attention. Cross-attention has no position bias.
- v1.1 uses a gated-GELU FFN and an untied lm_head; the original T5 uses ReLU and ties lm_head to
  the embedding, rescaling the decoder output by d_model**-0.5 first.

Attention runs through ``F.scaled_dot_product_attention`` with ``scale=1.0`` and an additive
``attn_mask`` = position bias (+ causal mask) (+ padding mask). Unpadded batches (pre-training:
every row is exactly the input length) build no padding mask at all. ``attn_impl='flex'`` runs
self-attention of unpadded batches through FlexAttention instead, with a ``score_mod`` that looks
the bias up in the bucket table, so no ``[H, L, L]`` bias is built and the table still gets its
gradient (see :class:`FlexBias`). ``attn_impl='triton'`` runs it through our own fused kernel,
which returns the bias gradient summed over the batch (see :class:`SharedBias`);
docs/performance.md has the measurements behind the default.

Greedy decoding (:meth:`T5ForConditionalGeneration.generate`) runs the encoder once and then the
decoder one token per step against a :class:`DecoderCache`: per decoder layer, preallocated
self-attention key/value buffers that each step writes one slot of, and the cross-attention
keys/values of the encoder output, projected once. Without the cache every step re-runs the
decoder on the whole prefix (same tokens, far slower).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from torch.utils.checkpoint import checkpoint

from t5composer.models.bias_attention import BIAS_ATTENTION_MAX_HEAD_DIM, bias_attention

__all__ = [
    'ATTN_IMPLS',
    'DecoderCache',
    'FLEX_IMPLS',
    'FlexBias',
    'KVCache',
    'SharedBias',
    'T5Attention',
    'T5Block',
    'T5ForConditionalGeneration',
    'T5LayerNorm',
    'T5Output',
    'T5Stack',
    'relative_position_bucket',
    'shift_right',
    'ties_word_embeddings',
]


class T5Output(NamedTuple):
    """What ``T5ForConditionalGeneration.forward`` returns when ``labels`` are given.

    A NamedTuple (not a dataclass) so it unpacks as ``loss, logits = model(...)`` and is trivially
    traceable by torch.compile.
    """

    loss: torch.Tensor
    logits: torch.Tensor


def ties_word_embeddings(config: transformers.T5Config) -> bool:
    """Original T5 (lm_head tied to the embedding, decoder output rescaled) or v1.1 (neither).

    transformers 5 sets ``config.tie_word_embeddings`` to True for every T5 and keeps the value a
    config was made with as ``scale_decoder_outputs``; transformers 4 has only the former.

    Args:
        config: the model config.
    """
    return bool(getattr(config, 'scale_decoder_outputs', config.tie_word_embeddings))


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


class T5LayerNorm(nn.Module):
    """RMS norm: scale only, no mean subtraction and no bias.

    The statistic is computed in fp32 and the result cast to the weight's dtype, as in
    Hugging Face's implementation, so bf16 weights give bf16 activations.

    Args:
        hidden_size: size of the last dimension.
        eps: added to the mean square before the reciprocal square root.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = hidden_states.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(self.weight.dtype)


def _activation(name: str):
    # HF's "gelu_new" (the v1.1 default) is the tanh approximation of GELU.
    if name in ('gelu_new', 'gelu_pytorch_tanh', 'gelu_fast'):
        return lambda x: F.gelu(x, approximate='tanh')
    if name == 'gelu':
        return F.gelu
    if name == 'relu':
        return F.relu
    if name in ('silu', 'swish'):
        return F.silu
    raise ValueError(f"Unsupported T5 activation '{name}' (expected gelu_new, gelu, relu or silu).")


class T5DenseActDense(nn.Module):
    """Original T5 FFN: wo(dropout(act(wi(x)))).

    Args:
        config: the model config (d_model, d_ff, dense_act_fn, dropout_rate).
    """

    def __init__(self, config: transformers.T5Config) -> None:
        super().__init__()
        self.wi = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.act = _activation(config.dense_act_fn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wo(self.dropout(self.act(self.wi(x))))


class T5DenseGatedActDense(nn.Module):
    """T5 v1.1 FFN: wo(dropout(act(wi_0(x)) * wi_1(x))).

    Args:
        config: the model config (d_model, d_ff, dense_act_fn, dropout_rate).
    """

    def __init__(self, config: transformers.T5Config) -> None:
        super().__init__()
        self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.act = _activation(config.dense_act_fn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wo(self.dropout(self.act(self.wi_0(x)) * self.wi_1(x)))


def relative_position_bucket(
    relative_position: torch.Tensor,
    *,
    bidirectional: bool,
    num_buckets: int,
    max_distance: int,
) -> torch.Tensor:
    """Map relative positions (key - query) to bucket ids, as in Mesh TensorFlow's T5.

    Half the buckets hold exact small distances; the rest cover distances up to
    ``max_distance`` logarithmically, and everything further shares the last bucket. When
    bidirectional, the buckets are split between keys before and after the query; otherwise
    (causal decoder) only keys at or before the query get distinct buckets.

    Args:
        relative_position: integer tensor of ``key_pos - query_pos``.
        bidirectional: encoder (True) or causal decoder (False).
        num_buckets: total number of buckets.
        max_distance: distances at or beyond this share the last bucket.

    Returns:
        Long tensor of bucket ids in ``[0, num_buckets)``, same shape as the input.
    """
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        # Future keys (positive offsets) collapse to distance 0; the causal mask hides them.
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # distance.float() is 0 for small distances -> log(0) = -inf; torch.where discards it.
    log_bucket = max_exact + (
        torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).long()
    log_bucket = log_bucket.clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, log_bucket)


@dataclass
class KVCache:
    """Keys and values ``[B, H, L, d_kv]`` that one attention layer reuses across decoding steps.

    Two kinds, told apart by ``position``:

    - self-attention (``position`` set): buffers preallocated for the longest decoder input;
      each step writes its new key/value into slot ``position`` and attends over every slot
      (the step's bias row masks the slots not written yet);
    - cross-attention (``position`` None): the encoder output's keys/values, projected once
      and only read afterwards.

    Attributes:
        k: keys.
        v: values.
        position: ``[1]`` long tensor holding the slot the current step writes; the same tensor
            is shared by all self-attention layers and advanced by the decoder stack. None for
            cross-attention.
    """

    k: torch.Tensor
    v: torch.Tensor
    position: torch.Tensor | None = None

    def write(self, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one step's key and value ``[B, H, 1, d_kv]`` at ``position``; return the buffers.

        Args:
            k_new: the new token's keys.
            v_new: the new token's values.
        """
        # index_copy_ with a tensor index keeps every shape static from step to step, so a
        # compiled step does not recompile for each new position.
        self.k.index_copy_(2, self.position, k_new.to(self.k.dtype))
        self.v.index_copy_(2, self.position, v_new.to(self.v.dtype))
        return self.k, self.v


ATTN_IMPLS = ('sdpa', 'flex', 'flex_dense', 'triton')
FLEX_IMPLS = ('flex', 'flex_dense')


class SharedBias(NamedTuple):
    """The self-attention bias of an unpadded pass, the same for every row: for our fused kernel.

    :func:`~t5composer.models.bias_attention.bias_attention` adds it to the scores and returns
    its gradient summed over the batch (``attn_impl='triton'``).

    Attributes:
        bias: ``[1, H, Lq, Lk]`` position bias (+ causal mask) in the compute dtype, contiguous.
    """

    bias: torch.Tensor


class FlexBias(NamedTuple):
    """The self-attention position bias in factored form, for FlexAttention.

    SDPA needs the bias as a tensor broadcastable to ``[B, H, Lq, Lk]``; FlexAttention instead
    calls a ``score_mod`` per score, which can look the bias up where it is stored. Gradients
    reach ``table`` through that lookup (FlashAttention's missing bias gradient is what kept
    nanoT5 on the slow path, its issue #28).

    Attributes:
        table: ``[num_buckets, H]`` the learned bias table (block 0's
            ``relative_attention_bias.weight``).
        buckets: ``[Lq, Lk]`` long bucket id of each (query, key) pair; no gradient.
        causal: hide keys after the query (decoder self-attention).
        dense: ``[H, Lq, Lk]`` the table gathered once per forward (``attn_impl='flex_dense'``:
            the kernel's backward scatters into H*Lq*Lk addresses instead of num_buckets*H, less
            atomic contention for a few MB), or None to index ``table`` inside the kernel.
    """

    table: torch.Tensor
    buckets: torch.Tensor
    causal: bool
    dense: torch.Tensor | None = None


@functools.cache
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: FlexBias) -> torch.Tensor:
    """``softmax(q k^T + bias) v`` (no score scaling) through FlexAttention.

    Outside ``torch.compile`` FlexAttention runs unfused (it materialises the scores), so on CUDA
    the call goes through a compiled ``flex_attention``; torch 2.7 cannot compile its backward on
    CPU (inference only there), so CPU runs it eagerly: correct, for tests, not fast.

    Args:
        q: ``[B, H, Lq, d_kv]`` queries.
        k: ``[B, H, Lk, d_kv]`` keys.
        v: ``[B, H, Lk, d_kv]`` values.
        bias: the position bias (and causality) to apply.
    """
    from torch.nn.attention.flex_attention import flex_attention

    table, buckets, causal, dense = bias

    def score_mod(score, b, h, q_idx, kv_idx):
        score = score + (table[buckets[q_idx, kv_idx], h] if dense is None else dense[h, q_idx, kv_idx])
        if causal:
            score = torch.where(q_idx >= kv_idx, score, -float('inf'))  # never a whole row: the diagonal stays
        return score

    eager = torch.compiler.is_compiling() or q.device.type != 'cuda'  # inside torch.compile it is fused anyway
    attend = flex_attention if eager else _compiled_flex_attention()
    return attend(q, k, v, score_mod=score_mod, scale=1.0)


class T5Attention(nn.Module):
    """Multi-head attention without biases or score scaling, optionally owning the position bias.

    Args:
        config: the model config (d_model, d_kv, num_heads, dropout_rate, relative_* fields).
        has_relative_attention_bias: whether this layer owns the ``relative_attention_bias``
            table (only block 0's self-attention does).
        bidirectional: position buckets for encoder (True) or causal decoder (False).
    """

    def __init__(self, config: transformers.T5Config, *, has_relative_attention_bias: bool, bidirectional: bool) -> None:
        super().__init__()
        self.n_heads = config.num_heads
        self.d_kv = config.d_kv
        self.inner_dim = self.n_heads * self.d_kv
        self.dropout = config.dropout_rate
        self.bidirectional = bidirectional
        self.has_relative_attention_bias = has_relative_attention_bias
        self.relative_attention_num_buckets = config.relative_attention_num_buckets
        self.relative_attention_max_distance = config.relative_attention_max_distance

        self.q = nn.Linear(config.d_model, self.inner_dim, bias=False)
        self.k = nn.Linear(config.d_model, self.inner_dim, bias=False)
        self.v = nn.Linear(config.d_model, self.inner_dim, bias=False)
        self.o = nn.Linear(self.inner_dim, config.d_model, bias=False)
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(self.relative_attention_num_buckets, self.n_heads)

    def position_buckets(self, query_length: int, key_length: int, *, query_offset: int = 0) -> torch.Tensor:
        """Bucket ids ``[query_length, key_length]`` (long) of every (query, key) pair.

        Args:
            query_length: number of query positions.
            key_length: number of key positions.
            query_offset: absolute position of the first query (non-zero once a KV cache holds
                earlier keys).
        """
        device = self.relative_attention_bias.weight.device
        query_pos = torch.arange(query_offset, query_offset + query_length, device=device)[:, None]
        key_pos = torch.arange(key_length, device=device)[None, :]
        return relative_position_bucket(
            key_pos - query_pos,
            bidirectional=self.bidirectional,
            num_buckets=self.relative_attention_num_buckets,
            max_distance=self.relative_attention_max_distance,
        )

    def compute_bias(self, query_length: int, key_length: int, *, query_offset: int = 0) -> torch.Tensor:
        """Relative position bias ``[1, n_heads, query_length, key_length]`` (table dtype).

        Args:
            query_length: number of query positions.
            key_length: number of key positions.
            query_offset: absolute position of the first query (non-zero once a KV cache holds
                earlier keys).
        """
        values = self.relative_attention_bias(self.position_buckets(query_length, key_length, query_offset=query_offset))
        return values.permute(2, 0, 1).unsqueeze(0)  # [q, k, H] -> [1, H, q, k]

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        # [B, L, H*d_kv] -> [B, H, L, d_kv]
        return x.view(x.shape[0], x.shape[1], self.n_heads, self.d_kv).transpose(1, 2)

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[B, H, L, d_kv]`` of ``x`` ``[B, L, d_model]``.

        Args:
            x: the tokens to attend to (the encoder output for cross-attention).
        """
        return self._heads(self.k(x)), self._heads(self.v(x))

    def forward(
        self,
        hidden_states: torch.Tensor,
        *,
        attn_bias: torch.Tensor | FlexBias | SharedBias | None,
        key_value_states: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Attend from ``hidden_states`` to itself, or to ``key_value_states`` (cross-attention).

        Args:
            hidden_states: queries' input ``[B, Lq, d_model]``.
            attn_bias: additive bias broadcastable to ``[B, H, Lq, Lk]`` in the compute dtype
                (position bias and masks), or None (SDPA); a :class:`FlexBias` (FlexAttention); or
                a :class:`SharedBias` (our fused kernel).
            key_value_states: encoder output ``[B, Lk, d_model]`` for cross-attention; None for
                self-attention.
            kv_cache: decoding only: a cross-attention cache replaces the projection of
                ``key_value_states``; a self-attention cache receives this step's key/value and
                supplies all earlier ones (see :class:`KVCache`).

        Returns:
            ``[B, Lq, d_model]``.
        """
        q = self._heads(self.q(hidden_states))
        if kv_cache is not None and kv_cache.position is None:
            k, v = kv_cache.k, kv_cache.v  # cross-attention: the encoder's k/v, projected once
        else:
            k, v = self.project_kv(hidden_states if key_value_states is None else key_value_states)
            if kv_cache is not None:
                k, v = kv_cache.write(k, v)  # self-attention step: add this token, see all slots
        if isinstance(attn_bias, FlexBias):
            out = flex_self_attention(q, k, v, attn_bias)
        elif isinstance(attn_bias, SharedBias):
            out = bias_attention(q, k, v, attn_bias.bias)
        else:
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=attn_bias,
                dropout_p=self.dropout if self.training else 0.0,
                scale=1.0,  # T5 does not scale scores; the q init accounts for it
            )
        out = out.transpose(1, 2).reshape(hidden_states.shape[0], hidden_states.shape[1], self.inner_dim)
        return self.o(out)


class T5LayerSelfAttention(nn.Module):
    """Pre-norm self-attention sublayer with residual: x + dropout(attn(norm(x))).

    Args:
        config: the model config.
        has_relative_attention_bias: whether this layer owns the bias table (block 0).
        is_decoder: causal decoder (True) or encoder (False).
    """

    def __init__(self, config: transformers.T5Config, *, has_relative_attention_bias: bool, is_decoder: bool) -> None:
        super().__init__()
        self.SelfAttention = T5Attention(
            config,
            has_relative_attention_bias=has_relative_attention_bias,
            bidirectional=not is_decoder,
        )
        self.layer_norm = T5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | FlexBias | None, kv_cache: KVCache | None = None) -> torch.Tensor:
        return x + self.dropout(self.SelfAttention(self.layer_norm(x), attn_bias=attn_bias, kv_cache=kv_cache))


class T5LayerCrossAttention(nn.Module):
    """Pre-norm cross-attention sublayer with residual (no position bias).

    Args:
        config: the model config.
    """

    def __init__(self, config: transformers.T5Config) -> None:
        super().__init__()
        self.EncDecAttention = T5Attention(config, has_relative_attention_bias=False, bidirectional=True)
        self.layer_norm = T5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(
        self,
        x: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None,
        attn_bias: torch.Tensor | None,
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        attn = self.EncDecAttention(
            self.layer_norm(x), attn_bias=attn_bias, key_value_states=encoder_hidden_states, kv_cache=kv_cache,
        )
        return x + self.dropout(attn)


class T5LayerFF(nn.Module):
    """Pre-norm feed-forward sublayer with residual.

    Args:
        config: the model config (``is_gated_act`` picks gated v1.1 or the original FFN).
    """

    def __init__(self, config: transformers.T5Config) -> None:
        super().__init__()
        self.DenseReluDense = T5DenseGatedActDense(config) if config.is_gated_act else T5DenseActDense(config)
        self.layer_norm = T5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.DenseReluDense(self.layer_norm(x)))


class T5Block(nn.Module):
    """One encoder block (self-attn, FFN) or decoder block (self-attn, cross-attn, FFN).

    Args:
        config: the model config.
        has_relative_attention_bias: True for block 0 only.
        is_decoder: decoder block (adds cross-attention) or encoder block.
    """

    def __init__(self, config: transformers.T5Config, *, has_relative_attention_bias: bool, is_decoder: bool) -> None:
        super().__init__()
        self.is_decoder = is_decoder
        layers: list[nn.Module] = [
            T5LayerSelfAttention(config, has_relative_attention_bias=has_relative_attention_bias, is_decoder=is_decoder),
        ]
        if is_decoder:
            layers.append(T5LayerCrossAttention(config))
        layers.append(T5LayerFF(config))
        self.layer = nn.ModuleList(layers)

    def forward(
        self,
        hidden_states: torch.Tensor,
        self_attn_bias: torch.Tensor | FlexBias | None,
        encoder_hidden_states: torch.Tensor | None = None,
        cross_attn_bias: torch.Tensor | None = None,
        self_kv: KVCache | None = None,
        cross_kv: KVCache | None = None,
    ) -> torch.Tensor:
        hidden_states = self.layer[0](hidden_states, self_attn_bias, self_kv)
        if self.is_decoder:
            hidden_states = self.layer[1](hidden_states, encoder_hidden_states, cross_attn_bias, cross_kv)
        return self.layer[-1](hidden_states)


# ---------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """dtype the attention inputs will have: the autocast dtype inside autocast, else x's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def _padding_to_bias(bias: torch.Tensor | None, mask: torch.Tensor, neg: float) -> torch.Tensor:
    """Put ``neg`` where ``mask == 0`` (mask ``[B, Lk]``), broadcast against ``bias``.

    Masked entries are *replaced* (not added to) so two masks never sum to -inf; a fully
    masked row then becomes uniform rather than NaN, as in Hugging Face's T5.
    """
    keep = (mask != 0)[:, None, None, :]
    if bias is None:
        return torch.where(keep, 0.0, neg)
    return torch.where(keep, bias, neg)


# ---------------------------------------------------------------------------------------------
# Stacks and the full model
# ---------------------------------------------------------------------------------------------


@dataclass
class DecoderCache:
    """What the decoder keeps between greedy decoding steps (built by :meth:`T5Stack.init_cache`).

    Attributes:
        self_kv: per decoder layer, self-attention buffers ``[B, H, max_length, d_kv]``.
        cross_kv: per decoder layer, the encoder output's keys/values ``[B, H, Le, d_kv]``.
        self_bias: ``[1, H, max_length, max_length]`` position bias + causal mask, computed once
            for all steps. Step t uses row t: query t against keys 0..t bucketed causally, the
            unwritten slots after t masked.
        cross_bias: ``[B, 1, 1, Le]`` encoder padding mask, or None when unpadded.
        position: ``[1]`` long tensor, the decoder position of the token fed next.
    """

    self_kv: list[KVCache]
    cross_kv: list[KVCache]
    self_bias: torch.Tensor
    cross_bias: torch.Tensor | None
    position: torch.Tensor


class T5Stack(nn.Module):
    """Encoder or decoder: embedding, blocks, final norm.

    Attributes:
        gradient_checkpointing: when True and training, each block's activations are recomputed
            in backward (``torch.utils.checkpoint`` with ``use_reentrant=False``).
        attn_impl: ``'sdpa'``, or ``'flex'`` / ``'flex_dense'`` for FlexAttention in the
            self-attention of unpadded full-sequence passes (padded batches and cached decoding
            steps use SDPA whatever this says); see :class:`FlexBias`.

    Args:
        config: the model config.
        embed_tokens: the shared token embedding module.
        is_decoder: decoder (causal, with cross-attention) or encoder.
    """

    def __init__(self, config: transformers.T5Config, embed_tokens: nn.Embedding, *, is_decoder: bool) -> None:
        super().__init__()
        self.is_decoder = is_decoder
        self.embed_tokens = embed_tokens
        n_layers = config.num_decoder_layers if is_decoder else config.num_layers
        self.block = nn.ModuleList(
            [T5Block(config, has_relative_attention_bias=(i == 0), is_decoder=is_decoder) for i in range(n_layers)],
        )
        self.final_layer_norm = T5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.gradient_checkpointing = False
        self.attn_impl = 'sdpa'

    def _flex_bias(self, length: int) -> FlexBias:
        """Position bias of an unpadded stack for FlexAttention: bucket ids and the table, no mask."""
        attn = self.block[0].layer[0].SelfAttention
        table = attn.relative_attention_bias.weight
        buckets = attn.position_buckets(length, length)
        dense = table[buckets].permute(2, 0, 1) if self.attn_impl == 'flex_dense' else None
        return FlexBias(table=table, buckets=buckets, causal=self.is_decoder, dense=dense)

    def _self_attn_bias(self, length: int, attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """Position bias (+ causal mask) (+ padding mask), once for the whole stack, in ``dtype``."""
        # The masked value is the *compute* dtype's min: fp32's min would round to -inf in
        # bf16/fp16, and a row that is entirely -inf turns softmax into NaN.
        neg = torch.finfo(dtype).min
        bias = self.block[0].layer[0].SelfAttention.compute_bias(length, length).float()
        if self.is_decoder:
            causal = torch.ones(length, length, dtype=torch.bool, device=bias.device).tril()
            bias = bias.masked_fill(~causal, neg)
        if attention_mask is not None:
            bias = _padding_to_bias(bias, attention_mask, neg)
        # Cast once here, not in every layer, and into a contiguous layout: compute_bias returns a
        # permuted view (last-dim stride H), and SDPA's fused kernels want the mask's last dim dense;
        # with the view, the compiled CUDA step fell back to the fp32 math path (materialised scores).
        # (.to returns the view itself when the dtype already matches, hence .contiguous.)
        return bias.to(dtype, memory_format=torch.contiguous_format).contiguous()

    def init_cache(
        self,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        *,
        max_length: int,
    ) -> DecoderCache:
        """An empty decoding cache with the cross-attention keys/values already projected.

        Args:
            encoder_hidden_states: ``[B, Le, d_model]`` encoder output.
            encoder_attention_mask: ``[B, Le]`` 1/0 padding mask of the encoder input, or None.
            max_length: most decoder tokens that will be fed (start token included).
        """
        if not self.is_decoder:
            raise ValueError('init_cache is for the decoder stack.')
        batch, device = encoder_hidden_states.shape[0], encoder_hidden_states.device
        dtype = _compute_dtype(encoder_hidden_states)
        position = torch.zeros(1, dtype=torch.long, device=device)
        self_kv, cross_kv = [], []
        for block in self.block:
            attn = block.layer[0].SelfAttention
            shape = (batch, attn.n_heads, max_length, attn.d_kv)
            # Zeros, not empty: masked slots get zero weight, and 0 * garbage could be NaN.
            self_kv.append(KVCache(
                torch.zeros(shape, dtype=dtype, device=device),
                torch.zeros(shape, dtype=dtype, device=device),
                position,
            ))
            cross_kv.append(KVCache(*block.layer[1].EncDecAttention.project_kv(encoder_hidden_states)))
        cross_bias = None
        if encoder_attention_mask is not None:
            cross_bias = _padding_to_bias(None, encoder_attention_mask, torch.finfo(dtype).min).to(dtype)
        return DecoderCache(
            self_kv=self_kv,
            cross_kv=cross_kv,
            self_bias=self._self_attn_bias(max_length, None, dtype),
            cross_bias=cross_bias,
            position=position,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        *,
        cache: DecoderCache | None = None,
    ) -> torch.Tensor:
        """Run the stack.

        Args:
            input_ids: ``[B, L]`` token ids.
            attention_mask: ``[B, L]``, 1 for real tokens and 0 for padding; None = no padding
                (no mask tensor is built at all in that case).
            encoder_hidden_states: ``[B, Le, d_model]`` (decoder only).
            encoder_attention_mask: ``[B, Le]`` padding mask of the encoder input (decoder only).
            cache: decoder only, one step of incremental decoding: ``input_ids`` is ``[B, 1]``,
                the token at ``cache.position``; masks and encoder keys/values come from the
                cache (the mask arguments are ignored), and the position advances by one.

        Returns:
            ``[B, L, d_model]`` hidden states after the final norm and dropout.
        """
        hidden = self.dropout(self.embed_tokens(input_ids))
        if cache is not None:
            if input_ids.shape[1] != 1:
                raise ValueError(f'A cached decoding step takes one token per row, got {input_ids.shape[1]}.')
            self_bias = cache.self_bias.index_select(2, cache.position)  # this query's bias row
            cross_bias = cache.cross_bias
        else:
            dtype = _compute_dtype(hidden)
            if self.attn_impl in FLEX_IMPLS and attention_mask is None:
                self_bias = self._flex_bias(input_ids.shape[1])
            elif self.attn_impl == 'triton' and attention_mask is None:
                self_bias = SharedBias(self._self_attn_bias(input_ids.shape[1], None, dtype))
            else:
                self_bias = self._self_attn_bias(input_ids.shape[1], attention_mask, dtype)
            cross_bias = None
            if self.is_decoder and encoder_attention_mask is not None:
                cross_bias = _padding_to_bias(None, encoder_attention_mask, torch.finfo(dtype).min).to(dtype)

        for i, block in enumerate(self.block):
            if cache is not None:
                hidden = block(hidden, self_bias, encoder_hidden_states, cross_bias, cache.self_kv[i], cache.cross_kv[i])
            elif self.gradient_checkpointing and self.training:
                hidden = checkpoint(block, hidden, self_bias, encoder_hidden_states, cross_bias, use_reentrant=False)
            else:
                hidden = block(hidden, self_bias, encoder_hidden_states, cross_bias)
        if cache is not None:
            cache.position += 1
        return self.dropout(self.final_layer_norm(hidden))


def shift_right(labels: torch.Tensor, *, decoder_start_token_id: int, pad_token_id: int) -> torch.Tensor:
    """Teacher-forcing decoder inputs: labels shifted one to the right, start token first.

    Ignored label positions (-100) become ``pad_token_id``.

    Args:
        labels: ``[B, L]`` target ids (may contain -100).
        decoder_start_token_id: id placed at position 0 (T5: the pad id, 0).
        pad_token_id: replacement for -100.
    """
    shifted = torch.full_like(labels, decoder_start_token_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == -100, pad_token_id)


_FLEX_CHECKPOINT_ERROR = ("attn_impl={!r} cannot be combined with activation checkpointing (torch 2.7's FlexAttention "
                          "gives the position table wrong gradients under torch.utils.checkpoint); use attn_impl='sdpa'.")


class T5ForConditionalGeneration(nn.Module):
    """T5 encoder-decoder language model with HF-compatible parameter names.

    ``forward`` returns the logits ``[B, Lt, V]``; when ``labels`` are given it returns
    :class:`T5Output` ``(loss, logits)`` with the loss = mean cross-entropy (fp32) over labels
    != -100. Weights are initialised on construction exactly as transformers' T5 does
    (see :meth:`init_weights`).

    Args:
        config: a ``transformers.T5Config`` (see ``load_model_config``).
        lm_head_std: optional std for the untied lm_head init (default: the reference's 1.0 *
            initializer_factor, which gives a first loss around 60; ``d_model**-0.5`` is saner).
        attn_impl: self-attention of unpadded batches through ``'sdpa'`` (default),
            FlexAttention (``'flex'``, ``'flex_dense'``) or our kernel (``'triton'``); see
            :meth:`set_attn_impl`.
    """

    def __init__(self, config: transformers.T5Config, *, lm_head_std: float | None = None, attn_impl: str = 'sdpa') -> None:
        super().__init__()
        self.config = config
        self.model_dim = config.d_model
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config, self.shared, is_decoder=False)
        self.decoder = T5Stack(config, self.shared, is_decoder=True)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if ties_word_embeddings(config):
            self.lm_head.weight = self.shared.weight
        self.init_weights(lm_head_std=lm_head_std)
        self.set_attn_impl(attn_impl)

    # -- init ---------------------------------------------------------------------------------

    @torch.no_grad()
    def _init_weights(self, module: nn.Module, lm_head_std: float | None = None) -> None:
        """Initialise one module the way transformers' ``T5PreTrainedModel._init_weights`` does."""
        cfg = self.config
        f = cfg.initializer_factor
        if isinstance(module, T5LayerNorm):
            module.weight.fill_(f * 1.0)
        elif isinstance(module, T5ForConditionalGeneration):
            module.shared.weight.normal_(0.0, f * 1.0)
            if not ties_word_embeddings(cfg):
                std = f * 1.0 if lm_head_std is None else lm_head_std
                module.lm_head.weight.normal_(0.0, std)
        elif isinstance(module, T5DenseGatedActDense):
            module.wi_0.weight.normal_(0.0, f * cfg.d_model**-0.5)
            module.wi_1.weight.normal_(0.0, f * cfg.d_model**-0.5)
            module.wo.weight.normal_(0.0, f * cfg.d_ff**-0.5)
        elif isinstance(module, T5DenseActDense):
            module.wi.weight.normal_(0.0, f * cfg.d_model**-0.5)
            module.wo.weight.normal_(0.0, f * cfg.d_ff**-0.5)
        elif isinstance(module, T5Attention):
            module.q.weight.normal_(0.0, f * (cfg.d_model * cfg.d_kv) ** -0.5)
            module.k.weight.normal_(0.0, f * cfg.d_model**-0.5)
            module.v.weight.normal_(0.0, f * cfg.d_model**-0.5)
            module.o.weight.normal_(0.0, f * (cfg.num_heads * cfg.d_kv) ** -0.5)
            if module.has_relative_attention_bias:
                module.relative_attention_bias.weight.normal_(0.0, f * cfg.d_model**-0.5)

    def init_weights(self, lm_head_std: float | None = None) -> None:
        """(Re-)initialise all weights.

        Args:
            lm_head_std: std of the untied lm_head; None keeps transformers' ``1.0 *
                initializer_factor``. Ignored when the lm_head is tied to the embedding.
        """
        for module in self.modules():
            self._init_weights(module, lm_head_std=lm_head_std)

    # -- helpers ------------------------------------------------------------------------------

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Number of (unique) parameters.

        Args:
            exclude_embeddings: leave out the token embedding table ``shared`` (the lm_head is a
                matmul and is counted unless it is tied to ``shared``).
        """
        params = list(self.parameters())  # deduplicates tied/shared tensors
        if exclude_embeddings:
            params = [p for p in params if p is not self.shared.weight]
        return sum(p.numel() for p in params)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Turn activation checkpointing of every block on or off in both stacks (not with FlexAttention, see :meth:`set_attn_impl`)."""
        if enabled and self.encoder.attn_impl in FLEX_IMPLS:
            raise ValueError(_FLEX_CHECKPOINT_ERROR.format(self.encoder.attn_impl))
        self.encoder.gradient_checkpointing = enabled
        self.decoder.gradient_checkpointing = enabled

    def set_attn_impl(self, attn_impl: str) -> None:
        """Choose how self-attention of unpadded full-sequence passes runs, in both stacks.

        ``'sdpa'``: ``F.scaled_dot_product_attention`` with the bias ``[1, H, L, L]`` as additive
        mask. ``'flex'``: FlexAttention, the bias looked up from the ``[num_buckets, H]`` table per
        score; ``'flex_dense'``: FlexAttention reading a ``[H, L, L]`` bias gathered once per
        forward. ``'triton'``: our fused kernel (:mod:`t5composer.models.bias_attention`, CUDA),
        the ``[1, H, L, L]`` bias added per score and its gradient summed over the batch inside
        the kernel. Padded batches and cached decoding steps always use SDPA. Neither FlexAttention
        nor our kernel has attention-probability dropout, so they need ``dropout_rate`` 0 (as in
        pre-training); the flex variants also refuse activation checkpointing: under
        ``torch.utils.checkpoint`` torch 2.7's FlexAttention returns wrong gradients for a
        captured tensor such as the bias table (seen on CPU, where it runs unfused).

        Args:
            attn_impl: one of :data:`ATTN_IMPLS`.
        """
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f'attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}.')
        if attn_impl != 'sdpa' and self.config.dropout_rate > 0:
            raise ValueError(f"attn_impl={attn_impl!r} has no attention dropout; set dropout_rate 0 "
                             f"(it is {self.config.dropout_rate}) or use attn_impl='sdpa'.")
        if attn_impl in FLEX_IMPLS and self.encoder.gradient_checkpointing:
            raise ValueError(_FLEX_CHECKPOINT_ERROR.format(attn_impl))
        if attn_impl == 'triton' and self.config.d_kv > BIAS_ATTENTION_MAX_HEAD_DIM:
            raise ValueError(f"attn_impl='triton' takes heads of at most d_kv={BIAS_ATTENTION_MAX_HEAD_DIM}, "
                             f"got {self.config.d_kv}; use attn_impl='sdpa'.")
        self.encoder.attn_impl = attn_impl
        self.decoder.attn_impl = attn_impl

    # Composer looks these up on the ComposerModel's children when FSDP / activation
    # checkpointing is configured through the Trainer: one unit per block.
    def fsdp_wrap_fn(self, module: nn.Module) -> bool:
        """FSDP auto-wrap policy: wrap each :class:`T5Block` but the first of each stack.

        Block 0 owns the relative position bias table, and :class:`T5Stack` computes the bias
        from it once per forward, *outside* block 0's forward. A separately wrapped block 0
        would still be sharded at that moment (FULL_SHARD fails with "'weight' must be 2-D"),
        so the first blocks stay in the root unit with the embeddings and the lm_head, whose
        parameters are gathered for the whole forward and backward.
        """
        return isinstance(module, T5Block) and not module.layer[0].SelfAttention.has_relative_attention_bias

    def activation_checkpointing_fn(self, module: nn.Module) -> bool:
        """Composer's activation checkpointing policy: checkpoint each :class:`T5Block`."""
        return isinstance(module, T5Block)

    # -- forward ------------------------------------------------------------------------------

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder hidden states ``[B, Le, d_model]``.

        Args:
            input_ids: ``[B, Le]`` encoder token ids.
            attention_mask: ``[B, Le]`` 1/0 padding mask, or None for unpadded rows.
        """
        return self.encoder(input_ids, attention_mask=attention_mask)

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decoder logits ``[B, Lt, V]`` given encoder outputs.

        Args:
            decoder_input_ids: ``[B, Lt]`` decoder input ids (shifted targets).
            encoder_hidden_states: output of :meth:`encode`.
            encoder_attention_mask: ``[B, Le]`` encoder padding mask, or None.
            decoder_attention_mask: ``[B, Lt]`` decoder padding mask, or None.
        """
        hidden = self.decoder(
            decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
        )
        return self._project(hidden)

    def _project(self, hidden: torch.Tensor) -> torch.Tensor:
        """Decoder output -> vocabulary logits."""
        if ties_word_embeddings(self.config):
            # Original T5 rescales before the tied projection (Mesh TensorFlow convention).
            hidden = hidden * (self.model_dim**-0.5)
        return self.lm_head(hidden)

    def forward(
        self,
        input_ids: torch.Tensor,
        decoder_input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor | T5Output:
        """Encode, decode, project to the vocabulary.

        Args:
            input_ids: ``[B, Le]`` encoder ids.
            decoder_input_ids: ``[B, Lt]`` decoder ids; if None, built from ``labels`` by
                :func:`shift_right`.
            attention_mask: ``[B, Le]`` encoder padding mask (1 = token), or None.
            decoder_attention_mask: ``[B, Lt]`` decoder padding mask, or None.
            labels: ``[B, Lt]`` targets with -100 for ignored positions, or None.

        Returns:
            logits ``[B, Lt, V]`` if ``labels`` is None, else ``T5Output(loss, logits)``.
        """
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError('Pass decoder_input_ids or labels (to shift right).')
            if self.config.decoder_start_token_id is None:
                raise ValueError('config.decoder_start_token_id is None; T5 uses the pad id (0).')
            decoder_input_ids = shift_right(
                labels,
                decoder_start_token_id=self.config.decoder_start_token_id,
                pad_token_id=self.config.pad_token_id,
            )
        encoder_hidden_states = self.encode(input_ids, attention_mask)
        logits = self.decode(decoder_input_ids, encoder_hidden_states, attention_mask, decoder_attention_mask)
        if labels is None:
            return logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        return T5Output(loss=loss, logits=logits)

    # -- generation ---------------------------------------------------------------------------

    def _special_ids(self) -> tuple[int, int, list[int]]:
        """(decoder start id, pad id, EOS ids) for generation, as transformers resolves them."""
        cfg = self.config
        if cfg.decoder_start_token_id is None:
            raise ValueError('config.decoder_start_token_id is None; T5 uses the pad id (0).')
        eos = cfg.eos_token_id
        eos_ids = [] if eos is None else list(eos) if isinstance(eos, (list, tuple)) else [eos]
        pad = cfg.pad_token_id
        if pad is None:
            if not eos_ids:
                raise ValueError('config has neither pad_token_id nor eos_token_id to pad finished rows with.')
            pad = eos_ids[0]  # transformers does the same when a model has no pad id
        return cfg.decoder_start_token_id, pad, eos_ids

    # no_grad rather than inference_mode: the returned ids stay ordinary tensors that later
    # autograd code (e.g. a training step on generated targets) may use.
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        max_new_tokens: int = 128,
        min_new_tokens: int = 0,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Batched greedy decoding; the same tokens as transformers' ``generate(do_sample=False, num_beams=1)``.

        The encoder runs once. Each step appends the argmax of the last position's logits;
        a row that has produced EOS gets ``pad_token_id`` from then on, and decoding stops as
        soon as every row has finished. Dropout stays as the module's mode says: call
        ``.eval()`` first, as with transformers.

        Args:
            input_ids: ``[B, Le]`` encoder ids, left or right padded.
            attention_mask: ``[B, Le]`` 1 for tokens, 0 for padding. When None and
                ``input_ids`` contain the pad id, the mask is ``input_ids != pad_token_id``, as
                transformers infers it; otherwise no padding.
            max_new_tokens: most tokens to generate per row.
            min_new_tokens: EOS is forbidden until this many tokens are generated (transformers'
                ``min_new_tokens``); ``min_new_tokens=max_new_tokens`` makes every row generate
                exactly ``max_new_tokens`` (for benchmarks).
            use_cache: decode one token per step against a :class:`DecoderCache`; False re-runs
                the decoder (cross-attention projections included) on the whole prefix every
                step, the slow path kept for comparison.

        Returns:
            ``[B, 1 + n]`` long tensor: ``decoder_start_token_id`` then ``n <= max_new_tokens``
            generated ids (``n < max_new_tokens`` only when every row stopped early).
        """
        if max_new_tokens < 1:
            raise ValueError(f'max_new_tokens must be >= 1, got {max_new_tokens}.')
        start, pad, eos_list = self._special_ids()
        device = input_ids.device
        eos_ids = torch.tensor(eos_list, dtype=torch.long, device=device)
        batch = input_ids.shape[0]
        if attention_mask is None and self.config.pad_token_id is not None and pad not in eos_list:
            is_pad = input_ids == pad
            if is_pad.any():
                attention_mask = (~is_pad).long()

        encoder_hidden = self.encode(input_ids, attention_mask)
        # The last generated token is never fed back, so the decoder sees at most max_new_tokens.
        cache = self.decoder.init_cache(encoder_hidden, attention_mask, max_length=max_new_tokens) if use_cache else None
        tokens = torch.full((batch, 1), start, dtype=torch.long, device=device)
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        for step in range(max_new_tokens):
            if cache is not None:
                hidden = self.decoder(tokens[:, -1:], encoder_hidden_states=encoder_hidden, cache=cache)
                logits = self._project(hidden[:, -1])
            else:
                logits = self.decode(tokens, encoder_hidden, attention_mask)[:, -1]
            logits = logits.float()  # transformers takes the argmax of fp32 scores too
            if step < min_new_tokens and len(eos_list):
                logits[:, eos_ids] = -float('inf')
            next_tokens = torch.where(finished, pad, logits.argmax(dim=-1))
            tokens = torch.cat([tokens, next_tokens[:, None]], dim=1)
            finished |= torch.isin(next_tokens, eos_ids)
            if finished.all():  # one host sync per step, as in transformers
                break
        return tokens
