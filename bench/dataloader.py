"""Benchmark case ``dataloader``: streaming MDS rows + span corruption through the trainer's loader.

Builds the loader with :func:`t5composer.data.streaming.build_span_dataloader` (what
``recipes/train.py`` uses) over an MDS split of ``tokens: ndarray:uint16`` rows of 568 tokens:
``--dataloader-data DIR`` (a split converted by ``recipes/convert_c4.py``), or by default a
synthetic split written to a temporary directory with ``MDSWriter`` exactly as the converter
writes (zstd, 64 MB shards; Zipf-distributed ids so the shards compress like text). Collator as
in training (T5-base: batch 128, 512/114 tokens, seed-derived masks).

For each worker count of ``--dataloader-workers`` (default 0,1,2): a fresh loader (shuffled, as in
training), ``--warmup`` x 10 batches untimed (worker start-up, first shards decompressed), then
``--repeats`` timed windows of ``--dataloader-batches`` batches from the same iterator; samples/s
is from the median window. On CUDA each batch is also copied to the device (``non_blocking``,
pinned memory), as Composer does. Peak memory: the main process's, and the workers' summed.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import tempfile
import time
from typing import Any

import numpy as np

from bench.measure import peak_memory_mib, reset_peak_memory, sync
from t5composer.data.span_spec import SpanCorruptionSpec

HELP = 'streaming + collator DataLoader samples/s (T5-base batches) for N workers'

COLUMNS = (
    ('num_workers', 'workers', '{}'),
    ('samples_per_s', 'samples/s', '{:,.0f}'),
    ('ms_per_batch', 'ms/batch', '{:.1f}'),
    ('pin_memory', 'pinned', '{}'),
    ('persistent_workers', 'persistent', '{}'),
    ('prefetch_factor', 'prefetch', '{}'),
    ('peak_mib', 'peak MiB (main)', '{:.0f}'),
    ('workers_peak_mib', 'peak MiB (workers)', '{:.0f}'),
)

SENTINEL_IDS = [32099 - k for k in range(100)]
WARMUP_BATCHES = 10  # per --warmup


def add_args(parser: argparse.ArgumentParser) -> None:
    """Add the case's ``--dataloader-*`` options to ``parser``."""
    g = parser.add_argument_group('dataloader')
    g.add_argument('--dataloader-workers', default='0,1,2', help='comma-separated worker counts')
    g.add_argument('--dataloader-batch', type=int, default=128)
    g.add_argument('--dataloader-batches', type=int, default=100, help='batches per timed window')
    g.add_argument('--dataloader-prefetch', type=int, default=2, help='prefetch_factor (batches per worker)')
    g.add_argument('--dataloader-data', default=None,
                   help='an existing converted split directory (default: a synthetic one in a temp dir)')


def write_synthetic_split(out: str, *, rows: int, length: int = SpanCorruptionSpec().expanded_length, seed: int = 0) -> None:
    """An MDS split of ``rows`` random token rows, written as ``convert_c4`` writes.

    Args:
        out: the split directory to create.
        rows: number of rows.
        length: tokens per row (default: T5-base's raw rows, 568).
        seed: numpy seed.
    """
    from streaming import MDSWriter

    rng = np.random.default_rng(seed)
    # Zipf(1.1)-like ids: compress about like tokenized text (uniform ids would not compress).
    with MDSWriter(out=out, columns={'tokens': 'ndarray:uint16'}, compression='zstd', size_limit='64mb') as writer:
        for start in range(0, rows, 4096):
            n = min(4096, rows - start)
            block = (rng.zipf(1.1, size=(n, length)) % 31998 + 2).astype(np.uint16)
            for row in block:
                writer.write({'tokens': row})


def _children_peak_mib(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            with open(f'/proc/{pid}/status') as f:
                total += next(int(line.split()[1]) for line in f if line.startswith('VmHWM:')) / 1024
        except (OSError, StopIteration):
            pass
    return total


def _time_loader(loader: Any, *, device: str, warmup_batches: int, batches: int, repeats: int) -> dict[str, Any]:
    """Warm up, then time ``repeats`` windows of ``batches`` batches from one iterator."""
    it = iter(loader)

    dtypes: dict[str, str] = {}

    def take(n: int) -> int:
        samples = 0
        for _ in range(n):
            batch = next(it)
            if not dtypes:
                dtypes.update({k: str(v.dtype).replace('torch.', '') for k, v in batch.items()})
            if device == 'cuda':
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            samples += batch['input_ids'].shape[0]
        sync(device)
        return samples

    take(warmup_batches)
    reset_peak_memory('cpu')
    times, samples = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        samples = take(batches)
        times.append(time.perf_counter() - start)
    workers = [w.pid for w in getattr(it, '_workers', [])]
    result = {'times_s': times, 'median_s': statistics.median(times), 'samples': samples,
              'peak_mib': peak_memory_mib('cpu'), 'workers_peak_mib': _children_peak_mib(workers) if workers else None,
              'dtypes': dtypes}
    del it
    return result


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Time the loader for each worker count; one row per count.

    Args:
        args: the parsed command line (``device``, ``warmup``, ``repeats`` and the ``dataloader_*`` options).
    """
    from t5composer.data.shared_memory import clean_stale_streaming_state, remove_lock_files_at_exit
    from t5composer.data.span_corruption import SpanCorruptionCollator
    from t5composer.data.streaming import build_span_dataloader

    workers = [int(w) for w in str(args.dataloader_workers).split(',') if w.strip()]
    batch, batches = args.dataloader_batch, args.dataloader_batches
    needed = batch * (WARMUP_BATCHES * args.warmup + batches * args.repeats + 2 * max(max(workers), 1) * args.dataloader_prefetch)
    tmp = tempfile.mkdtemp(prefix='t5composer-bench-dl-')
    clean_stale_streaming_state()
    remove_lock_files_at_exit()
    try:
        if args.dataloader_data:
            source = os.path.abspath(args.dataloader_data)
        else:
            source = os.path.join(tmp, 'synthetic')
            t0 = time.perf_counter()
            write_synthetic_split(source, rows=needed)
            print(f'  [dataloader] wrote {needed:,} synthetic rows in {time.perf_counter() - t0:.1f} s', flush=True)
        collator = SpanCorruptionCollator(sentinel_ids=SENTINEL_IDS, eos_id=1, seed=0)
        rows = []
        for n in workers:
            # Streaming refuses two live datasets on one local directory: each loader gets its own
            # directory of links to the same shards.
            split = f'w{n}'
            os.makedirs(os.path.join(tmp, split))
            for name in os.listdir(source):
                os.symlink(os.path.join(source, name), os.path.join(tmp, split, name))
            loader = build_span_dataloader(
                local=tmp, remote=None, split=split, device_batch_size=batch, collator=collator,
                shuffle=True, shuffle_seed=0, train=True, num_workers=n, prefetch_factor=args.dataloader_prefetch,
                pin_memory=True, persistent_workers=True,
            )
            if loader.dataset.num_samples < needed:
                raise ValueError(f'{source} holds {loader.dataset.num_samples:,} rows; this run needs {needed:,} '
                                 '(fewer --dataloader-batches or --repeats)')
            m = _time_loader(loader, device=args.device, warmup_batches=WARMUP_BATCHES * args.warmup,
                             batches=batches, repeats=args.repeats)
            rows.append({
                'num_workers': n,
                'samples_per_s': m['samples'] / m['median_s'],
                'ms_per_batch': m['median_s'] / batches * 1e3,
                'median_s': m['median_s'], 'times_s': m['times_s'],
                'pin_memory': loader.pin_memory, 'persistent_workers': loader.persistent_workers,
                'prefetch_factor': loader.prefetch_factor, 'batch': batch, 'batches_per_window': batches,
                'peak_mib': m['peak_mib'], 'workers_peak_mib': m['workers_peak_mib'],
                'data': args.dataloader_data or 'synthetic (zipf ids, zstd MDS)', 'dtypes': m['dtypes'],
            })
            print(f'  [dataloader] {n} workers: {rows[-1]["samples_per_s"]:,.0f} samples/s', flush=True)
            del loader
            gc.collect()
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
