"""The real Composer training loop on synthetic data, against the bare training step.

Used by ``bench/gpu_check.sh`` (not a ``python -m bench`` case: the loop runs as its own
``recipes/train.py`` process through Composer's launcher, exactly as a user runs it).

    python -m bench.train_loop prepare --out DIR --tokenizer TOK --rows 6400
    python3 -m composer.cli.launcher -n 1 recipes/train.py yamls/pt_base.yaml \\
        variables.data_local=DIR tokenizer.name=TOK data.eval_split=null max_duration=50ba \\
        callbacks.nanot5_log.interval=10 ... | tee loop.log
    python -m bench.train_loop report --log loop.log --model-json model.json

``prepare`` writes a ``train`` split of random token rows of the expanded length (568 for input
512) as ``recipes/convert_c4.py`` writes them (MDS, ``tokens: ndarray:uint16``, zstd) with the
``t5composer_meta.json`` that training checks, made for the given tokenizer: no corpus and no
tokenization, so it needs nothing but the tokenizer's vocabulary. ``report`` reads the
``[train] Step N ... | Seconds_per_step --> s |`` lines (windows of ``nanot5_log.interval``
steps), drops the first window (compilation, first shards), and compares the median of the rest
with the bare step of the ``model`` benchmark case (default variant ``sdpa+compile+opt``: forward,
backward, clipping and the adamwscale step, without Composer, data loading or callbacks): s/step,
tokens/s and MFU side by side and the loop's overhead (target < 5%). With ``--probe-json`` (the
``loop_probe`` callback's file) it adds the waits for the GPU left in a steady batch and the
loop's profile (GPU idle fraction, top kernels); with ``--optimizer-json`` the optimizer case;
with ``--results-dir`` it writes everything to one JSON file named for the GPU and the date.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from typing import Any, Optional

import numpy as np

from t5composer.data.span_spec import SpanCorruptionSpec

__all__ = ['bare_step_row', 'bare_step_seconds', 'loop_report', 'parse_step_lines', 'prepare_split', 'results_name', 'side_by_side']

STEP_LINE = re.compile(r'\[train\] Step (\d+) out of \S+ \|.*Seconds_per_step --> ([0-9.]+) \|')


def prepare_split(out_root: str, *, tokenizer: str, rows: int, spec: Optional[SpanCorruptionSpec] = None,
                  split: str = 'train', seed: int = 0) -> str:
    """Write a synthetic split ``out_root/split`` that training accepts for ``tokenizer``.

    Args:
        out_root: the ``data.local`` directory.
        tokenizer: what ``tokenizer.name`` will be (a saved tokenizer directory, a spiece.model, ...).
        rows: rows to write (a run of S steps of batch B needs S * B).
        spec: the run's span corruption (``data.span_corruption``; default T5's): rows get its expanded length.
        split: split name.
        seed: numpy seed of the token ids.

    Returns:
        The split directory.
    """
    from streaming import MDSWriter

    from t5composer.data.metadata import make_split_metadata, write_split_metadata
    from t5composer.tokenization import load_tokenizer, sentinel_ids, tokenizer_fingerprint

    start = time.perf_counter()
    tok = load_tokenizer(tokenizer)
    spec = spec or SpanCorruptionSpec()
    length = spec.expanded_length
    sentinels = set(sentinel_ids(tok, 1))
    top = min(sentinels) if sentinels else len(tok)  # ordinary ids lie below the sentinels (T5 layout)
    rng = np.random.default_rng(seed)
    split_dir = os.path.join(out_root, split)
    with MDSWriter(out=split_dir, columns={'tokens': 'ndarray:uint16'}, compression='zstd', size_limit='64mb') as writer:
        for first in range(0, rows, 4096):
            n = min(4096, rows - first)
            # Zipf-like ids from 3 (after pad, EOS, unk) compress about like tokenized text, as in the dataloader case.
            block = (rng.zipf(1.1, size=(n, length)) % (top - 3) + 3).astype(np.uint16)
            for row in block:
                writer.write({'tokens': row})
    meta = make_split_metadata(
        source='synthetic (bench.train_loop)', split=split, tokenizer=tokenizer,
        tokenizer_fingerprint=tokenizer_fingerprint(tok), vocab_size=len(tok), spec=spec,
        docs=rows, tokens=rows * length, rows=rows, dropped_tokens=0, skipped_lines={}, encoder='synthetic',
        seconds=time.perf_counter() - start,
    )
    write_split_metadata(split_dir, meta)
    return split_dir


def parse_step_lines(text: str) -> list[tuple[int, float]]:
    """``(step, seconds per step)`` of every nanoT5 log line in ``text``, in order."""
    return [(int(m.group(1)), float(m.group(2))) for m in STEP_LINE.finditer(text)]


def loop_report(log_text: str, *, bare_step_s: float | None, skip_windows: int = 1,
                probed: tuple[tuple[int, int], ...] = ()) -> dict[str, Any]:
    """Loop seconds per step (median of the windows after ``skip_windows``) and its overhead over the bare step.

    Args:
        log_text: the training run's console output.
        bare_step_s: seconds of the bare training step at the same shape, or None.
        skip_windows: leading windows to drop (the first holds compilation).
        probed: ``[first, end)`` batch ranges (0-based) the loop probe watched; windows that hold
            one of their batches are left out too (the profiler slows them).

    Raises:
        ValueError: fewer than ``skip_windows + 1`` windows in the log.
    """
    windows = parse_step_lines(log_text)
    steps = [step for step, _ in windows]
    starts = [0, *steps[:-1]]  # a window ending at step N holds batches [previous N, N)
    kept = [(step, s) for i, ((step, s), start) in enumerate(zip(windows, starts))
            if i >= skip_windows and not any(first < step and start < end for first, end in probed)]
    if not kept:
        raise ValueError(f'found {len(windows)} "[train] Step" windows; need one after the first {skip_windows} that the '
                         'loop probe did not watch (is callbacks.nanot5_log.interval smaller than max_duration?)')
    loop_s = statistics.median(s for _, s in kept)
    overhead = loop_s / bare_step_s - 1 if bare_step_s else None
    return {'windows': windows, 'loop_step_s': loop_s, 'bare_step_s': bare_step_s, 'overhead': overhead}


def side_by_side(bare: dict[str, Any] | None, loop_s: float) -> list[dict[str, Any]]:
    """Rows (bare step, Composer loop) of s/step, tokens/s and MFU; the loop does the bare step's work.

    Args:
        bare: the ``model`` case's row of the bare-step variant (``step_s``, ``tokens_per_s``, ``mfu``), or None.
        loop_s: the loop's seconds per step.
    """
    rows = []
    if bare is not None:
        rows.append({'what': f"bare step ({bare['variant']})", 'step_s': bare['step_s'], 'tokens_per_s': bare['tokens_per_s'],
                     'mfu': bare.get('mfu')})
        scale = bare['step_s'] / loop_s
        rows.append({'what': 'Composer loop', 'step_s': loop_s, 'tokens_per_s': bare['tokens_per_s'] * scale,
                     'mfu': bare['mfu'] * scale if bare.get('mfu') is not None else None})
    else:
        rows.append({'what': 'Composer loop', 'step_s': loop_s, 'tokens_per_s': None, 'mfu': None})
    return rows


def results_name(device: str, day: str) -> str:
    """``h200-2026-12-04.json`` for ``NVIDIA H200`` on that day: the GPU's model, lower case."""
    words = [w for w in re.split(r'[^a-z0-9]+', device.lower()) if w and w not in ('nvidia', 'tesla')]
    return f"{'-'.join(words) or 'gpu'}-{day}.json"


MODEL_LINE = re.compile(r'\[model\] (\S+): ([0-9.]+) s/step')


def bare_step_row(variant: str, model_json: str | None) -> dict[str, Any] | None:
    """The ``model`` case's JSON row of ``variant`` (step time, tokens/s, MFU), or None."""
    if model_json and os.path.exists(model_json):
        with open(model_json) as f:
            for row in json.load(f)['cases'].get('model', []):
                if row.get('variant') == variant and 'step_s' in row:
                    return row
    return None


def bare_step_seconds(variant: str, *, model_json: str | None = None, model_log: str | None = None) -> float | None:
    """The ``model`` case's median step time of ``variant``: from its JSON, else from its console log
    (whose per-variant lines survive a run stopped before it wrote the JSON)."""
    row = bare_step_row(variant, model_json)
    if row is not None:
        return float(row['step_s'])
    if model_log and os.path.exists(model_log):
        with open(model_log, errors='replace') as f:
            for m in MODEL_LINE.finditer(f.read()):
                if m.group(1) == variant:
                    return float(m.group(2))
    return None


def main(argv: list[str] | None = None) -> int:
    """``prepare`` or ``report`` (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('prepare', help='write a synthetic train split for a tokenizer')
    p.add_argument('--out', required=True, help='data.local directory')
    p.add_argument('--tokenizer', required=True)
    p.add_argument('--rows', type=int, required=True)
    p.add_argument('--input-length', type=int, default=SpanCorruptionSpec().input_length)
    r = sub.add_parser('report', help='loop seconds per step vs the bare step')
    r.add_argument('--log', required=True, help="the training run's console output")
    r.add_argument('--model-json', default=None, help='JSON of python -m bench --only model')
    r.add_argument('--model-log', default=None, help='or its console output')
    r.add_argument('--variant', default='sdpa+compile+opt', help='the bare-step variant in that JSON')
    r.add_argument('--skip-windows', type=int, default=1)
    r.add_argument('--probe-json', default=None, help="the loop_probe callback's JSON (sync waits, profile)")
    r.add_argument('--optimizer-json', default=None, help='JSON of python -m bench --only optimizer')
    r.add_argument('--results-dir', default=None, help='write everything to <dir>/<gpu>-<date>.json')
    args = parser.parse_args(argv)
    if args.command == 'prepare':
        split_dir = prepare_split(args.out, tokenizer=args.tokenizer, rows=args.rows, spec=SpanCorruptionSpec(input_length=args.input_length))
        print(f'wrote {args.rows:,} synthetic rows to {split_dir}')
        return 0
    return _report(args)


def _load(path: str | None) -> Any:
    if path and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return None


def _report(args: argparse.Namespace) -> int:
    with open(args.log, errors='replace') as f:
        text = f.read()
    bare = bare_step_seconds(args.variant, model_json=args.model_json, model_log=args.model_log)
    probe = _load(args.probe_json)
    probed = tuple(tuple(probe[k]['batches']) for k in ('sync_debug', 'profile')) if probe else ()
    rep = loop_report(text, bare_step_s=bare, skip_windows=args.skip_windows, probed=probed)
    bare_row = bare_step_row(args.variant, args.model_json)
    if bare_row is None and bare is not None:
        bare_row = {'variant': args.variant, 'step_s': bare, 'tokens_per_s': None, 'mfu': None}
    print('| what | seconds per step |')
    print('|---|---|')
    for step, seconds in rep['windows']:
        print(f'| loop window ending at step {step} | {seconds:.4f} |')
    left_out = ' and those the probe watched' if probed else ''
    print(f"| Composer loop (median of windows after the first {args.skip_windows}{left_out}) | {rep['loop_step_s']:.4f} |")
    if bare is None:
        print(f'| bare step ({args.variant}) | not measured |')
    else:
        print(f'| bare step ({args.variant}) | {bare:.4f} |')
        print(f"\nloop overhead vs bare step: {rep['overhead']:+.1%} (target < 5%)")
    rows = side_by_side(bare_row if bare_row and bare_row.get('tokens_per_s') else None, rep['loop_step_s'])
    print('\n| | s/step | tokens/s | MFU |\n|---|---|---|---|')
    for row in rows:
        print(f"| {row['what']} | {row['step_s']:.4f} | " + (f"{row['tokens_per_s']:,.0f}" if row['tokens_per_s'] else '-') + ' | '
              + (f"{row['mfu']:.1%}" if row['mfu'] is not None else '-') + ' |')
    if probe is not None:
        sync = probe.get('sync_debug', {})
        if sync.get('available') and 'sites' in sync:
            print(f"\nwaits for the GPU in a steady batch (sync debug mode, batches {sync['batches']}): "
                  f"{sync['waits_per_batch']:.1f} per batch")
            for site in sync['sites']:
                print(f"  {site['per_batch']:.1f}/batch  {site['where']}  {site['code']}")
        else:
            print('\nsync debug mode: not available here (no CUDA)')
        profile = probe.get('profile', {})
        if 'wall_s_per_batch' in profile:
            idle = profile.get('gpu_idle_fraction')
            print(f"\nloop profile (batches {profile['batches']}): {profile['wall_s_per_batch']:.4f} s/batch"
                  + (f", GPU busy {profile['gpu_busy_s_per_batch']:.4f} s, idle {idle:.1%} of the wall time" if idle is not None else ''))
            for top in profile.get('top', [])[:10]:
                print(f"  {top['ms_per_batch']:9.3f} ms/batch  {top['name']}")
    optimizer = _load(args.optimizer_json)
    optimizer_rows = optimizer['cases'].get('optimizer', []) if optimizer else []
    for row in optimizer_rows:
        if bare_row is not None and 'step_ms' in row:
            row['share_of_bare_step'] = row['step_ms'] / 1e3 / bare_row['step_s']
    if optimizer_rows:
        print('\n| optimizer | ms/step | vs nanot5 | share of the bare step |\n|---|---|---|---|')
        for row in optimizer_rows:
            share = row.get('share_of_bare_step')
            print(f"| {row['variant']} | {row['step_ms']:.2f} | {row.get('speedup_vs_nanot5', float('nan')):.2f}x | "
                  + (f'{share:.1%}' if share is not None else '-') + ' |')
    if args.results_dir:
        model = _load(args.model_json)
        device = (probe or {}).get('device') or (model or {}).get('device') or 'unknown'
        day = time.strftime('%Y-%m-%d')
        results = {
            'device': device, 'date': day, 'bare_step_variant': args.variant, 'side_by_side': rows,
            'loop_overhead': rep['overhead'], 'overhead_target': 0.05, 'loop_windows': rep['windows'],
            'loop_probe': probe, 'optimizer': optimizer_rows, 'model_case': (model or {}).get('cases', {}).get('model'),
        }
        os.makedirs(args.results_dir, exist_ok=True)
        path = os.path.join(args.results_dir, results_name(device, day))
        with open(path, 'w') as f:
            json.dump(results, f, indent=1)
        print(f'\nwrote {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
