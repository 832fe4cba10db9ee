"""Benchmark case ``scaling``: how our T5's training step grows with batch, sequence length and model size.

Three sweeps of one forward + backward step of our T5 (the ``model`` case's step: zero grads,
forward, fp32 cross-entropy, backward; no optimizer), each point in a fresh interpreter so its
peak memory is its own:

- ``model``: each of ``--scaling-models`` (default t5-v1_1 small, base, large) at
  ``--scaling-batch`` rows of ``--scaling-length`` encoder tokens;
- ``batch``: ``--scaling-model`` at each of ``--scaling-batches`` rows;
- ``length``: ``--scaling-model`` at each encoder length of ``--scaling-lengths``.

The decoder length of a point is what span corruption gives for its encoder length (T5's
``random_spans_helper`` at density 0.15, mean span 3: 512 -> 114, 1024 -> 229), so a point is a
real pre-training shape. A point shared by sweeps is measured once. Per point: median step time
over ``--repeats`` steps after ``--warmup``, tokens/s (encoder + decoder), model FLOPs per step
(:func:`t5composer.models.t5_flops_per_batch`) and the FLOP/s achieved, the share of those FLOPs
in attention scores (the part that grows with the square of the length), and ``s/FLOP vs first``:
the step's seconds per FLOP over the sweep's first point's (1.0 = the cost grew exactly with the
FLOPs; below 1, the bigger shape used the hardware better). Peak memory (weights, gradients and
activations; no optimizer state): the CUDA allocator's peak, or on CPU the point's process peak
RSS above its RSS before the model was built (``peak_mib`` in the JSON keeps the whole process's).

Defaults: CPU fp32 with all threads, small/base/large at batch 2 x 512, small at batches
1, 2, 4, 8 and at lengths 128 to 1,024 (a few minutes on 2 cores); CUDA bf16 autocast,
base at batches 16 to 128 (``--scaling-microbatch`` rows per forward) and lengths 128 to 2,048
at batch 32, small/base/large at batch 32. ``--scaling-compile`` compiles each point's model
(a compilation per shape: minutes on a GPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HELP = 'our T5 fwd+bwd step against batch size, sequence length and model size (time, FLOP/s, peak memory)'

COLUMNS = (
    ('sweep', 'sweep', '{}'),
    ('model_short', 'model', '{}'),
    ('batch', 'batch', '{}'),
    ('lengths', 'enc+dec', '{}'),
    ('params_m', 'params M', '{:,.0f}'),
    ('gflop_per_step', 'GFLOP/step', '{:,.0f}'),
    ('attention_share', 'attn share', '{:.1%}'),
    ('step_s', 'step s', '{:.3f}'),
    ('tokens_per_s', 'tokens/s', '{:,.0f}'),
    ('gflops_per_s', 'GFLOP/s', '{:,.1f}'),
    ('s_per_flop_vs_first', 's/FLOP vs first', '{:.2f}'),
    ('peak_above_start_mib', 'peak MiB', '{:,.0f}'),
)

_REPO = Path(__file__).resolve().parents[1]
_DEFAULTS = {
    'cpu': dict(models='google/t5-v1_1-small,google/t5-v1_1-base,google/t5-v1_1-large', model='google/t5-v1_1-small',
                batch=2, batches='1,2,4,8', length=512, lengths='128,256,512,1024', dtype='fp32'),
    'cuda': dict(models='google/t5-v1_1-small,google/t5-v1_1-base,google/t5-v1_1-large', model='google/t5-v1_1-base',
                 batch=32, batches='16,32,64,128', length=512, lengths='128,256,512,1024,2048', dtype='bf16'),
}


def add_args(parser: argparse.ArgumentParser) -> None:
    """Add the case's ``--scaling-*`` options to ``parser``."""
    g = parser.add_argument_group('scaling')
    g.add_argument('--scaling-sweeps', default='model,batch,length', type=_sweeps_arg, help="comma-separated among 'model,batch,length'")
    g.add_argument('--scaling-models', default=None, help='models of the model sweep (presets or config dirs)')
    g.add_argument('--scaling-model', default=None, help='model of the batch and length sweeps')
    g.add_argument('--scaling-batch', type=int, default=None, help='rows per step in the model and length sweeps')
    g.add_argument('--scaling-batches', default=None, help='rows per step of the batch sweep')
    g.add_argument('--scaling-length', type=int, default=None, help='encoder length in the model and batch sweeps')
    g.add_argument('--scaling-lengths', default=None, help='encoder lengths of the length sweep')
    g.add_argument('--scaling-microbatch', type=int, default=None, help='rows per forward/backward (default: the batch)')
    g.add_argument('--scaling-dtype', choices=['fp32', 'bf16'], default=None, help='default: fp32 on cpu, bf16 autocast on cuda')
    g.add_argument('--scaling-attn', default='sdpa', help="our attention implementation ('sdpa', 'flex', 'flex_dense')")
    g.add_argument('--scaling-compile', action='store_true', help='torch.compile each point (one compilation per shape)')


def _sweeps_arg(text: str) -> str:
    """``--scaling-sweeps``, refused by the command line (not by a traceback) when it names an unknown sweep."""
    try:
        _sweeps(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix('--scaling-sweeps: ')) from e  # argparse names the option
    return text


def _sweeps(text: str) -> list[str]:
    sweeps = [s.strip() for s in text.split(',') if s.strip()]
    unknown = sorted(set(sweeps) - {'model', 'batch', 'length'})
    if unknown:
        raise ValueError(f"--scaling-sweeps: unknown sweep(s) {unknown}; choose among 'model,batch,length'.")
    return sweeps


def plan(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """``(sweep, point)`` pairs in order; a point is ``{'model', 'batch', 'encoder_length'}``."""
    d = _DEFAULTS[args.device]
    ints = lambda text: [int(x) for x in str(text).split(',') if x.strip()]  # noqa: E731
    batch, length = args.scaling_batch or d['batch'], args.scaling_length or d['length']
    model = args.scaling_model or d['model']
    sweeps = _sweeps(args.scaling_sweeps)
    out: list[tuple[str, dict[str, Any]]] = []
    for sweep in sweeps:
        if sweep == 'model':
            names = [m.strip() for m in (args.scaling_models or d['models']).split(',') if m.strip()]
            out += [('model', {'model': m, 'batch': batch, 'encoder_length': length}) for m in names]
        elif sweep == 'batch':
            out += [('batch', {'model': model, 'batch': b, 'encoder_length': length}) for b in ints(args.scaling_batches or d['batches'])]
        else:
            out += [('length', {'model': model, 'batch': batch, 'encoder_length': n}) for n in ints(args.scaling_lengths or d['lengths'])]
    return out


def measure_point(spec: dict[str, Any]) -> dict[str, Any]:
    """Time one point in this process (run by :func:`run` in a fresh interpreter); see the module docstring."""
    import time

    import torch

    from bench.measure import peak_memory_mib, reset_peak_memory, sync
    from bench.model import build_variant, make_batch
    from t5composer.data.span_spec import SpanCorruptionSpec
    from t5composer.models import T5ForConditionalGeneration, load_model_config, t5_flops_per_batch

    device, batch_size = spec['device'], spec['batch']
    if spec.get('threads'):
        torch.set_num_threads(spec['threads'])
    microbatch = spec.get('microbatch') or batch_size
    dtype = torch.bfloat16 if spec['dtype'] == 'bf16' else torch.float32
    if device == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True  # as pt_base (tf32: true)
    start_mib = _current_rss_mib() if device == 'cpu' else 0.0  # torch and the interpreter, before the model
    le = spec['encoder_length']
    ld = SpanCorruptionSpec(input_length=le).target_length  # T5's density and span
    config = load_model_config(spec['model'], dropout_rate=0.0)
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: seconds less per point for large on a GPU
        model = T5ForConditionalGeneration(config, lm_head_std=config.d_model**-0.5).train()
    batch = make_batch(config.vocab_size, batch=batch_size, device=device, encoder_length=le, decoder_length=ld)
    variant = build_variant(spec['attn'] + ('+compile' if spec.get('compile') else ''), ours=model, hf_model=None,
                            batch=batch, microbatch=microbatch, device=device, dtype=dtype)
    variant.setup()

    def step() -> None:
        variant.step()  # returns the loss as a float: the step has finished
        sync(device)

    for _ in range(max(spec['warmup'], 2 if spec.get('compile') else 0)):
        step()
    reset_peak_memory(device)
    times = []
    for _ in range(spec['repeats']):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    flops = t5_flops_per_batch(config, batch_size=batch_size, encoder_length=le, decoder_length=ld)
    # Attention scores and probs.V: the terms of the formula that grow with a length (see t5_flops_per_batch).
    a, n_dec = config.num_heads * config.d_kv, config.num_decoder_layers or config.num_layers
    attention = 3 * batch_size * 4 * a * (config.num_layers * le * le + n_dec * ld * (ld + le))
    median = statistics.median(times)
    return {
        'batch': batch_size, 'encoder_length': le, 'decoder_length': ld, 'lengths': f'{le}+{ld}',
        'params_m': sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()) / 1e6,
        'flops_per_step': flops, 'gflop_per_step': flops / 1e9, 'attention_share': attention / flops,
        'step_s': median, 'times_s': times, 'tokens_per_s': batch_size * (le + ld) / median,
        'gflops_per_s': flops / median / 1e9, 'peak_mib': peak_memory_mib(device), 'start_mib': start_mib,
        'peak_above_start_mib': peak_memory_mib(device) - start_mib,
        'dtype': spec['dtype'], 'microbatch': microbatch, 'attn': spec['attn'], 'compile': bool(spec.get('compile')),
        'threads': torch.get_num_threads() if device == 'cpu' else None,
        'device_name': torch.cuda.get_device_name() if device == 'cuda' else 'cpu', 'torch': torch.__version__,
    }


def _current_rss_mib() -> float:
    with open('/proc/self/status') as f:
        return next((int(line.split()[1]) / 1024 for line in f if line.startswith('VmRSS:')), 0.0)


_POINT = """
import json, sys
from bench.scaling import measure_point
print(json.dumps(measure_point(json.loads(sys.argv[1]))))
"""


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Measure every planned point (each in a fresh interpreter); one row per (sweep, point).

    Args:
        args: the parsed command line (``device``, ``warmup``, ``repeats``, ``threads`` and the
            ``scaling_*`` options).
    """
    points = plan(args)
    dtype = args.scaling_dtype or _DEFAULTS[args.device]['dtype']
    measured: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    first: dict[str, float] = {}
    for sweep, point in points:
        spec = {**point, 'device': args.device, 'dtype': dtype, 'attn': args.scaling_attn, 'compile': args.scaling_compile,
                'microbatch': args.scaling_microbatch, 'warmup': args.warmup, 'repeats': args.repeats, 'threads': args.threads}
        key = json.dumps(spec, sort_keys=True)
        if key not in measured:
            out = subprocess.run([sys.executable, '-c', _POINT, json.dumps(spec)], cwd=_REPO, capture_output=True, text=True)
            if out.returncode != 0:
                measured[key] = {'error': out.stderr.strip().splitlines()[-1][:500] if out.stderr.strip() else f'exit {out.returncode}'}
            else:
                measured[key] = json.loads(out.stdout.strip().splitlines()[-1])
        result = measured[key]
        row = {'sweep': sweep, 'model': point['model'], 'model_short': point['model'].rsplit('/', 1)[-1], **result}
        if 'step_s' in result:
            per_flop = result['step_s'] / result['flops_per_step']
            first.setdefault(sweep, per_flop)
            row['s_per_flop_vs_first'] = per_flop / first[sweep]
            print(f'  [scaling] {sweep}: {row["model_short"]} batch {result["batch"]} x {result["lengths"]}: '
                  f'{result["step_s"]:.3f} s/step, {result["gflops_per_s"]:,.1f} GFLOP/s, peak {result["peak_above_start_mib"]:,.0f} MiB', flush=True)
        else:
            print(f'  [scaling] {sweep}: {row["model_short"]} batch {point["batch"]} x {point["encoder_length"]}: FAILED {result["error"]}', flush=True)
        rows.append(row)
    return rows
