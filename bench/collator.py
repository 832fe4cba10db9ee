"""Benchmark case ``collator``: the vectorised span-corruption collator vs a per-example one.

T5-base shapes: raw rows of 568 tokens (``random_spans_helper(512, 0.15, 3.0)``) become 512
encoder and 114 decoder tokens; batch 128; vocabulary 32,128 with 100 sentinels at the top
(``<extra_id_k>`` = 32099 - k). Both variants start from the same list of samples
(``{'tokens', 'sample_idx', 'epoch'}``, as the streaming dataset yields them):

- ``SpanCorruptionCollator``: ours, vectorised over the batch (hash-seeded masks, LongTensors out);
- per-example reference: HF ``run_t5_mlm_flax``'s ``DataCollatorForT5MLM`` algorithm
  (:mod:`bench.span_corruption_reference`; a numpy ``RandomState`` as HF's global
  ``np.random``), numpy out.

Run on one thread (``torch.set_num_threads(1)`` for the duration of the case): a data-loader
worker gets one core. Each timed repeat collates ``--collator-batches`` batches.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch

from bench.measure import measure

HELP = 'span-corruption collator samples/s vs a per-example (HF run_t5_mlm_flax) implementation, 1 thread'

COLUMNS = (
    ('variant', 'variant', '{}'),
    ('samples_per_s', 'samples/s', '{:,.0f}'),
    ('ms_per_batch', 'ms/batch', '{:.2f}'),
    ('speedup_vs_reference', 'vs per-example', '{:.1f}x'),
    ('peak_mib', 'peak MiB', '{:.0f}'),
)

VOCAB_SIZE = 32128
NUM_SENTINELS = 100
SENTINEL_IDS = [32099 - k for k in range(NUM_SENTINELS)]  # T5's <extra_id_k>
EOS_ID = 1


def add_args(parser: argparse.ArgumentParser) -> None:
    """Add the case's ``--collator-*`` options to ``parser``."""
    g = parser.add_argument_group('collator')
    g.add_argument('--collator-batch', type=int, default=128)
    g.add_argument('--collator-input-length', type=int, default=512, help='encoder length (raw rows: random_spans_helper)')
    g.add_argument('--collator-batches', type=int, default=20, help='batches per timed repeat')


def make_samples(*, batch: int, length: int, seed: int = 0) -> list[dict[str, Any]]:
    """``batch`` samples of random ordinary tokens (below the sentinels), as the dataset yields them.

    Args:
        batch: number of samples.
        length: raw row length.
        seed: numpy seed of the tokens.
    """
    tokens = np.random.default_rng(seed).integers(2, SENTINEL_IDS[-1], size=(batch, length), dtype=np.int64)
    return [{'tokens': tokens[i], 'sample_idx': i, 'epoch': 0} for i in range(batch)]


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Time both collators on the same samples; one row per variant.

    Args:
        args: the parsed command line (``warmup``, ``repeats`` and the ``collator_*`` options).
    """
    from t5composer.data.span_corruption import SpanCorruptionCollator
    from t5composer.data.span_spec import SpanCorruptionSpec
    from bench.span_corruption_reference import per_example_span_corruption

    batch, n_batches = args.collator_batch, args.collator_batches
    length = SpanCorruptionSpec(input_length=args.collator_input_length).expanded_length  # T5's density and span
    samples = make_samples(batch=batch, length=length)
    ours = SpanCorruptionCollator(sentinel_ids=SENTINEL_IDS, eos_id=EOS_ID, seed=0)
    rng = np.random.RandomState(0)

    def reference(samples: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        # HF stacks the examples first (np.array of the examples' ids), then works row by row.
        tokens = np.stack([s['tokens'] for s in samples])
        return per_example_span_corruption(tokens, sentinel_ids=SENTINEL_IDS, eos_id=EOS_ID, rng=rng)

    variants = (('SpanCorruptionCollator (vectorised)', ours), ('per-example reference (HF run_t5_mlm_flax)', reference))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows, shapes = [], {}
        for name, collate in variants:
            def work(collate=collate) -> Any:
                for _ in range(n_batches):
                    out = collate(samples)
                return out

            m = measure(work, device='cpu', warmup=args.warmup, repeats=args.repeats)
            shapes[name] = {k: tuple(v.shape) for k, v in m['result'].items()}
            per_batch = m['median_s'] / n_batches
            rows.append({
                'variant': name,
                'samples_per_s': batch / per_batch,
                'ms_per_batch': per_batch * 1e3,
                'median_s': m['median_s'],
                'times_s': m['times_s'],
                'peak_mib': m['peak_mib'],
                'threads': 1, 'batch': batch, 'raw_length': length, 'batches_per_repeat': n_batches,
                'output_shapes': {k: list(v) for k, v in shapes[name].items()},
            })
            print(f'  [collator] {name}: {rows[-1]["samples_per_s"]:,.0f} samples/s', flush=True)
    finally:
        torch.set_num_threads(threads)
    if len(set(map(str, shapes.values()))) != 1:
        raise RuntimeError(f'the collators disagree on output shapes: {shapes}')
    for row in rows:
        row['speedup_vs_reference'] = row['samples_per_s'] / rows[-1]['samples_per_s']
    return rows
