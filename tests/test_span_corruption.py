"""Tests for T5 span corruption (helper, index-seeded masks, vectorised collator)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from t5composer.data import span_corruption as sc
from t5composer.data.span_corruption import (
    SpanCorruptionCollator,
    batch_random_spans_noise_mask,
    noise_span_counts,
    random_spans_helper,
    row_keys,
)
from bench.span_corruption_reference import (
    create_sentinel_ids,
    filter_input_ids,
    per_example_span_corruption,
    reference_random_spans_noise_mask,
)

# T5 vocabulary layout: <extra_id_k> = 32099 - k; EOS = 1; pad/decoder start = 0.
SENTINELS = list(range(32099, 31999, -1))
EOS = 1
LENGTH = 568  # random_spans_helper(512, 0.15, 3.0)[0]


def make_collator(**overrides) -> SpanCorruptionCollator:
    kwargs = dict(sentinel_ids=SENTINELS, eos_id=EOS, decoder_start_id=0, seed=2137)
    kwargs.update(overrides)
    return SpanCorruptionCollator(**kwargs)


def make_samples(n: int, length: int = LENGTH, *, epoch: int = 0, start: int = 0, seed: int = 0) -> list[dict]:
    # Ordinary tokens only (no sentinel / EOS ids), so outputs can be parsed unambiguously.
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, 30000, size=(n, length))
    return [{'tokens': tokens[i], 'sample_idx': start + i, 'epoch': epoch} for i in range(n)]


def split_on_sentinels(row: np.ndarray, sentinel_set: set[int]) -> tuple[list[int], list[list[int]]]:
    """Sentinels in order of appearance, and the token runs that follow each (plus the head)."""
    sentinels, runs = [], [[]]
    for tok in row.tolist():
        if tok in sentinel_set:
            sentinels.append(tok)
            runs.append([])
        else:
            runs[-1].append(tok)
    return sentinels, runs


def reconstruct(input_ids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Undo span corruption: splice each target span back in place of its sentinel."""
    sentinel_set = set(SENTINELS)
    assert input_ids[-1] == EOS and labels[-1] == EOS
    in_sentinels, in_runs = split_on_sentinels(input_ids[:-1], sentinel_set)
    tg_sentinels, tg_runs = split_on_sentinels(labels[:-1], sentinel_set)
    assert in_sentinels == tg_sentinels
    assert tg_runs[0] == []  # targets start with a sentinel
    spans = dict(zip(tg_sentinels, tg_runs[1:]))
    out = list(in_runs[0])
    for sentinel, run in zip(in_sentinels, in_runs[1:]):
        out.extend(spans[sentinel])
        out.extend(run)
    return np.asarray(out)


def mask_runs(mask_row: np.ndarray) -> tuple[list[int], list[int], list[int]]:
    """(noise span starts, noise span lengths, non-noise run lengths) of one mask row."""
    m = np.concatenate([[False], mask_row, [False]]).astype(np.int8)
    d = np.diff(m)
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1)
    nonnoise = starts - np.concatenate([[0], ends[:-1]])
    return starts.tolist(), (ends - starts).tolist(), nonnoise.tolist()


# ---------------------------------------------------------------------------------------------
# Lengths
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ('args', 'expected'),
    [
        ((512, 0.15, 3.0), (568, 114)),
        # Hand-worked: 141 -> noise round(21.15)=21, spans 7, inputs 141-21+7+1=128; 142 -> 129.
        ((128, 0.15, 3.0), (141, 29)),
        # 10 -> noise round(1.5)=2 (half to even), spans 1, inputs 10; 11 -> 11.
        ((10, 0.15, 3.0), (10, 4)),
        # 767 -> noise round(383.5)=384, inputs 512, targets 513 > 512: the 0.5 hack drops one.
        ((512, 0.5, 3.0), (766, 512)),
        # Mean span 1: 511 -> noise 77, 77 spans, inputs 512; 512 -> 513. Raw length < inputs.
        ((512, 0.15, 1.0), (511, 155)),
    ],
)
def test_random_spans_helper_values(args, expected):
    assert random_spans_helper(*args) == expected


def _inputs_targets(tokens_length: int, density: float, mean: float) -> tuple[int, int]:
    noise = round(tokens_length * density)
    spans = round(noise / mean)
    return tokens_length - noise + spans + 1, noise + spans + 1


@pytest.mark.parametrize('density', [0.15, 0.3])
def test_random_spans_helper_loop_property(density):
    # The T5 loop stops at the first raw length whose successor no longer fits.
    for inputs_length in range(16, 1100, 7):
        tokens_length, targets_length = random_spans_helper(inputs_length, density, 3.0)
        assert _inputs_targets(tokens_length, density, 3.0)[0] <= inputs_length
        assert _inputs_targets(tokens_length + 1, density, 3.0)[0] > inputs_length
        assert targets_length == _inputs_targets(tokens_length, density, 3.0)[1]


def test_noise_span_counts():
    assert noise_span_counts(568, 0.15, 3.0) == (85, 28)
    assert noise_span_counts(2, 0.15, 3.0) == (1, 1)  # clipped up to 1 noise token
    assert noise_span_counts(10, 0.99, 3.0) == (9, 3)  # clipped down to length - 1
    assert noise_span_counts(20, 0.05, 3.0) == (1, 1)  # at least one span


# ---------------------------------------------------------------------------------------------
# Collator outputs
# ---------------------------------------------------------------------------------------------
def test_shapes_eos_and_shift():
    batch = make_collator()(make_samples(8))
    assert batch['input_ids'].shape == (8, 512)
    assert batch['labels'].shape == (8, 114)
    assert batch['decoder_input_ids'].shape == (8, 114)
    for v in batch.values():
        assert v.dtype == torch.long
    assert (batch['input_ids'][:, -1] == EOS).all()
    assert (batch['labels'][:, -1] == EOS).all()
    assert (batch['decoder_input_ids'][:, 0] == 0).all()
    assert torch.equal(batch['decoder_input_ids'][:, 1:], batch['labels'][:, :-1])


def test_decoder_start_id_is_configurable():
    batch = make_collator(decoder_start_id=7)(make_samples(2))
    assert (batch['decoder_input_ids'][:, 0] == 7).all()


def test_sentinel_order_and_reconstruction():
    samples = make_samples(32)
    batch = make_collator()(samples)
    expected_sentinels = SENTINELS[:28]
    sentinel_set = set(SENTINELS)
    for i, sample in enumerate(samples):
        inp = batch['input_ids'][i].numpy()
        lab = batch['labels'][i].numpy()
        in_sentinels, _ = split_on_sentinels(inp, sentinel_set)
        tg_sentinels, _ = split_on_sentinels(lab, sentinel_set)
        assert in_sentinels == expected_sentinels  # <extra_id_0>, <extra_id_1>, ... in order
        assert tg_sentinels == expected_sentinels
        assert lab[0] == SENTINELS[0]
        np.testing.assert_array_equal(reconstruct(inp, lab), sample['tokens'])


def test_collator_matches_mask_function():
    # The collator's outputs are what an independent per-row filter makes of the public mask.
    samples = make_samples(16, start=1000, epoch=3)
    collator = make_collator()
    batch = collator(samples)
    keys = row_keys(2137, [3] * 16, range(1000, 1016))
    mask = batch_random_spans_noise_mask(keys, LENGTH)
    for i, sample in enumerate(samples):
        tokens = sample['tokens']
        starts, lengths, _ = mask_runs(mask[i])
        expected_in, expected_tg = [], []
        pos = 0
        for k, (s, n) in enumerate(zip(starts, lengths)):
            expected_in.extend(tokens[pos:s].tolist() + [SENTINELS[k]])
            expected_tg.extend([SENTINELS[k]] + tokens[s : s + n].tolist())
            pos = s + n
        expected_in.extend(tokens[pos:].tolist() + [EOS])
        expected_tg.append(EOS)
        assert batch['input_ids'][i].tolist() == expected_in
        assert batch['labels'][i].tolist() == expected_tg


def test_accepts_tensors_and_lists():
    samples = make_samples(4)
    collator = make_collator()
    base = collator(samples)
    as_tensor = [dict(s, tokens=torch.from_numpy(s['tokens'])) for s in samples]
    as_list = [dict(s, tokens=s['tokens'].tolist()) for s in samples]
    as_uint16 = [dict(s, tokens=s['tokens'].astype(np.uint16)) for s in samples]
    for other in (as_tensor, as_list, as_uint16):
        out = collator(other)
        for k in base:
            assert torch.equal(base[k], out[k])


def test_short_rows():
    # Length 2: one noise token in one span; inputs [tok0, <extra_id_0>, EOS].
    batch = make_collator()([{'tokens': np.array([5, 6]), 'sample_idx': 0, 'epoch': 0}])
    assert batch['input_ids'].tolist() == [[5, SENTINELS[0], EOS]]
    assert batch['labels'].tolist() == [[SENTINELS[0], 6, EOS]]


def test_per_example_reference_outputs_are_valid():
    # The HF-style reference is a correct span corruption at T5-base shapes.
    samples = make_samples(8)
    tokens = np.stack([s['tokens'] for s in samples])
    out = per_example_span_corruption(tokens, sentinel_ids=SENTINELS, eos_id=EOS, rng=np.random.RandomState(0))
    expanded, targets = random_spans_helper(512, 0.15, 3.0)
    assert tokens.shape[1] == expanded
    assert out['input_ids'].shape == (8, 512) and out['labels'].shape == (8, targets)
    assert out['decoder_input_ids'].shape == (8, targets)
    assert (out['decoder_input_ids'][:, 0] == 0).all()
    np.testing.assert_array_equal(out['decoder_input_ids'][:, 1:], out['labels'][:, :-1])
    num_noise, num_spans = noise_span_counts(LENGTH, 0.15, 3.0)
    sentinel_set = set(SENTINELS)
    for i in range(8):
        in_sentinels, _ = split_on_sentinels(out['input_ids'][i], sentinel_set)
        tg_sentinels, tg_runs = split_on_sentinels(out['labels'][i], sentinel_set)
        assert in_sentinels == tg_sentinels == SENTINELS[:num_spans]  # <extra_id_0>, <extra_id_1>, ... in order
        assert sum(len(r) for r in tg_runs) - 1 == num_noise  # noise tokens + the final EOS
        np.testing.assert_array_equal(reconstruct(out['input_ids'][i], out['labels'][i]), tokens[i])


def test_reference_sentinel_ids_and_filter_by_hand():
    # mask 0 1 1 0 1: <extra_id_0> at 1 (2 dropped), <extra_id_1> at 4.
    mask = np.array([0, 1, 1, 0, 1], dtype=np.int8)
    sentinels = np.array(SENTINELS)
    ids = create_sentinel_ids(mask, sentinels)
    assert ids.tolist() == [0, SENTINELS[0], -1, 0, SENTINELS[1]]
    row = np.array([10, 11, 12, 13, 14])
    assert filter_input_ids(row, ids, EOS).tolist() == [10, SENTINELS[0], 13, SENTINELS[1], EOS]
    labels_ids = create_sentinel_ids(1 - mask, sentinels)
    assert filter_input_ids(row, labels_ids, EOS).tolist() == [SENTINELS[0], 11, 12, SENTINELS[1], 14, EOS]


def _output_runs(batch: dict, n: int) -> dict[str, np.ndarray]:
    """Structure of span-corrupted outputs: noise span lengths, kept-run lengths, first sentinel position."""
    sentinel_set = set(SENTINELS)
    spans, kept, first = [], [], []
    for i in range(n):
        inp, lab = np.asarray(batch['input_ids'][i]), np.asarray(batch['labels'][i])
        _, in_runs = split_on_sentinels(inp[:-1], sentinel_set)
        _, tg_runs = split_on_sentinels(lab[:-1], sentinel_set)
        spans += [len(r) for r in tg_runs[1:]]
        kept += [len(r) for r in in_runs[:-1]]  # the run before each sentinel (the last run is empty)
        first.append(len(in_runs[0]))
    return {'span_lengths': np.asarray(spans), 'kept_lengths': np.asarray(kept), 'first_sentinel': np.asarray(first)}


def test_reference_and_collator_outputs_have_the_same_statistics():
    # Different RNG streams, so compare the structure of the outputs, not their values.
    n = 1500
    samples = make_samples(n)
    tokens = np.stack([s['tokens'] for s in samples])
    ours = make_collator()(samples)
    ref = per_example_span_corruption(tokens, sentinel_ids=SENTINELS, eos_id=EOS, rng=np.random.RandomState(1))
    for k in ('input_ids', 'labels', 'decoder_input_ids'):
        assert tuple(ours[k].shape) == ref[k].shape
    a, b = _output_runs(ours, n), _output_runs(ref, n)
    assert len(a['span_lengths']) == len(b['span_lengths']) == 28 * n
    assert a['span_lengths'].sum() == b['span_lengths'].sum() == 85 * n  # noise fraction 85/568 in every row
    assert a['kept_lengths'].min() >= 1 and b['kept_lengths'].min() >= 1
    assert a['span_lengths'].min() >= 1 and b['span_lengths'].min() >= 1
    # Each run length is one part of a uniform random composition (85 noise tokens or 483 kept
    # tokens into 28 parts): both implementations must match its exact distribution.
    for key, total in (('span_lengths', 85), ('kept_lengths', 483), ('first_sentinel', 483)):
        pmf = _composition_part_pmf(total, 28)
        for name, runs in (('collator', a), ('reference', b)):
            counts = np.bincount(runs[key], minlength=total + 1)[: total + 1].astype(float)
            stat, dof = _chi_square(counts, pmf * len(runs[key]))
            assert _chi_square_ok(stat, dof), (name, key, stat, dof)
    x, y = a['first_sentinel'].astype(float), b['first_sentinel'].astype(float)
    assert abs(x.mean() - y.mean()) < 5 * math.sqrt(x.var() / n + y.var() / n)


# ---------------------------------------------------------------------------------------------
# Mask statistics
# ---------------------------------------------------------------------------------------------
N_ROWS = 4000


@pytest.fixture(scope='module')
def vectorised_masks() -> np.ndarray:
    keys = row_keys(2137, [0] * N_ROWS, range(N_ROWS))
    return batch_random_spans_noise_mask(keys, LENGTH)


@pytest.fixture(scope='module')
def reference_masks() -> np.ndarray:
    rng = np.random.default_rng(12345)
    return np.stack([reference_random_spans_noise_mask(LENGTH, 0.15, 3.0, rng) for _ in range(N_ROWS)])


def _run_stats(masks: np.ndarray) -> dict[str, np.ndarray]:
    span_lengths, nonnoise_lengths, first_starts, n_spans = [], [], [], []
    for row in masks:
        starts, lengths, nonnoise = mask_runs(row)
        span_lengths.extend(lengths)
        nonnoise_lengths.extend(nonnoise)
        first_starts.append(starts[0])
        n_spans.append(len(starts))
    return {
        'span_lengths': np.asarray(span_lengths),
        'nonnoise_lengths': np.asarray(nonnoise_lengths),
        'first_starts': np.asarray(first_starts),
        'n_spans': np.asarray(n_spans),
    }


def test_exact_counts_per_row(vectorised_masks):
    masks = vectorised_masks
    assert masks.shape == (N_ROWS, LENGTH)
    assert (masks.sum(axis=1) == 85).all()  # noise fraction exactly 85/568 in every row
    assert not masks[:, 0].any()  # starts with non-noise
    assert masks[:, -1].all()  # ends with noise
    stats = _run_stats(masks[:500])
    assert (stats['n_spans'] == 28).all()
    assert stats['span_lengths'].mean() == pytest.approx(85 / 28, abs=1e-12)
    assert stats['span_lengths'].min() >= 1 and stats['nonnoise_lengths'].min() >= 1


def _composition_part_pmf(total: int, parts: int) -> np.ndarray:
    """Exact P(a given part == l) for a uniform composition of total into parts, l = 0..total."""
    pmf = np.zeros(total + 1)
    for length in range(1, total - parts + 2):
        pmf[length] = math.comb(total - length - 1, parts - 2) / math.comb(total - 1, parts - 1)
    return pmf


def _chi_square(counts: np.ndarray, expected: np.ndarray, min_expected: float = 20.0) -> tuple[float, int]:
    """Chi-square statistic with low-expectation tail cells pooled; returns (stat, dof)."""
    keep = expected >= min_expected
    obs = np.append(counts[keep], counts[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    nonzero = exp > 0
    stat = float((((obs - exp) ** 2)[nonzero] / exp[nonzero]).sum())
    return stat, int(nonzero.sum()) - 1


def _chi_square_ok(stat: float, dof: int) -> bool:
    # Very generous: mean dof, sd sqrt(2 dof); 8 sd keeps fixed-seed tests far from flaky.
    return stat < dof + 8 * math.sqrt(2 * dof)


def test_span_length_distribution_is_exact(vectorised_masks):
    stats = _run_stats(vectorised_masks)
    for key, total in (('span_lengths', 85), ('nonnoise_lengths', 483)):
        values = stats[key]
        pmf = _composition_part_pmf(total, 28)
        counts = np.bincount(values, minlength=total + 1)[: total + 1].astype(float)
        stat, dof = _chi_square(counts, pmf * len(values))
        assert _chi_square_ok(stat, dof), (key, stat, dof)


def test_distribution_matches_reference(vectorised_masks, reference_masks):
    vec, ref = _run_stats(vectorised_masks), _run_stats(reference_masks)
    for key in ('span_lengths', 'nonnoise_lengths', 'first_starts'):
        a, b = vec[key].astype(float), ref[key].astype(float)
        # Mean within 5 standard errors (of the difference); variance within 10 %.
        se = math.sqrt(a.var() / len(a) + b.var() / len(b))
        assert abs(a.mean() - b.mean()) < 5 * se + 1e-9, key
        assert a.var() == pytest.approx(b.var(), rel=0.1), key
    # Position distribution: noise rate in 8 bins along the row.
    bins = np.array_split(np.arange(LENGTH), 8)
    rate_vec = np.array([vectorised_masks[:, b].mean() for b in bins])
    rate_ref = np.array([reference_masks[:, b].mean() for b in bins])
    np.testing.assert_allclose(rate_vec, rate_ref, atol=0.01)
    # Per-position rates near the row ends, where the profile is least flat (sd of a
    # difference ~0.008 at 4000 rows; 0.04 is 5 sd).
    ends = np.r_[0:12, LENGTH - 12 : LENGTH]
    np.testing.assert_allclose(vectorised_masks[:, ends].mean(0), reference_masks[:, ends].mean(0), atol=0.04)


@pytest.mark.parametrize(('n', 'k'), [(6, 2), (12, 2)])  # argpartition path, Floyd path
def test_random_subset_is_uniform(n, k):
    rows = 12000
    keys = row_keys(7, [0] * rows, range(rows))
    subsets = sc._random_sorted_subset(keys, 1, n, k)
    assert (np.diff(subsets, axis=1) > 0).all() and subsets.min() >= 0 and subsets.max() < n
    codes = subsets[:, 0] * n + subsets[:, 1]
    counts = np.bincount(codes, minlength=n * n).astype(float)
    valid = np.array([i // n < i % n for i in range(n * n)])
    assert counts[~valid].sum() == 0
    expected = np.full(valid.sum(), rows / math.comb(n, k))
    stat, dof = _chi_square(counts[valid], expected)
    assert _chi_square_ok(stat, dof), (stat, dof)


# ---------------------------------------------------------------------------------------------
# Determinism and RNG hygiene
# ---------------------------------------------------------------------------------------------
def test_mask_depends_only_on_seed_epoch_index():
    collator = make_collator()
    samples = make_samples(12, start=500, epoch=2)
    full = collator(samples)
    # Same rows in another order and other company: identical outputs per row.
    perm = [7, 3, 11, 0, 5]
    others = make_samples(3, start=90000, epoch=5, seed=1)
    mixed = [samples[i] for i in perm] + others
    part = collator(mixed)
    for j, i in enumerate(perm):
        assert torch.equal(part['input_ids'][j], full['input_ids'][i])
        assert torch.equal(part['labels'][j], full['labels'][i])
    # A fresh collator with the same seed agrees.
    again = make_collator()(samples)
    assert torch.equal(again['input_ids'], full['input_ids'])


def test_mask_changes_with_epoch_index_and_seed():
    keys = {
        'base': row_keys(1, [0], [10]),
        'epoch': row_keys(1, [1], [10]),
        'index': row_keys(1, [0], [11]),
        'seed': row_keys(2, [0], [10]),
    }
    masks = {name: batch_random_spans_noise_mask(k, LENGTH)[0] for name, k in keys.items()}
    for name in ('epoch', 'index', 'seed'):
        assert not np.array_equal(masks[name], masks['base']), name
    # Within a batch, rows with different indices differ.
    many = batch_random_spans_noise_mask(row_keys(1, [0] * 64, range(64)), LENGTH)
    assert len({row.tobytes() for row in many}) == 64


def test_global_rng_untouched():
    np.random.seed(123)
    torch.manual_seed(123)
    np_state = np.random.get_state()
    torch_state = torch.get_rng_state()
    make_collator()(make_samples(4))
    after_np = np.random.get_state()
    assert after_np[0] == np_state[0] and np.array_equal(after_np[1], np_state[1]) and after_np[2:] == np_state[2:]
    assert torch.equal(torch.get_rng_state(), torch_state)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
def test_too_few_sentinels():
    collator = make_collator(sentinel_ids=SENTINELS[:10])
    with pytest.raises(ValueError, match=r'needs 28 sentinel tokens but the tokenizer has 10 <extra_id_k>'):
        collator(make_samples(2))


@pytest.mark.parametrize('density', [0.0, 1.0, -0.1, 1.5])
def test_bad_noise_density(density):
    with pytest.raises(ValueError, match='noise_density'):
        make_collator(noise_density=density)
    with pytest.raises(ValueError, match='noise_density'):
        random_spans_helper(512, density, 3.0)


def test_bad_mean_span_length():
    with pytest.raises(ValueError, match='mean_noise_span_length'):
        make_collator(mean_noise_span_length=0.5)


def test_unequal_lengths():
    samples = make_samples(2) + make_samples(1, length=LENGTH - 1)
    with pytest.raises(ValueError, match='same length'):
        make_collator()(samples)


def test_row_too_short():
    with pytest.raises(ValueError, match='at least 2 tokens'):
        make_collator()([{'tokens': np.array([5]), 'sample_idx': 0, 'epoch': 0}])


def test_too_many_spans_for_nonnoise():
    # 9 noise tokens in 9 spans need 9 separating non-noise tokens; only 1 exists.
    with pytest.raises(ValueError, match='non-noise tokens'):
        make_collator(noise_density=0.9, mean_noise_span_length=1.0)(make_samples(1, length=10))


def test_missing_keys_and_bad_values():
    collator = make_collator()
    with pytest.raises(KeyError, match='sample_idx'):
        collator([{'tokens': np.arange(10), 'epoch': 0}])
    with pytest.raises(ValueError, match='empty batch'):
        collator([])
    with pytest.raises(ValueError, match='>= 0'):
        collator([{'tokens': np.arange(10), 'sample_idx': -1, 'epoch': 0}])
    with pytest.raises(ValueError, match='integers'):
        collator([{'tokens': np.ones(10, dtype=np.float32), 'sample_idx': 0, 'epoch': 0}])
    with pytest.raises(ValueError, match='distinct'):
        make_collator(sentinel_ids=[5, 5])
