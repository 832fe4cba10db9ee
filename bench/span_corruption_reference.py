"""Per-example span corruption written from HF's ``run_t5_mlm_flax`` (``DataCollatorForT5MLM``).

The straightforward implementation the vectorised :class:`SpanCorruptionCollator` is measured
against (``python -m bench --only collator``) and a test oracle for its statistics. Per
example: ``random_spans_noise_mask`` (a stateful numpy RNG shuffles the span boundaries),
``create_sentinel_ids`` (a sentinel at each span start, -1 on the rest of the span),
``filter_input_ids`` (keep ids >= 0, append EOS), rows stacked into a batch; decoder inputs are
the labels shifted right. HF draws from the global ``np.random``; here the RNG is an argument.

Differences from HF, none of which change the distribution at T5's settings: sentinel ids come
from a list (HF computes ``len(tokenizer) - k``, i.e. assumes ``<extra_id_k>`` counts down from
the top of the vocabulary), and the span count uses :func:`noise_span_counts` (HF rounds
``min(num_noise, num_nonnoise) / mean``, equal whenever noise_density <= 0.5).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from t5composer.data.span_corruption import noise_span_counts

__all__ = ['create_sentinel_ids', 'filter_input_ids', 'per_example_span_corruption', 'reference_random_spans_noise_mask']

Rng = np.random.Generator | np.random.RandomState


def reference_random_spans_noise_mask(
    length: int,
    noise_density: float,
    mean_noise_span_length: float,
    rng: Rng | None = None,
) -> np.ndarray:
    """One row's noise mask, HF's ``random_spans_noise_mask`` (shuffle-based segmentation).

    Args:
        length: row length.
        noise_density: fraction of tokens that are noise.
        mean_noise_span_length: average noise span length.
        rng: numpy Generator/RandomState; None uses the global ``np.random`` (as HF does).

    Returns:
        bool ``[length]``: non-noise first, ending inside a noise span.
    """
    shuffle = (rng if rng is not None else np.random).shuffle
    num_noise, num_spans = noise_span_counts(length, noise_density, mean_noise_span_length)
    num_nonnoise = length - num_noise

    def random_segmentation(num_items: int, num_segments: int) -> np.ndarray:
        # A random composition: shuffle which of the num_items - 1 gaps start a new segment.
        first_in_segment = np.arange(num_items - 1) < (num_segments - 1)
        shuffle(first_in_segment)
        first_in_segment = np.pad(first_in_segment, [[1, 0]])
        segment_id = np.cumsum(first_in_segment)
        _, segment_length = np.unique(segment_id, return_counts=True)
        return segment_length

    noise_span_lengths = random_segmentation(num_noise, num_spans)
    nonnoise_span_lengths = random_segmentation(num_nonnoise, num_spans)
    interleaved = np.reshape(np.stack([nonnoise_span_lengths, noise_span_lengths], axis=1), [num_spans * 2])
    span_starts = np.cumsum(interleaved)[:-1]
    span_start_indicator = np.zeros((length,), dtype=np.int8)
    span_start_indicator[span_starts] = True
    span_num = np.cumsum(span_start_indicator)
    is_noise = np.equal(span_num % 2, 1)
    return is_noise[:length]


def create_sentinel_ids(mask: np.ndarray, sentinel_ids: np.ndarray) -> np.ndarray:
    """HF's ``create_sentinel_ids`` for one row.

    Args:
        mask: int8 ``[L]``, 1 on the tokens to replace.
        sentinel_ids: ``sentinel_ids[k]`` is the id of ``<extra_id_k>`` (all > 0).

    Returns:
        int64 ``[L]``: the k-th run's sentinel at its first position, -1 on the rest of the run,
        0 elsewhere (keep the token).
    """
    mask = mask.astype(np.int64)
    start = mask - np.roll(mask, 1) * mask
    start[0] = mask[0]
    span_number = np.where(start != 0, np.cumsum(start), 0)  # 1-based
    out = np.where(span_number != 0, sentinel_ids[np.maximum(span_number - 1, 0)], 0)
    out -= mask - start
    return out


def filter_input_ids(input_ids: np.ndarray, sentinels: np.ndarray, eos_id: int) -> np.ndarray:
    """HF's ``filter_input_ids`` for one row: put sentinels in, drop the -1s, append EOS.

    Args:
        input_ids: int64 ``[L]`` raw row (ids >= 0).
        sentinels: the row's :func:`create_sentinel_ids`.
        eos_id: appended id.
    """
    full = np.where(sentinels != 0, sentinels, input_ids)
    return np.concatenate([full[full >= 0], [eos_id]])


def per_example_span_corruption(
    tokens: Any,
    *,
    sentinel_ids: Sequence[int],
    eos_id: int,
    decoder_start_id: int = 0,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    rng: Rng | None = None,
) -> dict[str, np.ndarray]:
    """Span-corrupt ``[B, L]`` rows one example at a time (the benchmark's baseline).

    Args:
        tokens: ``[B, L]`` int rows.
        sentinel_ids: ids of ``<extra_id_0>, <extra_id_1>, ...``.
        eos_id: id appended to inputs and labels.
        decoder_start_id: first decoder input id.
        noise_density: fraction of tokens that are noise.
        mean_noise_span_length: average noise span length.
        rng: numpy Generator/RandomState; None uses the global ``np.random`` (as HF does).

    Returns:
        dict of int64 arrays ``input_ids``, ``labels``, ``decoder_input_ids``.
    """
    sentinels = np.asarray(list(sentinel_ids), dtype=np.int64)
    inputs, labels = [], []
    for row in np.asarray(tokens, dtype=np.int64):
        mask = reference_random_spans_noise_mask(len(row), noise_density, mean_noise_span_length, rng)
        inputs.append(filter_input_ids(row, create_sentinel_ids(mask.astype(np.int8), sentinels), eos_id))
        labels.append(filter_input_ids(row, create_sentinel_ids((~mask).astype(np.int8), sentinels), eos_id))
    labels_arr = np.stack(labels)
    decoder_input_ids = np.empty_like(labels_arr)  # shift_tokens_right
    decoder_input_ids[:, 0] = decoder_start_id
    decoder_input_ids[:, 1:] = labels_arr[:, :-1]
    return {'input_ids': np.stack(inputs), 'labels': labels_arr, 'decoder_input_ids': decoder_input_ids}
