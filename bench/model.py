"""Benchmark case ``model``: one training step's forward + backward, our T5 vs transformers'.

Both models are built from the same config and hold the same weights (ours at random init, loaded
into ``transformers.T5ForConditionalGeneration``); each step is ``forward -> fp32 cross-entropy
-> backward`` on a span-corruption shaped batch (encoder 512, decoder 114 tokens per row: what
C4 rows of 568 give, no padding and so no attention mask), split into ``--model-microbatch``
rows per forward/backward. Defaults: on CPU t5-v1_1-small, batch 8, fp32; on CUDA t5-v1_1-base,
batch 128, bf16 autocast (as Composer's ``amp_bf16``).

Variants (``--model-variants``, comma-separated): ``hf`` (transformers) or one of our attention
implementations ``sdpa``, ``flex``, ``flex_dense``, ``triton`` (see ``T5ForConditionalGeneration.set_attn_impl``),
each optionally followed by flags: ``+compile`` (``torch.compile`` of the module), ``+ckpt``
(activation checkpointing of every block), ``+autotune`` / ``+cudagraphs`` (compile with
``mode='max-autotune-no-cudagraphs'`` / ``'reduce-overhead'``: CUDA graphs, the shapes being
static), ``+closs`` (compile the fp32 cross-entropy together with the model, where Composer
compiles the model's forward only), ``+opt`` (the whole bare training step: also gradient
clipping at norm 1.0 and an adamwscale step taking the non-finite flag, as the loop runs them,
compiled with ``+compile``: what Composer's loop adds its overhead to), ``+eageropt`` (``+opt`` with
the optimizer's eager multi-tensor step even when compiling, as ``optimizer.compiled: false`` runs), ``+fusedopt``
(``+opt`` with the optimizer's fused Triton step, as ``optimizer.fused: true`` runs; CUDA). On CPU
every variant runs for each thread count of ``--model-threads``, and the variants' steps are
interleaved (a changing load hits them alike); on CUDA each variant runs in turn. Under
transformers 5, which ties the lm_head of every freshly built T5, the transformers model's lm_head
is untied first, so that it holds our v1.1 weights (equal first losses show it).

Reported per variant: median step time, tokens/s (encoder + decoder tokens, 626 per row), model
FLOP/s and on CUDA the MFU against the device's dense bf16 peak (H100/H200 989, A100 312 TFLOP/s;
``--model-peak-tflops`` for others). FLOPs per step are
:func:`t5composer.models.t5_flops_per_batch` (matmuls of forward + backward, attention scores
included; see docs/performance.md). Peak memory per variant: CUDA allocator peak; on CPU the
process's peak RSS, which includes both models' weights.

Before the variants, the case reports which SDPA kernel PyTorch picks for T5's self-attention
(additive bias that requires grad) and for its cross-attention (no mask), and which backends
accept the biased call at all (:func:`sdpa_kernel_check`); the time of T5's parallel projections
separate vs fused into one matmul (:func:`projection_fusion_check`); and on CUDA, when a flex or
triton variant is asked for, its kernels against SDPA in a small fp32 model
(:func:`attn_impl_correctness_check`), and for triton our kernel against SDPA's at T5's
self-attention shapes, alone (:func:`bias_attention_timing`: time, TFLOP/s, bf16 error).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from bench.measure import peak_memory_mib, reset_peak_memory, sync
from t5composer.data.span_spec import SpanCorruptionSpec

HELP = "model fwd+bwd step: our T5 vs transformers' (tokens/s, step time, MFU, peak memory)"

COLUMNS = (
    ('variant', 'variant', '{}'),
    ('threads', 'threads', '{}'),
    ('step_s', 'step s', '{:.3f}'),
    ('tokens_per_s', 'tokens/s', '{:,.0f}'),
    ('speedup_vs_hf', 'vs hf', '{:.2f}x'),
    ('tflops_per_s', 'TFLOP/s', '{:.3g}'),
    ('mfu', 'MFU', '{:.1%}'),
    ('peak_mib', 'peak MiB', '{:,.0f}'),
)

# What C4 rows of 568 give after T5's span corruption: 512 encoder and 114 decoder tokens.
ENCODER_LENGTH, DECODER_LENGTH = SpanCorruptionSpec().input_length, SpanCorruptionSpec().target_length

# Dense bf16 tensor-core peaks (vendor data sheets, SXM parts), matched against the device name.
BF16_PEAK_TFLOPS = (('H200', 989.0), ('H100', 989.0), ('A100', 312.0))

SDPA_BACKENDS = ('FLASH_ATTENTION', 'EFFICIENT_ATTENTION', 'CUDNN_ATTENTION', 'MATH')


def add_args(parser: argparse.ArgumentParser) -> None:
    """Add the case's ``--model-*`` options to ``parser``."""
    g = parser.add_argument_group('model')
    g.add_argument('--model-name', default=None,
                   help='preset or config dir (default: google/t5-v1_1-small on cpu, google/t5-v1_1-base on cuda)')
    g.add_argument('--model-batch', type=int, default=None, help='rows per step (default: 8 on cpu, 128 on cuda)')
    g.add_argument('--model-microbatch', type=int, default=None, help='rows per forward/backward (default: the batch)')
    g.add_argument('--model-variants', default=None,
                   help="comma-separated, e.g. 'hf,sdpa,triton+compile' (default: hf,sdpa on cpu; "
                        "sdpa,hf,sdpa+compile,sdpa+compile+opt,flex+compile,hf+compile on cuda)")
    g.add_argument('--model-threads', default=None, help="CPU only: comma-separated torch thread counts (default '1,<all>')")
    g.add_argument('--model-dtype', choices=['fp32', 'bf16'], default=None, help='default: fp32 on cpu, bf16 (autocast) on cuda')
    g.add_argument('--model-peak-tflops', type=float, default=None, help='bf16 peak for MFU when the device is not recognised')


def device_peak_tflops(name: str) -> float | None:
    """Dense bf16 peak of a GPU by its name (None when unknown)."""
    for key, peak in BF16_PEAK_TFLOPS:
        if key in name:
            return peak
    return None


def sdpa_kernel_check(device: str, *, dtype: torch.dtype, heads: int = 12, length: int = 512, d_kv: int = 64) -> dict[str, Any]:
    """Which SDPA kernel runs T5's attention calls, forward and backward.

    Self-attention passes the position bias ``[1, H, L, L]`` as an additive float mask that
    requires grad; cross-attention in pre-training passes no mask. For each, the aten op that the
    default dispatch picks (from the profiler), and which backends accept the call when SDPA is
    restricted to that one backend (``torch.nn.attention.sdpa_kernel``).

    Args:
        device: 'cpu' or 'cuda'.
        dtype: the compute dtype.
        heads: attention heads.
        length: query and key length.
        d_kv: head dimension.

    Returns:
        ``{'self_attention': {'default': [...ops], 'accepts': {backend: bool}}, 'cross_attention': {...}}``.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import ProfilerActivity, profile

    def call(with_bias: bool) -> None:
        g = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(2, heads, length, d_kv, device=device, dtype=dtype, generator=g, requires_grad=True) for _ in range(3))
        bias = torch.randn(1, heads, length, length, device=device, dtype=dtype, generator=g, requires_grad=True) if with_bias else None
        F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0).sum().backward()

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == 'cuda' else [])
    report: dict[str, Any] = {}
    for name, with_bias in (('self_attention', True), ('cross_attention', False)):
        with profile(activities=activities) as prof:
            call(with_bias)
        # The backend-specific aten ops (aten::_scaled_dot_product_efficient_attention, ..._backward, ...).
        ops = sorted({e.key for e in prof.key_averages() if e.key.startswith('aten::_') and 'attention' in e.key})
        accepts = {}
        for backend in SDPA_BACKENDS:
            if not hasattr(SDPBackend, backend):
                continue
            try:
                with sdpa_kernel([getattr(SDPBackend, backend)]), warnings.catch_warnings():
                    warnings.simplefilter('ignore')  # each refusing backend warns why; the result says enough
                    call(with_bias)
                accepts[backend] = True
            except Exception:  # "No available kernel", or a backend's own error
                accepts[backend] = False
        report[name] = {'default': ops, 'accepts': accepts}
    return report


def model_attention_kernels(device: str, config: Any, *, dtype: torch.dtype, compiled: bool,
                            batch: int = 2) -> list[str]:
    """What runs the attention in our model's own training step, eager or compiled.

    :func:`sdpa_kernel_check` calls SDPA on tensors it makes itself; what the dispatch picks also
    depends on the layout of the bias the model passes (and, compiled, on what inductor does with
    it). This runs forward + backward of a one-layer copy of ``config`` (same heads, head size,
    lengths) under autocast to ``dtype`` and returns the profiled names that belong to attention:
    the backend's aten ops (``aten::_scaled_dot_product_*``) and kernels with ``attention``,
    ``fmha``, ``flash`` or ``softmax`` in their names (a ``softmax`` kernel means the scores were
    materialised: the math path, or inductor's decomposition of it).

    Args:
        device: 'cpu' or 'cuda'.
        config: the model's ``T5Config`` (layers and vocabulary are shrunk for the check).
        dtype: the autocast dtype (fp32: no autocast).
        compiled: run the step through ``torch.compile``.
        batch: rows.
    """
    from torch.profiler import ProfilerActivity, profile

    from t5composer.models import T5ForConditionalGeneration

    small = config.__class__(**{**config.to_dict(), 'num_layers': 1, 'num_decoder_layers': 1, 'vocab_size': 256})
    model = T5ForConditionalGeneration(small).to(device).train()
    step_model = torch.compile(model) if compiled else model
    data = make_batch(small.vocab_size, batch=batch, device=device)

    def step() -> None:
        with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            out = step_model(input_ids=data['input_ids'], labels=data['labels'])
        out.loss.backward()

    step()  # compiles
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == 'cuda' else [])
    with profile(activities=activities) as prof:
        step()
        sync(device)
    keys = ('attention', 'fmha', 'flash', 'softmax')
    names = {e.key for e in prof.key_averages()}
    # Leave out the loss's log_softmax, autograd's bookkeeping rows and the dispatching wrapper.
    picked = sorted(n for n in names if any(k in n.lower() for k in keys) and 'log_softmax' not in n.lower()
                    and 'logsoftmax' not in n.lower() and not n.startswith(('autograd::', 'aten::scaled_dot'))
                    and not n.endswith('Backward0'))
    if compiled:
        torch._dynamo.reset()
    return [n[:120] for n in picked]


def projection_fusion_check(device: str, *, dtype: torch.dtype, tokens: int, d_model: int, inner: int, d_ff: int,
                            repeats: int = 5) -> dict[str, float]:
    """Milliseconds for forward + backward of T5's parallel projections, separate vs one fused matmul.

    ``qkv``: q, k, v of one self-attention (3 x ``[inner, d_model]``) against one matmul with the
    three weights concatenated at run time (``torch.cat``, keeping the Hugging Face parameters);
    ``wi``: the gated FFN's wi_0 and wi_1 likewise. Inputs ``[tokens, d_model]``.
    """
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(tokens, d_model, device=device, dtype=dtype, generator=g, requires_grad=True)
    wq, wk, wv = (torch.randn(inner, d_model, device=device, dtype=dtype, generator=g, requires_grad=True) for _ in range(3))
    w0, w1 = (torch.randn(d_ff, d_model, device=device, dtype=dtype, generator=g, requires_grad=True) for _ in range(2))

    def qkv_separate():
        q, k, v = F.linear(x, wq), F.linear(x, wk), F.linear(x, wv)
        (q.sum() + k.sum() + v.sum()).backward()

    def qkv_fused():
        q, k, v = F.linear(x, torch.cat([wq, wk, wv])).split(inner, dim=-1)
        (q.sum() + k.sum() + v.sum()).backward()

    def wi_separate():
        (F.gelu(F.linear(x, w0), approximate='tanh') * F.linear(x, w1)).sum().backward()

    def wi_fused():
        gate, up = F.linear(x, torch.cat([w0, w1])).chunk(2, dim=-1)
        (F.gelu(gate, approximate='tanh') * up).sum().backward()

    fns = {'qkv separate': qkv_separate, 'qkv fused': qkv_fused, 'wi separate': wi_separate, 'wi fused': wi_fused}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):  # interleaved, as the variants on CPU
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def attn_impl_correctness_check(device: str, impls: tuple[str, ...] = ('flex',)) -> dict[str, dict[str, float]]:
    """Largest differences of other attention implementations against SDPA on ``device``: logits, and each gradient relative to its scale.

    A small v1.1-shaped model (d_model 64, 2+2 layers, 4 heads, 32 buckets), fp32, one batch of
    4 x 128 -> 32 tokens. On CUDA this exercises FlexAttention's fused (compiled) kernel and its
    gradient of the bucket table, which the CPU tests cannot (they run FlexAttention unfused), and
    our Triton kernels compiled (the CPU tests run them in Triton's interpreter).
    """
    import transformers

    from t5composer.models import T5ForConditionalGeneration

    config = transformers.T5Config(vocab_size=512, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                                   num_heads=4, dropout_rate=0.0, feed_forward_proj='gated-gelu', tie_word_embeddings=False,
                                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # plain fp32 matmuls, so the differences are the kernels'
    try:
        return _impl_diffs(T5ForConditionalGeneration, config, device, impls)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def _impl_diffs(model_cls: Any, config: Any, device: str, impls: tuple[str, ...]) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    ref = model_cls(config).to(device)
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(2, 512, (4, 128), generator=g).to(device)
    labels = torch.randint(2, 512, (4, 32), generator=g).to(device)
    out = ref(input_ids, labels=labels)
    out.loss.backward()
    report = {}
    for impl in impls:
        model = model_cls(config, attn_impl=impl).to(device)
        model.load_state_dict(ref.state_dict())
        got = model(input_ids, labels=labels)
        got.loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        rel = {n: ((grads[n] - p.grad).abs().max() / p.grad.abs().max().clamp(min=1e-12)).item() for n, p in ref.named_parameters()}
        report[impl] = {
            'logits_max_abs_diff': (got.logits - out.logits).abs().max().item(),
            'grad_max_rel_diff': max(rel.values()),
            'table_grad_rel_diff': max(v for n, v in rel.items() if 'relative_attention_bias' in n),
        }
    return report


def bias_attention_timing(device: str, *, dtype: torch.dtype, heads: int, d_kv: int, batch: int, repeats: int = 20,
                          encoder_length: int = ENCODER_LENGTH, decoder_length: int = DECODER_LENGTH) -> dict[str, dict[str, Any]]:
    """Our fused self-attention kernel against SDPA's at T5's shapes, alone: time, TFLOP/s, error.

    For the encoder (512 tokens, no mask) and the decoder (114, causal mask in the bias): ``q``,
    ``k``, ``v`` as the head split of a projection, a ``[1, H, L, L]`` bias that requires grad,
    in ``dtype``. Each implementation's forward (no grad) and forward + backward (all four
    gradients) are timed over ``repeats`` back-to-back calls; its first call (which autotunes
    ours) is reported apart. TFLOP/s counts ``4 B H L^2 d`` for the forward and twice that for the
    backward, as the model's FLOP count does. ``error_vs_fp32``: each output's and gradient's
    largest difference from SDPA in fp32, relative to its largest value.

    Args:
        device: 'cuda'.
        dtype: the compute dtype (bf16 in training).
        heads: attention heads.
        d_kv: head size.
        batch: rows per call (the microbatch).
        repeats: calls timed per measurement.
        encoder_length: encoder tokens.
        decoder_length: decoder tokens.
    """
    from t5composer.models.bias_attention import bias_attention

    names = ('out', 'dq', 'dk', 'dv', 'dbias')
    report: dict[str, dict[str, Any]] = {}
    for where, length, causal in (('encoder', encoder_length, False), ('decoder', decoder_length, True)):
        g = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(batch, length, heads, d_kv, device=device, generator=g).transpose(1, 2) for _ in range(3))
        bias = torch.randn(1, heads, length, length, device=device, generator=g)
        if causal:
            bias = bias.masked_fill(~torch.ones(length, length, dtype=torch.bool, device=device).tril(), torch.finfo(dtype).min)
        grad = torch.randn(batch, heads, length, d_kv, device=device, generator=g)

        def run(fn: Callable, tensors: list[torch.Tensor], grad_out: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = fn(*tensors)
            return (out, *torch.autograd.grad(out, tensors, grad_out))

        def sdpa(q, k, v, bias):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)

        exact = [t.clone().requires_grad_() for t in (q, k, v, bias)]
        reference = run(sdpa, exact, grad)
        tensors = [t.to(dtype).requires_grad_() for t in (q, k, v, bias)]
        grad_out = grad.to(dtype)
        fwd_flops = 4 * batch * heads * length * length * d_kv
        entry = {}
        for impl, fn in (('sdpa', sdpa), ('ours', bias_attention)):
            sync(device)
            start = time.perf_counter()
            got = run(fn, tensors, grad_out)
            sync(device)
            first = time.perf_counter() - start
            errors = {n: ((a.float() - r).abs().max() / r.abs().max()).item() for n, a, r in zip(names, got, reference)}
            del got

            def timed(call: Callable[[], Any]) -> float:
                call()
                sync(device)
                start = time.perf_counter()
                for _ in range(repeats):
                    call()
                sync(device)
                return (time.perf_counter() - start) / repeats * 1e3

            with torch.no_grad():
                fwd_ms = timed(lambda: fn(*tensors))
            fwd_bwd_ms = timed(lambda: run(fn, tensors, grad_out))
            entry[impl] = {'fwd_ms': fwd_ms, 'fwd_bwd_ms': fwd_bwd_ms, 'fwd_tflops': fwd_flops / fwd_ms / 1e9,
                           'fwd_bwd_tflops': 3 * fwd_flops / fwd_bwd_ms / 1e9, 'first_call_s': first, 'error_vs_fp32': errors}
        report[where] = entry
    return report


# Variant flags; those of the second line imply 'compile'.
FLAGS = ('compile', 'ckpt', 'opt', 'eageropt', 'fusedopt',
         'autotune', 'cudagraphs', 'closs')
COMPILE_FLAGS = {'autotune', 'cudagraphs', 'closs'}


def _parse_variant(spec: str) -> tuple[str, set[str]]:
    from t5composer.models.t5 import ATTN_IMPLS  # imports transformers: not when the module is imported

    impl, *flags = spec.strip().split('+')
    if impl != 'hf' and impl not in ATTN_IMPLS:
        raise ValueError(f"unknown model variant {spec!r}: start with hf or one of {', '.join(ATTN_IMPLS)}")
    unknown = set(flags) - set(FLAGS)
    if unknown:
        raise ValueError(f'unknown flags {sorted(unknown)} in model variant {spec!r} ({", ".join(FLAGS)})')
    flags = set(flags)
    if flags & {'eageropt', 'fusedopt'}:
        flags.add('opt')
    if flags & COMPILE_FLAGS:
        flags.add('compile')  # a compile mode, or the loss in the compiled function, means compiling
    return impl, flags


def make_batch(vocab_size: int, *, batch: int, device: str, seed: int = 0, encoder_length: int = ENCODER_LENGTH,
               decoder_length: int = DECODER_LENGTH) -> dict[str, torch.Tensor]:
    """A span-corruption shaped batch of random ids (default: encoder 512, decoder 114), no padding."""
    from t5composer.models import shift_right

    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, min(vocab_size, 32000), (batch, encoder_length), generator=g)
    labels = torch.randint(2, min(vocab_size, 32000), (batch, decoder_length), generator=g)
    decoder_input_ids = shift_right(labels, decoder_start_token_id=0, pad_token_id=0)
    return {k: v.to(device) for k, v in (('input_ids', input_ids), ('labels', labels), ('decoder_input_ids', decoder_input_ids))}


@dataclass
class Variant:
    """One timed variant: ``setup()`` puts the shared model into the variant's mode, ``step()`` runs a step."""

    spec: str
    impl: str
    flags: set[str]
    setup: Callable[[], None]
    step: Callable[[], float]
    restore: Callable[[], Any] | None = None  # puts the weights back after an optimizer step
    times: list[float] = field(default_factory=list)
    peak_mib: float = 0.0
    first_loss: float | None = None
    error: str | None = None


def build_variant(
    spec: str,
    *,
    ours: torch.nn.Module,
    hf_model: torch.nn.Module | None,
    batch: dict[str, torch.Tensor],
    microbatch: int,
    device: str,
    dtype: torch.dtype,
    initial_weights: dict[str, torch.Tensor] | None = None,
) -> Variant:
    """The step of one variant: zero grads, forward/backward per microbatch, optionally clip + optimizer step.

    The models are shared between variants (a compiled module is compiled once per mode), so
    ``setup`` sets the attention implementation and checkpointing before each step, and a
    ``+opt`` variant loads ``initial_weights`` back after each of its steps (untimed), so every
    variant computes the same function.
    """
    impl, flags = _parse_variant(spec)
    hf = impl == 'hf'
    model = hf_model if hf else ours

    def setup() -> None:
        if hf:
            if 'ckpt' in flags:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})
            elif getattr(model, 'is_gradient_checkpointing', False):
                model.gradient_checkpointing_disable()
        else:
            model.set_attn_impl(impl)
            model.set_gradient_checkpointing('ckpt' in flags)

    mode = 'max-autotune-no-cudagraphs' if 'autotune' in flags else 'reduce-overhead' if 'cudagraphs' in flags else None

    def forward_loss(input_ids: torch.Tensor, decoder_input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if hf:
            logits = compiled_model(input_ids=input_ids, decoder_input_ids=decoder_input_ids).logits
        else:
            logits = compiled_model(input_ids, decoder_input_ids=decoder_input_ids)
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())

    # +closs compiles the fp32 cross-entropy with the model (Composer compiles only the model's forward).
    compiled_model = torch.compile(model, mode=mode) if 'compile' in flags and 'closs' not in flags else model
    if 'closs' in flags:
        forward_loss = torch.compile(forward_loss, mode=mode)
    optimizer = None
    if 'opt' in flags:
        from t5composer.optim import build_optimizer

        # pt_base's optimizer, compiled with the model as compile: true does.
        optimizer = build_optimizer(model, name='adamwscale', lr=2e-2, compile_step='compile' in flags and 'eageropt' not in flags,
                                    fused='fusedopt' in flags)
    params = [p for p in model.parameters() if p.requires_grad]
    n = batch['input_ids'].shape[0]
    chunks = [{k: v[i:i + microbatch] for k, v in batch.items()} for i in range(0, n, microbatch)]
    autocast = dtype != torch.float32

    def step() -> float:
        if 'cudagraphs' in flags:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs may be overwritten now
        for p in params:
            p.grad = None
        total = torch.zeros((), device=device)
        for mb in chunks:
            with torch.autocast(device, dtype=dtype, enabled=autocast):
                loss = forward_loss(mb['input_ids'], mb['decoder_input_ids'], mb['labels'])
            (loss * (mb['input_ids'].shape[0] / n)).backward()
            total += loss.detach()
        if optimizer is not None:  # as the loop does it: one norm for clipping and the non-finite flag
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            torch.nn.utils.clip_grads_with_norm_(params, 1.0, norm)
            optimizer.skip_next_step_if(~torch.isfinite(norm))
            optimizer.step()
        return float(total) / len(chunks)  # a host sync: the step has finished

    restore = (lambda: model.load_state_dict(initial_weights)) if optimizer is not None and initial_weights is not None else None
    return Variant(spec=spec, impl=impl, flags=flags, setup=setup, step=step, restore=restore)


def _timed(v: Variant, device: str) -> None:
    v.setup()
    sync(device)
    reset_peak_memory(device)
    start = time.perf_counter()
    loss = v.step()
    sync(device)
    v.times.append(time.perf_counter() - start)
    v.peak_mib = max(v.peak_mib, peak_memory_mib(device))
    if v.first_loss is None:
        v.first_loss = loss
    if v.restore is not None:
        v.restore()


def _warm(v: Variant, n: int) -> None:
    try:
        for _ in range(n):
            v.setup()
            loss = v.step()
            if v.first_loss is None:
                v.first_loss = loss
            if v.restore is not None:
                v.restore()
    except Exception as e:  # one failing variant (e.g. flex on some stack) must not lose the others
        v.error = f'{type(e).__name__}: {e}'[:2000]
        print(f'  [model] {v.spec}: FAILED {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ""}', flush=True)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Time each variant's step; one row per (threads, variant).

    On CPU the variants' steps are interleaved (round r times every variant once), so a load that
    changes during the run (a shared machine) affects them alike; on CUDA each variant runs its
    warm-up and repeats in turn, so its peak memory is its own.

    Args:
        args: the parsed command line (``device``, ``warmup``, ``repeats`` and the ``model_*`` options).
    """
    import transformers

    from t5composer.models import T5ForConditionalGeneration, load_model_config, t5_flops_per_batch

    device = args.device
    on_cuda = device == 'cuda'
    name = args.model_name or ('google/t5-v1_1-base' if on_cuda else 'google/t5-v1_1-small')
    batch_size = args.model_batch or (128 if on_cuda else 8)
    microbatch = args.model_microbatch or batch_size
    dtype = torch.bfloat16 if (args.model_dtype or ('bf16' if on_cuda else 'fp32')) == 'bf16' else torch.float32
    default_variants = 'sdpa,hf,sdpa+compile,sdpa+compile+opt,flex+compile,hf+compile' if on_cuda else 'hf,sdpa'
    specs = [v.strip() for v in (args.model_variants or default_variants).split(',') if v.strip()]
    for spec in specs:
        _parse_variant(spec)  # fail on a typo before building anything
    if on_cuda:
        threads_list = [torch.get_num_threads()]
        torch.backends.cuda.matmul.allow_tf32 = True  # as pt_base (tf32: true); bf16 matmuls are unaffected
    else:
        threads_list = list(dict.fromkeys(int(t) for t in (args.model_threads or f'1,{os.cpu_count() or 1}').split(',')))

    config = load_model_config(name, dropout_rate=0.0)
    torch.manual_seed(0)
    ours = T5ForConditionalGeneration(config, lm_head_std=config.d_model**-0.5).to(device).train()
    hf_model = transformers.T5ForConditionalGeneration(config)
    if hf_model.lm_head.weight is hf_model.shared.weight and ours.lm_head.weight is not ours.shared.weight:
        # transformers 5 ties the lm_head of every freshly built T5 (a v1.1 checkpoint loaded with
        # from_pretrained stays untied); untie it so that both models hold the same v1.1 weights.
        hf_model.lm_head.weight = torch.nn.Parameter(hf_model.shared.weight.detach().clone())
    missing, unexpected = hf_model.load_state_dict(ours.state_dict(), strict=False)
    if unexpected or any('embed_tokens' not in k for k in missing):  # transformers 5 may leave out the tied copies
        raise RuntimeError(f'transformers model does not take our weights: missing {missing}, unexpected {unexpected}')
    hf_model = hf_model.to(device).train()
    # '+opt' variants change our weights; they put these back after each step.
    initial = {k: v.to('cpu', copy=True) for k, v in ours.state_dict().items()} if any('opt' in s for s in specs) else None
    batch = make_batch(config.vocab_size, batch=batch_size, device=device)
    tokens = batch_size * (ENCODER_LENGTH + DECODER_LENGTH)
    flops = t5_flops_per_batch(config, batch_size=batch_size, encoder_length=ENCODER_LENGTH, decoder_length=DECODER_LENGTH)
    device_name = torch.cuda.get_device_name() if on_cuda else 'cpu'
    peak = args.model_peak_tflops or (device_peak_tflops(device_name) if on_cuda else None)
    shape = (f'{name}: d_model {config.d_model}, d_ff {config.d_ff}, {config.num_heads}x{config.d_kv} heads, '
             f'{config.num_layers}+{config.num_decoder_layers} layers, vocab {config.vocab_size}')
    print(f'[model] {shape}; batch {batch_size} (microbatch {microbatch}) x {ENCODER_LENGTH}+{DECODER_LENGTH} tokens, '
          f'{str(dtype).removeprefix("torch.")}, {flops / 1e12:.3f} TFLOP per step; {device_name}; '
          f'torch {torch.__version__}, transformers {transformers.__version__} '
          f'(its T5 attention: {getattr(hf_model.config, "_attn_implementation", None)})', flush=True)

    kernels = sdpa_kernel_check(device, dtype=dtype, heads=config.num_heads, d_kv=config.d_kv)
    for which, info in kernels.items():
        accepted = ', '.join(b for b, ok in info['accepts'].items() if ok) or 'none'
        print(f'  [model] SDPA {which}: default runs {", ".join(info["default"]) or "?"}; backends that accept it: {accepted}', flush=True)

    attention_kernels: dict[str, list[str]] = {}
    for compiled in ((False, True) if on_cuda else (False,)):  # compiling on CPU takes long and tells little
        try:
            found = model_attention_kernels(device, config, dtype=dtype, compiled=compiled)
            attention_kernels['compiled' if compiled else 'eager'] = found
            print(f'  [model] attention in our step ({"compiled" if compiled else "eager"}): {"; ".join(found) or "?"}', flush=True)
        except Exception as e:  # a diagnostic: report and go on to the timings
            print(f'  [model] attention kernels ({"compiled" if compiled else "eager"}) FAILED {type(e).__name__}: '
                  f'{str(e).splitlines()[0][:300] if str(e) else ""}', flush=True)

    impl_check = kernel_timing = None
    other_impls = tuple(dict.fromkeys(i for i, _ in map(_parse_variant, specs) if i not in ('hf', 'sdpa')))
    if on_cuda and other_impls:
        try:
            impl_check = attn_impl_correctness_check(device, other_impls)
            for impl, diffs in impl_check.items():
                print(f'  [model] {impl} vs sdpa (fp32, fused kernel): ' + ', '.join(f'{k} {v:.2e}' for k, v in diffs.items()), flush=True)
        except Exception as e:  # report and go on to the timings
            print(f'  [model] attention correctness check FAILED {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ""}', flush=True)
        torch._dynamo.reset()
    if on_cuda and 'triton' in other_impls:
        try:
            kernel_timing = bias_attention_timing(device, dtype=dtype, heads=config.num_heads, d_kv=config.d_kv, batch=microbatch)
            for where, entry in kernel_timing.items():
                print(f'  [model] self-attention kernels, {where}: ' + '; '.join(
                    f"{impl} fwd {e['fwd_ms']:.2f} ms ({e['fwd_tflops']:.0f} TFLOP/s), fwd+bwd {e['fwd_bwd_ms']:.2f} ms "
                    f"({e['fwd_bwd_tflops']:.0f} TFLOP/s), max error vs fp32 {max(e['error_vs_fp32'].values()):.1e}, "
                    f"first call {e['first_call_s']:.1f} s" for impl, e in entry.items()), flush=True)
        except Exception as e:  # report and go on to the timings
            print(f'  [model] bias_attention timing FAILED {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ""}', flush=True)

    rows: list[dict[str, Any]] = []
    for threads in threads_list:
        if not on_cuda:
            torch.set_num_threads(threads)
        fusion = projection_fusion_check(device, dtype=dtype, tokens=microbatch * ENCODER_LENGTH, d_model=config.d_model,
                                         inner=config.num_heads * config.d_kv, d_ff=config.d_ff)
        print(f'  [model] projections fwd+bwd, {microbatch * ENCODER_LENGTH} tokens{"" if on_cuda else f", {threads} threads"}: '
              + ', '.join(f'{k} {v:.2f} ms' for k, v in fusion.items()), flush=True)
        variants = [build_variant(s, ours=ours, hf_model=hf_model, batch=batch, microbatch=microbatch, device=device, dtype=dtype,
                                  initial_weights=initial) for s in specs]
        warm = {v.spec: max(args.warmup, 2 if 'compile' in v.flags else 1) for v in variants}
        if on_cuda:
            for v in variants:
                _warm(v, warm[v.spec])
                for _ in range(args.repeats if v.error is None else 0):
                    _timed(v, device)
                print(f'  [model] {v.spec}: {statistics.median(v.times) if v.times else float("nan"):.4f} s/step', flush=True)
                # Free what the variant holds (optimizer state) before the next one's peak memory is measured.
                v.step = v.setup = v.restore = None
                gc.collect()
                torch.cuda.empty_cache()
        else:
            for v in variants:
                _warm(v, warm[v.spec])
            for _ in range(args.repeats):
                for v in variants:
                    if v.error is None:
                        _timed(v, device)
        threads_col = None if on_cuda else threads
        block = []
        for v in variants:
            if v.error is not None:
                block.append({'variant': v.spec, 'threads': threads_col, 'error': v.error})
                continue
            median = statistics.median(v.times)
            block.append({
                'variant': v.spec, 'threads': threads_col,
                'step_s': median, 'times_s': v.times, 'tokens_per_s': tokens / median,
                'tflops_per_s': flops / median / 1e12, 'mfu': flops / median / (peak * 1e12) if peak else None,
                'peak_mib': v.peak_mib, 'first_loss': v.first_loss, 'model': shape, 'batch': batch_size,
                'torch': torch.__version__, 'transformers': transformers.__version__,
                'hf_attn_implementation': getattr(hf_model.config, '_attn_implementation', None),
                'microbatch': microbatch, 'dtype': str(dtype).removeprefix('torch.'), 'flops_per_step': flops,
                'device_name': device_name, 'sdpa_kernels': kernels, 'attention_kernels': attention_kernels,
                'projection_fusion_ms': fusion, 'attn_impl_check': impl_check,
                'self_attention_kernels': kernel_timing, 'interleaved': not on_cuda,
            })
            print(f'  [model] {v.spec}{"" if on_cuda else f" ({threads} threads)"}: {median:.3f} s/step, '
                  f'{tokens / median:,.0f} tokens/s, first loss {v.first_loss:.4f}', flush=True)
        # Speed-up against transformers run with the same flags (sdpa+compile vs hf+compile, ...).
        for r in block:
            twin = next((h for h in block if 'step_s' in h and _parse_variant(h['variant']) == ('hf', _parse_variant(r['variant'])[1])), None)
            if twin is not None and 'step_s' in r:
                r['speedup_vs_hf'] = twin['step_s'] / r['step_s']
        rows += block
        del variants
        gc.collect()
        torch._dynamo.reset()
    return rows
