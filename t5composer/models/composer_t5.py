"""Composer wrapper around :class:`~t5composer.models.t5.T5ForConditionalGeneration`.

Batches are dicts from the span-corruption collator: ``input_ids [B, Le]``, ``labels [B, Lt]``,
``decoder_input_ids [B, Lt]`` and optionally ``attention_mask`` / ``decoder_attention_mask``.
The logits line up with ``labels`` position by position (no extra shift, unlike decoder-only LMs).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from composer.models import ComposerModel
from torchmetrics import Metric

from t5composer.data.denoising import batch_groups
from t5composer.models.metrics import LanguageNLL, TokenAccuracy
from t5composer.models.t5 import T5ForConditionalGeneration, shift_right, ties_word_embeddings

__all__ = ['ComposerT5', 'GenerationEval', 'build_composer_t5', 't5_flops_per_batch']


def t5_flops_per_batch(
    config: transformers.T5Config,
    *,
    batch_size: int,
    encoder_length: int,
    decoder_length: int,
) -> int:
    """Matmul FLOPs of one forward + backward pass of T5 on a ``[B, Le] -> [B, Ld]`` batch.

    With ``a = num_heads * d_kv``, ``g = 3`` for a gated FFN (wi_0, wi_1, wo) else 2, a matmul of
    ``m x n`` weights costing ``2mn`` FLOPs per token, and backward = 2x forward:

        encoder, per layer per encoder token:
            2*4*d*a                 q, k, v, o projections
          + 2*2*Le*a                scores q.k and probs.v (full Le x Le)
          + 2*g*d*d_ff              FFN
        decoder, per layer per decoder token:
            2*4*d*a + 2*2*Ld*a      self-attention (full Ld x Ld; the causal half is computed too)
          + 2*2*d*a + 2*2*Le*a      cross-attention q, o and scores/values over the Le keys
          + 2*g*d*d_ff              FFN
        decoder, per layer per *encoder* token:
            2*2*d*a                 cross-attention k, v of the encoder output
        lm_head, per decoder token: 2*d*V

        forward = B * (Le*Ne*enc + Ld*(Nd*dec + 2dV) + Le*Nd*4da);  total = 3 * forward

    Norms, softmax, activations, embedding lookups and the position-bias gather are ignored
    (they are not matmuls). Padding tokens count: they are computed. Activation
    checkpointing's recomputation is not counted (the usual MFU convention).

    Args:
        config: the model config.
        batch_size: rows in the batch.
        encoder_length: encoder sequence length ``Le``.
        decoder_length: decoder sequence length ``Ld``.
    """
    d, a, ff, vocab = config.d_model, config.num_heads * config.d_kv, config.d_ff, config.vocab_size
    g = 3 if config.is_gated_act else 2
    n_enc = config.num_layers
    n_dec = config.num_decoder_layers if config.num_decoder_layers is not None else config.num_layers
    le, ld = encoder_length, decoder_length
    enc_per_token = 2 * 4 * d * a + 2 * 2 * le * a + 2 * g * d * ff
    dec_per_token = 2 * 4 * d * a + 2 * 2 * ld * a + 2 * 2 * d * a + 2 * 2 * le * a + 2 * g * d * ff
    forward = batch_size * (
        le * n_enc * enc_per_token + ld * (n_dec * dec_per_token + 2 * d * vocab) + le * n_dec * 2 * 2 * d * a
    )
    return 3 * forward


@dataclass
class GenerationEval:
    """Evaluate by greedy generation (RougeL and exact match), Tk-Instruct style.

    Args:
        tokenizer: decodes generated ids (special tokens skipped).
        max_new_tokens: generation length (Tk-Instruct: 128).
        task_names: every task the eval set holds, for per-task scores.
        task_categories: task -> its SNI categories, for per-category scores.
    """

    tokenizer: Any
    max_new_tokens: int = 128
    task_names: Sequence[str] = ()
    task_categories: Mapping[str, Sequence[str]] = field(default_factory=dict)


class ComposerT5(ComposerModel):
    """Composer model for T5 span-corruption pre-training / seq2seq fine-tuning.

    ``forward`` returns logits ``[B, Lt, V]``; ``loss`` is the mean fp32 cross-entropy over
    ``labels != -100``. Eval metrics: ``LanguageNLL`` and ``TokenAccuracy``; no train metrics
    (the loss is already logged, and argmax over a 32k vocab every step is not free).

    Args:
        model: the T5 network.
    """

    def __init__(self, *, model: T5ForConditionalGeneration, generation: GenerationEval | None = None) -> None:
        super().__init__()
        self.model = model
        self.config = model.config
        self.generation = generation

    # -- training -----------------------------------------------------------------------------

    def _decoder_input_ids(self, batch: Mapping[str, Any]) -> torch.Tensor:
        if batch.get('decoder_input_ids') is not None:
            return batch['decoder_input_ids']
        if self.config.decoder_start_token_id is None:
            raise ValueError('batch has no decoder_input_ids and config.decoder_start_token_id is None.')
        return shift_right(
            batch['labels'],
            decoder_start_token_id=self.config.decoder_start_token_id,
            pad_token_id=self.config.pad_token_id,
        )

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Logits ``[B, Lt, V]`` for a dict batch.

        Args:
            batch: ``input_ids``, ``labels``, ``decoder_input_ids`` (built from labels if
                missing), optional ``attention_mask`` and ``decoder_attention_mask``.
        """
        return self.model(
            batch['input_ids'],
            decoder_input_ids=self._decoder_input_ids(batch),
            attention_mask=batch.get('attention_mask'),
            decoder_attention_mask=batch.get('decoder_attention_mask'),
        )

    def loss(self, outputs: torch.Tensor, batch: Mapping[str, Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        """Mean cross-entropy (computed in fp32) over target tokens with label != -100.

        Args:
            outputs: logits from :meth:`forward`.
            batch: the batch holding ``labels``.
        """
        labels = batch['labels']
        return F.cross_entropy(outputs.float().flatten(0, 1), labels.flatten(), ignore_index=-100)

    # -- evaluation ---------------------------------------------------------------------------

    def eval_forward(self, batch: Mapping[str, Any], outputs: Any | None = None) -> Any:
        """Logits for metric updates (reuses the training outputs when given); with generation
        eval and a batch that carries ``references``, also the decoded greedy predictions.

        Args:
            batch: the batch.
            outputs: logits already computed in training, or None.
        """
        logits = outputs if outputs is not None else self.forward(batch)
        if self.generation is None or 'references' not in batch:
            return logits
        generated = self.model.generate(
            batch['input_ids'], attention_mask=batch.get('attention_mask'), max_new_tokens=self.generation.max_new_tokens,
        )
        predictions = self.generation.tokenizer.batch_decode(generated, skip_special_tokens=True)
        return {'logits': logits, 'predictions': [p.strip() for p in predictions]}

    def get_metrics(self, is_train: bool = False) -> dict[str, Metric]:
        """Fresh metric objects: ``{}`` for training, NLL and token accuracy for evaluation.

        Args:
            is_train: whether training metrics are requested.
        """
        if is_train:
            return {}
        metrics: dict[str, Metric] = {'LanguageNLL': LanguageNLL(ignore_index=-100), 'TokenAccuracy': TokenAccuracy(ignore_index=-100)}
        if self.generation is not None:
            from t5composer.models.text_metrics import ExactMatch, RougeL

            kwargs = {'task_names': list(self.generation.task_names), 'task_categories': dict(self.generation.task_categories)}
            metrics.update({'RougeL': RougeL(**kwargs), 'ExactMatch': ExactMatch(**kwargs)})
        return metrics

    def update_metric(self, batch: Mapping[str, Any], outputs: torch.Tensor, metric: Metric) -> None:
        """Update one metric with the logits and ``batch['labels']``.

        Args:
            batch: the batch.
            outputs: logits from :meth:`eval_forward`.
            metric: a metric from :meth:`get_metrics`.
        """
        from t5composer.models.text_metrics import ExactMatch, RougeL

        text_metric = isinstance(metric, (RougeL, ExactMatch))
        if isinstance(outputs, dict):
            if text_metric:
                metric.update(outputs['predictions'], batch['references'], batch.get('task'))
                return
            outputs = outputs['logits']
        elif text_metric:
            return  # a batch without references (e.g. a C4 eval set): nothing to generate against
        metric.update(outputs, batch['labels'])

    # -- throughput ---------------------------------------------------------------------------

    def flops_per_batch(self, batch: Mapping[str, Any]) -> int:
        """Forward + backward matmul FLOPs of this batch; see :func:`t5_flops_per_batch`.

        Args:
            batch: the batch (shapes of ``input_ids`` and ``decoder_input_ids``/``labels``), or a
                mixture of denoisers' batch (the sum over its groups).
        """
        flops = 0
        for group in batch_groups(batch):
            input_ids = group['input_ids']
            targets = group.get('decoder_input_ids')
            if targets is None:
                targets = group['labels']
            flops += t5_flops_per_batch(self.config, batch_size=input_ids.shape[0], encoder_length=input_ids.shape[1],
                                        decoder_length=targets.shape[1])
        return flops


_CONVERT_HINT = (
    "If you trust the file, convert it once (torch's weights-only loader cannot run code): python -c \"import torch; "
    "from safetensors.torch import save_file; sd = torch.load('pytorch_model.bin', weights_only=True); "
    "save_file({k: v.contiguous().clone() for k, v in sd.items()}, 'model.safetensors', metadata={'format': 'pt'})\""
)


def _load_pretrained_state_dict(source: str, config: transformers.T5Config, revision: str | None = None) -> dict[str, torch.Tensor]:
    """HF-format T5 weights from a ``.safetensors`` file, a local directory or the hub.

    Only safetensors: ``pytorch_model.bin`` files are pickles, and loading one from an untrusted
    source can run arbitrary code. The model class is always our T5 (transformers'
    ``T5ForConditionalGeneration`` for directories), never code shipped with the weights.
    """
    if os.path.isfile(source):
        if source.endswith('.safetensors'):
            from safetensors.torch import load_file

            return load_file(source)
        raise ValueError(
            f"'{source}' is not a .safetensors file. t5composer imports Hugging Face weights from safetensors only: "
            f'other formats are pickles that can run code when loaded. {_CONVERT_HINT}',
        )
    try:
        # Directories (also sharded checkpoints) and hub names: transformers finds the files.
        hf = transformers.T5ForConditionalGeneration.from_pretrained(source, config=config, use_safetensors=True, revision=revision)
    except OSError as e:
        raise ValueError(
            f"'{source}' has no safetensors weights t5composer can read ({e}). t5composer imports Hugging Face weights from "
            'safetensors only (a pytorch_model.bin is a pickle that can run code). Point model.name at a directory with '
            'model.safetensors, or set model.revision to a hub revision that has one (the hub\'s conversion bot publishes '
            f'them as pull requests: model.revision=refs/pr/<number>). {_CONVERT_HINT}',
        ) from e
    return hf.state_dict()


def build_composer_t5(
    *,
    config: transformers.T5Config,
    init: str = 'random',
    pretrained: str | None = None,
    lm_head_init_std: float | None = None,
    gradient_checkpointing: bool = False,
    generation: GenerationEval | None = None,
    revision: str | None = None,
    attn_impl: str = 'sdpa',
) -> ComposerT5:
    """Build the Composer model.

    Args:
        config: model config (see ``load_model_config``).
        init: ``'random'`` (transformers' T5 init) or ``'pretrained'`` (load HF-format weights
            from ``pretrained``).
        pretrained: with ``init='pretrained'``: a ``.safetensors`` file, a local model directory
            or a hub name (safetensors weights only).
        lm_head_init_std: std of the untied lm_head at random init; None = the reference's 1.0.
        gradient_checkpointing: recompute each block's activations in backward.
        generation: evaluate by greedy generation too (fine-tuning); None for pre-training.
        revision: with a hub name, the branch, tag or commit to take the weights from.
        attn_impl: self-attention through ``'sdpa'``, ``'flex'`` or ``'flex_dense'`` (see
            :meth:`T5ForConditionalGeneration.set_attn_impl`).
    """
    if init not in ('random', 'pretrained'):
        raise ValueError(f"init must be 'random' or 'pretrained', got {init!r}.")
    model = T5ForConditionalGeneration(config, lm_head_std=lm_head_init_std, attn_impl=attn_impl)
    if init == 'pretrained':
        if not pretrained:
            raise ValueError("init='pretrained' needs pretrained=<weights file, directory or hub name>.")
        state = _load_pretrained_state_dict(pretrained, config, revision)
        # HF checkpoints often omit the tied copies (encoder/decoder.embed_tokens, tied lm_head).
        state.setdefault('encoder.embed_tokens.weight', state['shared.weight'])
        state.setdefault('decoder.embed_tokens.weight', state['shared.weight'])
        if ties_word_embeddings(config):
            state.setdefault('lm_head.weight', state['shared.weight'])
        model.load_state_dict(state, strict=True)
    model.set_gradient_checkpointing(gradient_checkpointing)
    return ComposerT5(model=model, generation=generation)
