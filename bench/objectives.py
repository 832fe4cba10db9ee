"""Benchmark case ``objectives``: what each pre-training objective costs the data path.

Per preset of :data:`t5composer.data.objectives.PRESETS` (``--objectives-presets``), on T5-base raw
rows (568 tokens for encoder inputs of 512), batch 128, with the collator training uses for it
(``span_corruption``: ``SpanCorruptionCollator``; a mixture: ``MixtureCollator``; the plain
preset also through ``MixtureCollator``, to show that collator's own cost):

- collator samples/s on one thread (a data-loader worker gets one core); each timed repeat
  collates ``--objectives-batches`` batches of consecutive sample indices, so the mixture varies;
- the padded fraction of encoder and decoder tokens, measured over ``--objectives-pad-batches``
  batches, beside the expectation of :func:`t5composer.data.denoising.padding_fractions`;
- the distinct ``(encoder, decoder)`` lengths seen (what a compiled model compiles for);
- DataLoader samples/s with ``--objectives-workers`` workers (0: in the main process) through
  :func:`t5composer.data.streaming.build_span_dataloader` over a synthetic MDS split written as the
  ``dataloader`` case writes it, for the training collator (``--objectives-loader-batches 0``
  skips it). Host side only: batches are not copied to a device.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from typing import Any, Callable

import torch

from bench.collator import EOS_ID, SENTINEL_IDS, make_samples
from bench.measure import measure
from t5composer.data.denoising import batch_groups

HELP = 'objectives (span_corruption, ul2): collator samples/s, padded fractions, shapes, DataLoader samples/s'

COLUMNS = (
    ('preset', 'preset', '{}'),
    ('collator', 'collator', '{}'),
    ('samples_per_s', 'samples/s (1 thread)', '{:,.0f}'),
    ('encoder_padding', 'enc pad', '{:.2%}'),
    ('expected_encoder_padding', 'enc pad expected', '{:.2%}'),
    ('decoder_padding', 'dec pad', '{:.2%}'),
    ('expected_decoder_padding', 'dec pad expected', '{:.2%}'),
    ('num_shapes', 'shapes', '{}'),
    ('loader_samples_per_s', 'loader samples/s', '{:,.0f}'),
)

PAD_ID = 0
# Ids just above T5's 32,100 tokens, as the tokenizer gives the mode tokens added as special tokens.
MODE_TOKEN_IDS = {'[NLU]': 32100, '[NLG]': 32101, '[S2S]': 32102}
LOADER_WARMUP_BATCHES = 10  # per --warmup


def add_args(parser: argparse.ArgumentParser) -> None:
    """Add the case's ``--objectives-*`` options to ``parser``."""
    g = parser.add_argument_group('objectives')
    g.add_argument('--objectives-presets', default='span_corruption,ul2', help='comma-separated preset names')
    g.add_argument('--objectives-batch', type=int, default=128)
    g.add_argument('--objectives-input-length', type=int, default=512,
                   help='encoder length of T5 span corruption; raw rows: random_spans_helper (568 for 512)')
    g.add_argument('--objectives-batches', type=int, default=20, help='batches per timed repeat of the collator')
    g.add_argument('--objectives-pad-batches', type=int, default=200, help='batches over which padding and shapes are counted')
    g.add_argument('--objectives-workers', type=int, default=2, help='DataLoader workers (0: in the main process)')
    g.add_argument('--objectives-loader-batches', type=int, default=50, help='batches per timed loader window (0: skip the loader)')


def _collators(preset: str) -> list[tuple[str, Callable, bool]]:
    """``(label, collator, is_the_training_collator)`` for a preset."""
    from t5composer.data.denoising import MixtureCollator
    from t5composer.data.objectives import Objective
    from t5composer.data.span_corruption import SpanCorruptionCollator

    objective = Objective.preset(preset)
    mixture = MixtureCollator(objective=objective, sentinel_ids=SENTINEL_IDS, eos_id=EOS_ID, pad_id=PAD_ID,
                              mode_token_ids=MODE_TOKEN_IDS, seed=0)
    if not objective.is_span_corruption:
        return [('MixtureCollator', mixture, True)]
    (d,) = objective.denoisers
    plain = SpanCorruptionCollator(sentinel_ids=SENTINEL_IDS, eos_id=EOS_ID, noise_density=d.corruption_rate,
                                   mean_noise_span_length=d.mean_span_length, seed=0)
    return [('SpanCorruptionCollator', plain, True), ('MixtureCollator', mixture, False)]


def padding_and_shapes(collate: Callable, *, batch: int, length: int, batches: int) -> dict[str, Any]:
    """Padded fractions of encoder and decoder tokens, and the distinct shapes, over ``batches`` batches.

    Args:
        collate: the collator.
        batch: rows per batch.
        length: raw row length.
        batches: batches to count over (sample indices 0, 1, 2, ...).
    """
    base = make_samples(batch=batch, length=length)
    pad = {'encoder': 0, 'decoder': 0}
    size = {'encoder': 0, 'decoder': 0}
    shapes: set[tuple[int, int]] = set()
    for b in range(batches):
        samples = [dict(s, sample_idx=b * batch + i) for i, s in enumerate(base)]
        for g in batch_groups(collate(samples)):
            shapes.add((g['input_ids'].shape[1], g['labels'].shape[1]))
            size['encoder'] += g['input_ids'].numel()
            size['decoder'] += g['labels'].numel()
            if 'attention_mask' in g:
                pad['encoder'] += int((g['attention_mask'] == 0).sum())
            pad['decoder'] += int((g['labels'] == -100).sum())
    return {'encoder': pad['encoder'] / size['encoder'], 'decoder': pad['decoder'] / size['decoder'], 'shapes': sorted(shapes)}


def loader_rate(collate: Callable, *, root: str, split: str, batch: int, workers: int, batches: int, warmup: int,
                repeats: int) -> dict[str, Any]:
    """Samples/s of the training DataLoader with ``collate`` over the split ``root/split``: the median of ``repeats`` windows.

    Args:
        collate: the collator.
        root: local root of the splits.
        split: split name (a directory under ``root``).
        batch: rows per batch.
        workers: DataLoader workers.
        batches: batches per timed window.
        warmup: untimed batches first (worker start-up, first shards).
        repeats: timed windows.
    """
    from t5composer.data.denoising import mixture_num_samples
    from t5composer.data.streaming import build_span_dataloader

    loader = build_span_dataloader(local=root, remote=None, split=split, device_batch_size=batch, collator=collate,
                                   shuffle=True, shuffle_seed=0, train=True, num_workers=workers, prefetch_factor=2,
                                   pin_memory=False, persistent_workers=True)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    times, samples = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        samples = sum(mixture_num_samples(next(it)) for _ in range(batches))
        times.append(time.perf_counter() - start)
    del it, loader
    median = statistics.median(times)
    return {'samples_per_s': samples / median, 'times_s': times, 'median_s': median}


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Measure each preset; one row per (preset, collator).

    Args:
        args: the parsed command line (``warmup``, ``repeats`` and the ``objectives_*`` options).
    """
    from bench.dataloader import write_synthetic_split
    from t5composer.data.denoising import padding_fractions
    from t5composer.data.objectives import Objective
    from t5composer.data.shared_memory import clean_stale_streaming_state, remove_lock_files_at_exit
    from t5composer.data.span_spec import SpanCorruptionSpec

    presets = [p.strip() for p in str(args.objectives_presets).split(',') if p.strip()]
    for p in presets:
        Objective.preset(p)  # an unknown name fails before anything runs
    batch, n_batches = args.objectives_batch, args.objectives_batches
    length = SpanCorruptionSpec(input_length=args.objectives_input_length).expanded_length
    workers, loader_batches = args.objectives_workers, args.objectives_loader_batches
    warmup_batches = LOADER_WARMUP_BATCHES * args.warmup
    timed = [[dict(s, sample_idx=b * batch + i) for i, s in enumerate(make_samples(batch=batch, length=length))]
             for b in range(n_batches)]

    tmp = tempfile.mkdtemp(prefix='t5composer-bench-obj-')
    try:
        if loader_batches > 0:
            clean_stale_streaming_state()
            remove_lock_files_at_exit()
            needed = batch * (warmup_batches + loader_batches * args.repeats + 2 * 2 * max(workers, 1))
            t0 = time.perf_counter()
            write_synthetic_split(os.path.join(tmp, 'synthetic'), rows=needed, length=length)
            print(f'  [objectives] wrote {needed:,} synthetic rows in {time.perf_counter() - t0:.1f} s', flush=True)
        rows = []
        for preset in presets:
            objective = Objective.preset(preset)
            expected = padding_fractions(objective, length)
            for label, collate, trains in _collators(preset):
                threads = torch.get_num_threads()
                torch.set_num_threads(1)
                try:
                    def work(collate=collate) -> Any:
                        for samples in timed:
                            out = collate(samples)
                        return out

                    m = measure(work, device='cpu', warmup=args.warmup, repeats=args.repeats)
                    counted = padding_and_shapes(collate, batch=batch, length=length, batches=args.objectives_pad_batches)
                finally:
                    torch.set_num_threads(threads)
                row = {
                    'preset': preset, 'collator': label, 'training_collator': trains,
                    'samples_per_s': batch * n_batches / m['median_s'], 'median_s': m['median_s'], 'times_s': m['times_s'],
                    'encoder_padding': counted['encoder'], 'expected_encoder_padding': expected['encoder'],
                    'decoder_padding': counted['decoder'], 'expected_decoder_padding': expected['decoder'],
                    'num_shapes': len(counted['shapes']), 'shapes': [list(s) for s in counted['shapes']],
                    'loader_samples_per_s': None, 'loader_workers': workers, 'batch': batch, 'raw_length': length,
                    'batches_per_repeat': n_batches, 'pad_batches': args.objectives_pad_batches, 'threads': 1,
                }
                if loader_batches > 0 and trains:
                    # Streaming refuses two live datasets on one local directory: each loader gets its own links.
                    split = f'{preset}-{label}'
                    os.makedirs(os.path.join(tmp, split))
                    for name in os.listdir(os.path.join(tmp, 'synthetic')):
                        os.symlink(os.path.join(tmp, 'synthetic', name), os.path.join(tmp, split, name))
                    loaded = loader_rate(collate, root=tmp, split=split, batch=batch, workers=workers, batches=loader_batches,
                                         warmup=warmup_batches, repeats=args.repeats)
                    row.update(loader_samples_per_s=loaded['samples_per_s'], loader_times_s=loaded['times_s'],
                               loader_batches_per_window=loader_batches)
                rows.append(row)
                loader = f", loader {row['loader_samples_per_s']:,.0f} samples/s" if row['loader_samples_per_s'] else ''
                print(f"  [objectives] {preset} / {label}: {row['samples_per_s']:,.0f} samples/s{loader}", flush=True)
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
