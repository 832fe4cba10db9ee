"""Benchmarks of t5composer (not tests): a table of named cases, each timed with warm-up + repeats.

    python recipes/benchmark.py                                   # every case, cuda if present
    python recipes/benchmark.py --only generation --device cpu --json bench.json
    python recipes/benchmark.py --only generation --gen-model google/t5-v1_1-small --repeats 1

Each case prints a table and adds rows to the JSON output (``{"device": ..., "cases": {name:
[row, ...]}}``). Times are the median over ``--repeats`` runs after ``--warmup`` runs. Peak
memory: on CUDA ``torch.cuda.max_memory_allocated`` per variant; on CPU the process's peak
resident set size (VmHWM, reset before each variant where Linux allows it; otherwise
``getrusage``'s lifetime maximum, which only grows, so variants run smallest first).

Cases:
    generation   greedy decoding with and without the key/value cache: batch 32, source 1,024
                 tokens, 128 new tokens per row (EOS suppressed so every row generates all 128),
                 random weights. Model: ``--gen-model`` (default google/t5-v1_1-small on CUDA;
                 on CPU the "bench-cpu" shape: t5-v1_1-small with d_model 256, d_ff 1024,
                 4 heads of 64, 4+4 layers, vocab 32128: the uncached run is already ~3.5 min
                 per repeat on one CPU thread). Measured (2-core shared machine, --threads 1):
                 154.8 tokens/s with the cache, 18.9 without (8.2x; 426 vs 20.5 tokens/s after
                 the 16.8 s encoder pass), identical tokens. The whole case takes ~14 minutes
                 on CPU with the default 3 repeats; --repeats 1 for a quicker look.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any, Callable  # noqa: E402

import torch  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


def _reset_peak_memory(device: str) -> None:
    if device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        return
    try:  # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) of this process
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        pass


def _peak_memory_mib(device: str) -> float:
    if device == 'cuda':
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def measure(fn: Callable[[], Any], *, device: str, warmup: int, repeats: int, warmup_fn: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Run ``fn`` ``repeats`` times after ``warmup`` runs of ``warmup_fn`` (default ``fn``).

    Args:
        fn: the work to time.
        device: 'cpu' or 'cuda' (CUDA work is synchronised before reading the clock).
        warmup: untimed runs first.
        repeats: timed runs.
        warmup_fn: a cheaper stand-in for the warm-up runs (same kernels, less work).

    Returns:
        ``{'times_s': [...], 'median_s': ..., 'peak_mib': ..., 'result': last return value}``.
    """
    for _ in range(warmup):
        (warmup_fn or fn)()
    _sync(device)
    _reset_peak_memory(device)
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return {'times_s': times, 'median_s': statistics.median(times), 'peak_mib': _peak_memory_mib(device), 'result': result}


# ---------------------------------------------------------------------------------------------
# Case: generation
# ---------------------------------------------------------------------------------------------

# t5-v1_1-small narrowed so the uncached CPU run stays near a minute on 2 cores.
BENCH_CPU_SHAPE = dict(d_model=256, d_ff=1024, num_heads=4, d_kv=64, num_layers=4, num_decoder_layers=4)


def _generation_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group('generation')
    g.add_argument('--gen-model', default=None,
                   help="'bench-cpu' or a model name/dir (default: google/t5-v1_1-small on cuda, bench-cpu on cpu)")
    g.add_argument('--gen-batch', type=int, default=32)
    g.add_argument('--gen-source-len', type=int, default=1024)
    g.add_argument('--gen-new-tokens', type=int, default=128)
    g.add_argument('--gen-dtype', choices=['fp32', 'bf16'], default='fp32')


def _generation(args: argparse.Namespace) -> list[dict[str, Any]]:
    from t5composer.models import T5ForConditionalGeneration, load_model_config

    device = args.device
    name = args.gen_model or ('google/t5-v1_1-small' if device == 'cuda' else 'bench-cpu')
    if name == 'bench-cpu':
        config = load_model_config('google/t5-v1_1-small', dropout_rate=0.0, **BENCH_CPU_SHAPE)
    else:
        config = load_model_config(name, dropout_rate=0.0)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(config, lm_head_std=config.d_model**-0.5).eval().to(device)
    if args.gen_dtype == 'bf16':
        model = model.to(torch.bfloat16)
    batch, source_len, new = args.gen_batch, args.gen_source_len, args.gen_new_tokens
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(2, config.vocab_size - 100, (batch, source_len), generator=g).to(device)
    shape = (f'{name}: d_model {config.d_model}, d_ff {config.d_ff}, {config.num_heads}x{config.d_kv} heads, '
             f'{config.num_layers}+{config.num_decoder_layers} layers, vocab {config.vocab_size}, {args.gen_dtype}')
    print(f'[generation] {shape}; batch {batch}, source {source_len}, {new} new tokens (EOS suppressed)', flush=True)

    def generate(use_cache: bool, tokens: int) -> torch.Tensor:
        # min_new_tokens = max_new_tokens: every row generates every token.
        return model.generate(input_ids, max_new_tokens=tokens, min_new_tokens=tokens, use_cache=use_cache)

    encoder = measure(lambda: model.encode(input_ids), device=device, warmup=args.warmup, repeats=1)
    rows, outputs = [], {}
    for use_cache in (True, False):  # cached first: smaller peak memory (see the module docstring)
        m = measure(
            lambda: generate(use_cache, new),
            warmup_fn=lambda: generate(use_cache, min(new, 4)),  # warms kernels/allocator, far cheaper
            device=device, warmup=args.warmup, repeats=args.repeats,
        )
        outputs[use_cache] = m.pop('result')
        generated = batch * (outputs[use_cache].shape[1] - 1)
        rows.append({
            'variant': 'kv cache' if use_cache else 'no cache',
            'tokens_per_s': generated / m['median_s'],
            'decode_tokens_per_s': generated / max(m['median_s'] - encoder['median_s'], 1e-9),
            'median_s': m['median_s'],
            'times_s': m['times_s'],
            'encoder_s': encoder['median_s'],
            'peak_mib': m['peak_mib'],
            'model': shape,
            'batch': batch, 'source_len': source_len, 'new_tokens': new,
        })
        print(f"  {rows[-1]['variant']}: {m['median_s']:.2f} s median of {len(m['times_s'])}", flush=True)
    same = torch.equal(outputs[True], outputs[False])
    speedup = rows[1]['median_s'] / rows[0]['median_s']
    for row in rows:
        row['speedup_vs_no_cache'] = rows[1]['median_s'] / row['median_s']
        row['same_tokens'] = same
    print(f'  cache speedup {speedup:.2f}x; cached and uncached tokens identical: {same}')
    return rows


# ---------------------------------------------------------------------------------------------
# The table of cases
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One named benchmark.

    Attributes:
        help: one line for ``--help``.
        add_args: adds the case's own options (prefixed with its name) to the parser.
        run: runs the case with the parsed arguments and returns its result rows.
        columns: (row key, header, format) of the printed table.
    """

    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], list[dict[str, Any]]]
    columns: tuple[tuple[str, str, str], ...]


CASES: dict[str, Case] = {
    'generation': Case(
        help='greedy generation tokens/s with and without the KV cache',
        add_args=_generation_args,
        run=_generation,
        columns=(
            ('variant', 'variant', '{}'),
            ('tokens_per_s', 'tokens/s', '{:.1f}'),
            ('decode_tokens_per_s', 'tokens/s excl. encoder', '{:.1f}'),
            ('median_s', 'median s', '{:.2f}'),
            ('encoder_s', 'encoder s', '{:.2f}'),
            ('speedup_vs_no_cache', 'speedup', '{:.2f}x'),
            ('peak_mib', 'peak MiB', '{:.0f}'),
        ),
    ),
}


def print_table(case: Case, rows: list[dict[str, Any]]) -> None:
    """Print ``rows`` as a Markdown table with the case's columns."""
    cells = [[fmt.format(row[key]) for key, _, fmt in case.columns] for row in rows]
    headers = [header for _, header, _ in case.columns]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    print('| ' + ' | '.join(h.ljust(w) for h, w in zip(headers, widths)) + ' |')
    print('|' + '|'.join('-' * (w + 2) for w in widths) + '|')
    for c in cells:
        print('| ' + ' | '.join(x.ljust(w) for x, w in zip(c, widths)) + ' |')


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the selected cases, print tables, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--only', action='append', choices=sorted(CASES), help='run only this case (repeatable)')
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--warmup', type=int, default=1, help='untimed runs before timing')
    parser.add_argument('--repeats', type=int, default=3, help='timed runs; the median is reported')
    parser.add_argument('--json', default=None, help='write the results to this file')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: torch\'s choice). On a shared machine 1 thread avoids '
                             'OpenMP barrier stalls that slow small ops (the cached decode step) by orders of magnitude')
    for case in CASES.values():
        case.add_args(parser)
    args = parser.parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda but CUDA is not available')
    if args.repeats < 1 or args.warmup < 0:
        parser.error('--repeats must be >= 1 and --warmup >= 0')

    if args.threads is not None:
        torch.set_num_threads(args.threads)

    results: dict[str, Any] = {
        'device': torch.cuda.get_device_name() if args.device == 'cuda' else f'cpu ({torch.get_num_threads()} threads)',
        'torch': torch.__version__,
        'cases': {},
    }
    for name in args.only or list(CASES):
        rows = CASES[name].run(args)
        results['cases'][name] = rows
        print(f'\n## {name} ({results["device"]})\n')
        print_table(CASES[name], rows)
        print()
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=2)
        print(f'wrote {args.json}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
