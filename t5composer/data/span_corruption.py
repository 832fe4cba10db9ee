"""T5 span corruption: length helper, index-seeded noise masks and a batch collator.

The mask of a row is a pure function of ``(seed, epoch, sample_idx)``. Randomness comes from
counter-based hashing (the splitmix64 finaliser over uint64 arrays) rather than a stateful RNG,
so a resumed run re-creates exactly the masks of an uninterrupted one, a row's mask does not
depend on which other rows share its batch, and the global numpy/torch RNGs are never touched.

The distribution is T5's ``random_spans_noise_mask``: noise lengths and non-noise lengths are
independent uniformly random compositions of their totals into ``num_spans`` positive parts,
interleaved starting with non-noise, so every row ends inside a noise span.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from t5composer.data.span_spec import (
    SpanCorruptionSpec,
    check_noise,
    noise_span_counts,
    random_spans_helper,
    span_count_problems,
)

__all__ = [
    'SpanCorruptionSpec',
    'random_spans_helper',
    'noise_span_counts',
    'row_keys',
    'row_uniforms',
    'FIRST_FREE_STREAM',
    'batch_random_spans_noise_mask',
    'stack_rows',
    'SpanCorruptionCollator',
]

# splitmix64 constants (Steele, Lea & Flood 2014 / Vigna).
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1
# Counter offsets that keep the two random streams of a row (noise cuts, non-noise cuts) apart.
_NOISE_STREAM = 1
_NONNOISE_STREAM = 1 + (1 << 32)
# Counters from here on are used by no span mask (each mask stream takes at most 2**32 counters):
# other per-row draws (row_uniforms) take theirs from here, so they are independent of the mask.
FIRST_FREE_STREAM = 1 << 33
# A fixed tweak so that seed 0 does not hash the all-zero state.
_SEED_TWEAK = 0x5D2C7E3A91B04F68


# --------------------------------------------------------------------------------------------
# Lengths (random_spans_helper and noise_span_counts live with the spec, re-exported here)
# --------------------------------------------------------------------------------------------
def _checked_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """``noise_span_counts`` plus the checks that make fixed-shape outputs possible."""
    problems = span_count_problems(length, noise_density, mean_noise_span_length)
    if problems:
        raise ValueError(' '.join(problems))
    return noise_span_counts(length, noise_density, mean_noise_span_length)


# --------------------------------------------------------------------------------------------
# Counter-based hashing
# --------------------------------------------------------------------------------------------
def _fmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, elementwise on a uint64 array (wraps mod 2**64, no warnings)."""
    x = x ^ (x >> np.uint64(30))
    x *= _MIX1
    x ^= x >> np.uint64(27)
    x *= _MIX2
    x ^= x >> np.uint64(31)
    return x


def _as_nonnegative_u64(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f'{name} must be integers, got dtype {arr.dtype}')
    if arr.size and np.issubdtype(arr.dtype, np.signedinteger) and arr.min() < 0:
        raise ValueError(f'{name} must be >= 0, got {arr.min()}')
    return arr.astype(np.uint64)


def row_keys(seed: int, epochs: Any, sample_indices: Any) -> np.ndarray:
    """64-bit per-row keys, a pure function of ``(seed, epoch, sample_idx)``.

    Args:
        seed: run seed (any Python int; reduced mod 2**64).
        epochs: per-row epoch numbers, shape ``[B]`` (or a scalar broadcast to all rows).
        sample_indices: per-row global sample indices, shape ``[B]``.

    Returns:
        uint64 array ``[B]``.
    """
    idx = _as_nonnegative_u64(sample_indices, 'sample_idx')
    ep = _as_nonnegative_u64(epochs, 'epoch')
    if ep.size == 1 and idx.size != 1:
        ep = np.full(idx.shape, ep[0], dtype=np.uint64)
    if ep.shape != idx.shape:
        raise ValueError(f'epochs {ep.shape} and sample_indices {idx.shape} must have the same length')
    base = np.full(idx.shape, (int(seed) ^ _SEED_TWEAK) & _MASK64, dtype=np.uint64)
    # Chain bijective mixes: each field is added to a well-mixed state and re-hashed.
    key = _fmix64(base)
    key = _fmix64(key + ep)
    key = _fmix64(key + idx)
    return key


def _hash_stream(keys: np.ndarray, stream: int, n: int) -> np.ndarray:
    """``[B, n]`` pseudo-random uint64: splitmix64 outputs ``stream .. stream+n-1`` of each key."""
    counters = (np.arange(stream, stream + n, dtype=np.uint64) * _GOLDEN)[None, :]
    return _fmix64(keys[:, None] + counters)


def row_uniforms(keys: np.ndarray, stream: int) -> np.ndarray:
    """One uniform draw in ``[0, 1)`` per row: output ``stream`` of each row's splitmix64 sequence.

    For per-row choices beside the span mask (which denoiser a row gets, where a prefix ends);
    a pure function of the key and ``stream``, like the mask.

    Args:
        keys: uint64 ``[B]`` row keys (see :func:`row_keys`).
        stream: counter, ``>= FIRST_FREE_STREAM`` so the draw is independent of the row's span mask;
            different streams give independent draws.

    Returns:
        float64 ``[B]`` with 53 random bits each.
    """
    if not FIRST_FREE_STREAM <= int(stream) < 1 << 48:
        raise ValueError(f'stream must be in [FIRST_FREE_STREAM, 2**48), got {stream}; lower counters belong to the span masks')
    keys = np.asarray(keys, dtype=np.uint64).reshape(-1)
    h = _hash_stream(keys, int(stream), 1)[:, 0]
    return (h >> np.uint64(11)).astype(np.float64) * (2.0**-53)


def _random_sorted_subset(keys: np.ndarray, stream: int, n: int, k: int) -> np.ndarray:
    """Per row, a uniformly random ``k``-subset of ``range(n)``, sorted; int64 ``[B, k]``.

    Two exact methods, picked by cost (the choice depends only on ``(n, k)``, so a row's result
    stays a pure function of its key): when ``k`` is small relative to ``n``, Robert Floyd's
    sampling loop (``k`` vectorised steps); otherwise the ``k`` smallest of ``n`` i.i.d. hashes
    (a uniformly random order of the positions; ties have probability ~n^2 / 2^65).
    """
    if k == 0:
        return np.empty((keys.shape[0], 0), dtype=np.int64)
    if n > 4 * k:
        h = _hash_stream(keys, stream, k)
        # Floyd: for j = n-k .. n-1 draw t uniform in [0, j]; take t, or j if t is already taken.
        upper = np.arange(n - k, n, dtype=np.int64)
        # 53-bit uniform in [0, 1) scaled to [0, j]: bias ~ j / 2^53, far below detectability.
        u = (h >> np.uint64(11)).astype(np.float64) * (2.0**-53)
        chosen = np.floor(u * (upper + 1)).astype(np.int64)
        np.minimum(chosen, upper, out=chosen)
        for i in range(1, k):
            taken = (chosen[:, :i] == chosen[:, i : i + 1]).any(axis=1)
            chosen[taken, i] = upper[i]
    else:
        h = _hash_stream(keys, stream, n)
        # argpartition is O(n); the set equals argsort(h)[:, :k].
        chosen = np.argpartition(h, k - 1, axis=1)[:, :k]
    chosen.sort(axis=1)
    return chosen


def _random_compositions(keys: np.ndarray, stream: int, total: int, parts: int) -> np.ndarray:
    """Per row, a uniformly random composition of ``total`` into ``parts`` positive integers.

    As T5's ``_random_segmentation``: the ``parts - 1`` segment starts are a uniformly random
    subset of the ``total - 1`` gaps between items.

    Returns:
        int64 ``[B, parts]`` with rows summing to ``total``.
    """
    batch = keys.shape[0]
    bounds = np.empty((batch, parts + 1), dtype=np.int64)
    bounds[:, 0] = 0
    bounds[:, 1:-1] = _random_sorted_subset(keys, stream, total - 1, parts - 1) + 1  # gap j: before item j+1
    bounds[:, -1] = total
    return np.diff(bounds, axis=1)


def _span_lengths(keys: np.ndarray, length: int, num_noise: int, num_spans: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise and non-noise run lengths, each int64 ``[B, num_spans]``, from independent streams.

    Layout of a row: nonnoise_0, noise_0, nonnoise_1, noise_1, ..., nonnoise_{S-1}, noise_{S-1}.
    """
    noise_lengths = _random_compositions(keys, _NOISE_STREAM, num_noise, num_spans)
    nonnoise_lengths = _random_compositions(keys, _NONNOISE_STREAM, length - num_noise, num_spans)
    return noise_lengths, nonnoise_lengths


def _gather_runs(
    tokens: np.ndarray,
    *,
    out_starts: np.ndarray,
    src_starts: np.ndarray,
    out_length: int,
    sentinel_positions: np.ndarray,
    sentinels: np.ndarray,
    eos_id: int,
) -> np.ndarray:
    """Copy contiguous raw runs into an output row, put sentinels between them, append EOS.

    Output position ``p`` inside run ``k`` reads raw index ``src_starts[k] + (p - out_starts[k])``,
    so the source index is ``p`` plus a piecewise-constant offset that changes at each run start:
    a scatter of offset increments and one cumsum, with no per-row loop or boolean selection.

    Args:
        tokens: int64 ``[B, L]`` raw rows.
        out_starts: ``[B, S]`` output position of each run's first token (increasing).
        src_starts: ``[B, S]`` raw position of each run's first token.
        out_length: output length before EOS.
        sentinel_positions: ``[B, S]`` output positions that hold sentinels.
        sentinels: ``[S]`` sentinel ids, ``sentinels[k]`` at ``sentinel_positions[:, k]``.
        eos_id: appended id.

    Returns:
        int64 ``[B, out_length + 1]``.
    """
    batch, length = tokens.shape
    rows = np.arange(batch)[:, None]
    # Flat source index per output slot (EOS slot included so np.take fills `out` in one go).
    index = np.zeros((batch, out_length + 1), dtype=np.intp)
    index[rows, out_starts] = np.diff(src_starts - out_starts, axis=1, prepend=0)
    index[:, 0] += np.arange(batch) * length
    np.cumsum(index, axis=1, out=index)
    index += np.arange(out_length + 1)
    # One gather straight into the result: fewer large temporaries also avoids page-fault churn,
    # which cost as much as the work itself. Sentinel/EOS slots may point past a row (or the
    # array, hence 'clip'); they are overwritten just below.
    out = np.take(tokens.reshape(-1), index, mode='clip')
    out[rows, sentinel_positions] = sentinels
    out[:, -1] = eos_id
    return out


def batch_random_spans_noise_mask(
    keys: np.ndarray,
    length: int,
    *,
    noise_density: float = SpanCorruptionSpec.noise_density,
    mean_noise_span_length: float = SpanCorruptionSpec.mean_noise_span_length,
) -> np.ndarray:
    """T5's ``random_spans_noise_mask`` for a batch of rows, seeded per row by ``keys``.

    Args:
        keys: uint64 ``[B]`` row keys (see :func:`row_keys`).
        length: row length ``L``.
        noise_density: fraction of tokens that are noise.
        mean_noise_span_length: average noise span length.

    Returns:
        bool ``[B, L]``, True at noise positions. Every row has the same number of noise tokens
        and spans (:func:`noise_span_counts`), starts with non-noise and ends with noise.
    """
    check_noise(noise_density, mean_noise_span_length)
    keys = np.asarray(keys, dtype=np.uint64).reshape(-1)
    num_noise, num_spans = _checked_counts(int(length), noise_density, mean_noise_span_length)
    noise_lengths, nonnoise_lengths = _span_lengths(keys, length, num_noise, num_spans)
    ends = np.cumsum(noise_lengths, axis=1) + np.cumsum(nonnoise_lengths, axis=1)
    starts = ends - noise_lengths
    batch = keys.shape[0]
    # +1 at each span start, -1 at each span end; the running sum is 1 inside spans.
    delta = np.zeros((batch, length + 1), dtype=np.int8)
    rows = np.arange(batch)[:, None]
    delta[rows, starts] = 1
    delta[rows, ends] = -1
    return np.cumsum(delta[:, :length], axis=1, dtype=np.int8).astype(bool)


# --------------------------------------------------------------------------------------------
# Collator
# --------------------------------------------------------------------------------------------
def stack_rows(samples: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, list[int], list[int]]:
    """Stack ``samples[i]['tokens']`` into int64 ``[B, L]``; also return epochs and sample indices.

    Args:
        samples: ``{'tokens', 'sample_idx', 'epoch'}`` mappings with equal-length 1-D integer rows.
    """
    rows, epochs, indices = [], [], []
    for i, sample in enumerate(samples):
        try:
            tokens, epoch, index = sample['tokens'], sample['epoch'], sample['sample_idx']
        except KeyError as err:
            raise KeyError(
                f"sample {i} lacks {err.args[0]!r} (has {sorted(sample)}); span masks are seeded by "
                "(seed, epoch, sample_idx), so each sample needs 'tokens', 'sample_idx' and 'epoch'",
            ) from None
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.detach().cpu().numpy()
        elif not isinstance(tokens, np.ndarray):
            tokens = np.asarray(tokens)
        rows.append(tokens)
        epochs.append(int(epoch))
        indices.append(int(index))
    shapes = {r.shape for r in rows}
    if len(shapes) != 1:
        raise ValueError(
            'all rows of a batch must be 1-D with the same length (the expanded length from '
            f'random_spans_helper), got shapes {sorted(shapes)}',
        )
    if rows[0].ndim != 1:
        raise ValueError(f'tokens must be 1-D, got shape {rows[0].shape}')
    stacked = np.stack(rows)
    if stacked.size and not np.issubdtype(stacked.dtype, np.integer):
        raise ValueError(f'tokens must be integers, got dtype {stacked.dtype}')
    return stacked.astype(np.int64, copy=False), epochs, indices


class SpanCorruptionCollator:
    """Collate raw rows into T5 span-corruption batches (vectorised over the batch).

    Each noise span becomes one sentinel in the encoder input; the target lists, for each span
    ``k``, ``sentinel_ids[k]`` then the span's tokens, and ends with EOS.

    Args:
        sentinel_ids: ``sentinel_ids[k]`` is the tokenizer's id of ``<extra_id_k>``.
        eos_id: id appended to inputs and labels.
        decoder_start_id: first decoder input id (T5: the pad id, 0).
        noise_density: fraction of raw tokens that are noise.
        mean_noise_span_length: average noise span length.
        seed: run seed; masks are a function of ``(seed, epoch, sample_idx)``.
    """

    def __init__(
        self,
        *,
        sentinel_ids: Sequence[int],
        eos_id: int,
        decoder_start_id: int = 0,
        noise_density: float = SpanCorruptionSpec.noise_density,
        mean_noise_span_length: float = SpanCorruptionSpec.mean_noise_span_length,
        seed: int = 0,
    ) -> None:
        check_noise(noise_density, mean_noise_span_length)
        sentinels = np.asarray(list(sentinel_ids), dtype=np.int64)
        if sentinels.ndim != 1 or sentinels.size == 0:
            raise ValueError('sentinel_ids must be a non-empty sequence of token ids')
        if len(np.unique(sentinels)) != sentinels.size:
            raise ValueError('sentinel_ids must be distinct')
        self.sentinel_ids = sentinels
        self.eos_id = int(eos_id)
        self.decoder_start_id = int(decoder_start_id)
        self.noise_density = float(noise_density)
        self.mean_noise_span_length = float(mean_noise_span_length)
        self.seed = int(seed)

    def __repr__(self) -> str:
        return (
            f'{type(self).__name__}(num_sentinels={self.sentinel_ids.size}, eos_id={self.eos_id}, '
            f'decoder_start_id={self.decoder_start_id}, noise_density={self.noise_density}, '
            f'mean_noise_span_length={self.mean_noise_span_length}, seed={self.seed})'
        )

    def output_lengths(self, length: int) -> tuple[int, int]:
        """Encoder and decoder lengths for raw rows of ``length`` tokens.

        Args:
            length: raw row length.

        Returns:
            ``(inputs_length, targets_length)``.
        """
        num_noise, num_spans = _checked_counts(int(length), self.noise_density, self.mean_noise_span_length)
        return length - num_noise + num_spans + 1, num_noise + num_spans + 1

    def corrupt(self, tokens: np.ndarray, keys: np.ndarray) -> dict[str, np.ndarray]:
        """Span-corrupt a ``[B, L]`` int array with explicit row keys (numpy in, numpy out).

        Args:
            tokens: int64 ``[B, L]``.
            keys: uint64 ``[B]`` row keys.

        Returns:
            dict of int64 arrays ``input_ids``, ``labels``, ``decoder_input_ids``.
        """
        tokens = np.asarray(tokens, dtype=np.int64)
        keys = np.asarray(keys, dtype=np.uint64).reshape(-1)
        if tokens.ndim != 2 or keys.shape[0] != tokens.shape[0]:
            raise ValueError(f'tokens must be [B, L] with one key per row, got {tokens.shape} and {keys.shape}')
        batch, length = tokens.shape
        num_noise, num_spans = _checked_counts(length, self.noise_density, self.mean_noise_span_length)
        if num_spans > self.sentinel_ids.size:
            raise ValueError(
                f'span corruption of rows of length {length} needs {num_spans} sentinel tokens but the '
                f'tokenizer has {self.sentinel_ids.size} <extra_id_k> tokens; lower input_length or '
                'noise_density, raise mean_noise_span_length, or use a tokenizer with more extra_ids',
            )
        noise_lengths, nonnoise_lengths = _span_lengths(keys, length, num_noise, num_spans)
        noise_ends = np.cumsum(noise_lengths, axis=1)  # within the target's noise stream
        nonnoise_ends = np.cumsum(nonnoise_lengths, axis=1)
        span_ends = noise_ends + nonnoise_ends  # exclusive, in the raw row
        k = np.arange(num_spans)
        sentinels = self.sentinel_ids[:num_spans]

        # Inputs: non-noise run k (raw start span_ends[k-1]) is followed by <extra_id_k>.
        run_out_start = nonnoise_ends - nonnoise_lengths + k
        run_src_start = span_ends - noise_lengths - nonnoise_lengths
        inputs = _gather_runs(
            tokens,
            out_starts=run_out_start,
            src_starts=run_src_start,
            out_length=length - num_noise + num_spans,
            sentinel_positions=nonnoise_ends + k,
            sentinels=sentinels,
            eos_id=self.eos_id,
        )
        # Labels: <extra_id_k> is followed by noise span k (raw start span_ends[k] - len).
        span_out_start = noise_ends - noise_lengths + k + 1
        labels = _gather_runs(
            tokens,
            out_starts=span_out_start,
            src_starts=span_ends - noise_lengths,
            out_length=num_noise + num_spans,
            sentinel_positions=span_out_start - 1,
            sentinels=sentinels,
            eos_id=self.eos_id,
        )

        decoder_input_ids = np.empty_like(labels)
        decoder_input_ids[:, 0] = self.decoder_start_id
        decoder_input_ids[:, 1:] = labels[:, :-1]
        return {'input_ids': inputs, 'labels': labels, 'decoder_input_ids': decoder_input_ids}

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Collate samples ``{'tokens', 'sample_idx', 'epoch'}`` into LongTensors.

        Args:
            samples: equal-length rows (numpy arrays, torch tensors or lists) with their global
                sample index and epoch.

        Returns:
            ``input_ids [B, Li]``, ``labels [B, Lt]``, ``decoder_input_ids [B, Lt]``.
        """
        if len(samples) == 0:
            raise ValueError('cannot collate an empty batch')
        tokens, epochs, indices = stack_rows(samples)
        keys = row_keys(self.seed, epochs, indices)
        out = self.corrupt(tokens, keys)
        return {name: torch.from_numpy(arr) for name, arr in out.items()}
