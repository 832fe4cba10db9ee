"""Pre-training objectives (t5composer.data.objectives) and mixture batches (t5composer.data.denoising).

Exactness: every denoiser's inputs and targets give back the raw row; the measured corruption and
span statistics match the settings (tolerances stated at each test); prefix targets are exactly
the row's suffix; mode tokens sit first and nowhere else; a row's denoiser and mask depend only on
(seed, epoch, sample_idx); each denoiser keeps one shape.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from t5composer.data.denoising import (
    DENOISER,
    ROW_TOKENS,
    MixtureCollator,
    assign_denoisers,
    mixture_num_samples,
    mixture_num_tokens,
    padding_fractions,
    split_mixture_batch,
)
from t5composer.data.objectives import PRESETS, Denoiser, Objective
from t5composer.data.span_corruption import FIRST_FREE_STREAM, SpanCorruptionCollator, row_keys, row_uniforms
from t5composer.data.span_spec import SpanCorruptionSpec, noise_span_counts

SENTINELS = list(range(32099, 31999, -1))  # T5's <extra_id_k> = 32099 - k
EOS, PAD = 1, 0
MODE_IDS = {'[NLU]': 32100, '[NLG]': 32101, '[S2S]': 32102, '[X]': 32103}
LENGTH = 568  # T5-base raw rows: random_spans_helper(512, 0.15, 3)
SEED = 2137
UL2 = Objective.preset('ul2')
CUSTOM = (
    Denoiser(kind='span', mean_span_length=5, corruption_rate=0.3),  # no mode token
    Denoiser(kind='span', mean_span_length=1, corruption_rate=0.05, mode_token='[X]'),
    Denoiser(kind='prefix', target_fraction=(0.5, 0.5)),  # a fixed split, no mode token
    Denoiser(kind='prefix', target_fraction=(0.01, 0.99), mode_token='[S2S]'),
)
ALL_DENOISERS = [*UL2.denoisers, *CUSTOM]


def make_samples(n: int, length: int = LENGTH, *, start: int = 0, epoch: int = 0, seed: int = 0) -> list[dict]:
    # Ordinary ids only (no sentinel, EOS, pad or mode id), so outputs parse unambiguously.
    tokens = np.random.default_rng(seed).integers(2, 30000, size=(n, length))
    return [{'tokens': tokens[i], 'sample_idx': start + i, 'epoch': epoch} for i in range(n)]


def collator(objective: Objective, seed: int = SEED) -> MixtureCollator:
    return MixtureCollator(objective=objective, sentinel_ids=SENTINELS, eos_id=EOS, pad_id=PAD, mode_token_ids=MODE_IDS,
                           decoder_start_id=0, seed=seed)


def only(denoiser: Denoiser) -> Objective:
    return Objective(denoisers=(denoiser,))


def per_sample(batch: dict, samples: list[dict], objective: Objective, seed: int = SEED) -> dict:
    choice = assign_denoisers(seed, [s['epoch'] for s in samples], [s['sample_idx'] for s in samples], objective.weights)
    groups = dict(zip(batch['denoisers'], batch['groups']))
    assert batch['denoisers'] == sorted(set(choice.tolist()))
    taken = {i: 0 for i in groups}
    out = {}
    for s, d in zip(samples, choice.tolist()):
        row = {k: v[taken[d]].numpy() for k, v in groups[d].items() if torch.is_tensor(v)}
        taken[d] += 1
        out[(s['epoch'], s['sample_idx'])] = (d, row)
    assert all(taken[i] == groups[i]['input_ids'].shape[0] for i in groups)
    return out


def strip(row_inputs: np.ndarray, denoiser: Denoiser) -> np.ndarray:
    if denoiser.mode_token is not None:
        assert row_inputs[0] == MODE_IDS[denoiser.mode_token]
        return row_inputs[1:]
    return row_inputs


def reconstruct_span(inputs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Splice each target span back in place of its sentinel; also return the span lengths."""
    assert inputs[-1] == EOS and labels[-1] == EOS
    sentinel_set = set(SENTINELS)
    spans: list[list[int]] = []
    for tok in labels[:-1].tolist():
        if tok in sentinel_set:
            assert tok == SENTINELS[len(spans)]  # <extra_id_0>, <extra_id_1>, ... in order
            spans.append([])
        else:
            spans[-1].append(tok)
    out, k = [], 0
    for tok in inputs[:-1].tolist():
        if tok in sentinel_set:
            assert tok == SENTINELS[k]
            out += spans[k]
            k += 1
        else:
            out.append(tok)
    assert k == len(spans)
    return np.asarray(out), [len(s) for s in spans]


# ------------------------------------------------------------------------------------ objectives as values


def test_presets():
    t5 = PRESETS['span_corruption']
    (d,) = t5.denoisers
    spec = SpanCorruptionSpec()
    assert (d.kind, d.mean_span_length, d.corruption_rate, d.mode_token) == ('span', 3.0, 0.15, None)
    assert t5.is_span_corruption and not UL2.is_span_corruption
    assert d.output_lengths(spec.expanded_length) == (spec.input_length, spec.target_length) == (512, 114)
    assert [x.name for x in UL2.denoisers] == ['span(3,0.15)', 'span(8,0.15)', 'span(3,0.5)', 'span(8,0.5)',
                                              'span(64,0.15)', 'span(64,0.5)', 'prefix(0.15-0.35)']
    assert [x.mode_token for x in UL2.denoisers] == ['[NLU]'] * 2 + ['[NLG]'] * 4 + ['[S2S]']
    assert UL2.mode_tokens == ('[NLU]', '[NLG]', '[S2S]')
    np.testing.assert_allclose(UL2.weights, [0.2, 0.2, 0.1, 0.1, 0.1, 0.1, 0.2])  # R 40% / X 40% / S 20%
    assert UL2.output_lengths(LENGTH) == ((513, 114), (496, 97), (381, 380), (322, 321), (486, 87), (290, 289), (485, 200))
    assert UL2.sentinels_needed(LENGTH) == 95 and t5.sentinels_needed(LENGTH) == 28
    assert Objective.preset('ul2') is UL2 and UL2.name == 'ul2'
    # A span denoiser with a mode token is a mixture, not plain span corruption.
    assert not only(Denoiser(kind='span', mean_span_length=3, corruption_rate=0.15, mode_token='[NLU]')).is_span_corruption
    assert not only(Denoiser(kind='prefix', target_fraction=(0.2, 0.3))).is_span_corruption


def test_from_config():
    assert Objective.from_config({}) == PRESETS['span_corruption']
    assert Objective.from_config({}).is_span_corruption
    assert Objective.from_config({'preset': 'ul2'}) == UL2
    written_out = [{'kind': d.kind, 'mean_span_length': d.mean_span_length, 'corruption_rate': d.corruption_rate,
                    'mode_token': d.mode_token, 'weight': d.weight} for d in UL2.denoisers[:-1]]
    written_out.append({'kind': 'prefix', 'target_fraction': [0.15, 0.35], 'mode_token': '[S2S]', 'weight': 0.2})
    custom = Objective.from_config({'denoisers': written_out})
    assert custom == UL2 and custom.problems() == [] and custom.preset_name is None
    assert custom.name == '+'.join(d.name for d in UL2.denoisers)


KEY = "'data.objective.{}'"


@pytest.mark.parametrize(('section', 'expected'), [
    ({'preset': 'ul3'}, ["'data.objective.preset' must be one of ['span_corruption', 'ul2'], got 'ul3'. Did you mean 'ul2'?"]),
    ({'presets': 'ul2'}, ["'data.objective.presets' is not an objective setting; use 'preset' or 'denoisers'. Did you mean 'preset'?"]),
    ({'preset': 'ul2', 'denoisers': [{'kind': 'prefix', 'target_fraction': [0.2, 0.3]}]}, ["'data.objective.preset' and 'denoisers' both given"]),
    ({'denoisers': []}, ["'data.objective.denoisers' must be a non-empty list"]),
    ({'denoisers': ['span']}, ["'data.objective.denoisers[0]' must be a mapping of denoiser settings"]),
    ({'denoisers': [{'kind': 'spam', 'mean_span_length': 3, 'corruption_rate': 0.15}]},
     ["'data.objective.denoisers[0].kind' must be 'span' or 'prefix', got 'spam'. Did you mean 'span'?"]),
    ({'denoisers': [{'mean_span_length': 3, 'corruption_rate': 0.15}]},
     ["'data.objective.denoisers[0].kind' must be 'span' or 'prefix', got None."]),
    ({'denoisers': [{'kind': 'span', 'mean_span_length': 3, 'corruption_rate': 0.15, 'mode': '[NLU]'}]},
     ["'data.objective.denoisers[0].mode' is not a denoiser setting; use kind, mean_span_length, corruption_rate, "
      "target_fraction, mode_token, weight. Did you mean 'mode_token'?"]),
    ({'denoisers': [{'kind': 'span', 'mean_span_length': 3, 'corruption_rate': 1.5}]},
     ["'data.objective.denoisers[0].corruption_rate' must be in (0, 1), got 1.5; T5 uses 0.15."]),
    ({'denoisers': [{'kind': 'span', 'mean_span_length': 0.5, 'corruption_rate': 0.0}]},
     ["'data.objective.denoisers[0].corruption_rate' must be in (0, 1), got 0.0; T5 uses 0.15.",
      "'data.objective.denoisers[0].mean_span_length' must be >= 1, got 0.5; T5 uses 3."]),
    ({'denoisers': [{'kind': 'span', 'corruption_rate': 0.15}]},
     ["'data.objective.denoisers[0].mean_span_length' must be a number, got None; T5 uses 3."]),
    ({'denoisers': [{'kind': 'prefix'}]}, ["'data.objective.denoisers[0].target_fraction' is required for a prefix denoiser"]),
    ({'denoisers': [{'kind': 'prefix', 'target_fraction': [0.4, 0.2]}]},
     ["'data.objective.denoisers[0].target_fraction' must satisfy 0 < lo <= hi < 1, got [0.4, 0.2]."]),
    ({'denoisers': [{'kind': 'prefix', 'target_fraction': [0, 1]}]},
     ["'data.objective.denoisers[0].target_fraction' must satisfy 0 < lo <= hi < 1, got [0, 1]."]),
    ({'denoisers': [{'kind': 'prefix', 'target_fraction': 0.25}]},
     ["'data.objective.denoisers[0].target_fraction' must be two numbers [lo, hi], got 0.25."]),
    ({'denoisers': [{'kind': 'prefix', 'target_fraction': [0.2, 0.3], 'corruption_rate': 0.5}]},
     ["'data.objective.denoisers[0].corruption_rate' is a span denoiser's setting"]),
    ({'denoisers': [{'kind': 'span', 'mean_span_length': 3, 'corruption_rate': 0.15, 'target_fraction': [0.2, 0.3]}]},
     ["'data.objective.denoisers[0].target_fraction' is a prefix denoiser's setting"]),
    ({'denoisers': [{'kind': 'span', 'mean_span_length': 3, 'corruption_rate': 0.15, 'weight': 0}]},
     ["'data.objective.denoisers[0].weight' must be a finite number > 0, got 0"]),
    ({'denoisers': [{'kind': 'prefix', 'target_fraction': [0.2, 0.3], 'weight': -1.0}]},
     ["'data.objective.denoisers[0].weight' must be a finite number > 0, got -1.0"]),
    ({'denoisers': [{'kind': 'prefix', 'target_fraction': [0.2, 0.3], 'mode_token': ''}]},
     ["'data.objective.denoisers[0].mode_token' must be a token such as '[NLU]' (or absent), got ''."]),
])
def test_config_problems_name_the_setting_and_the_fix(section, expected):
    objective = Objective.from_config(section)
    problems = objective.problems(key=KEY)
    assert len(problems) == len(expected), problems
    for message, start in zip(problems, expected):
        assert message.startswith(start), (message, start)
    with pytest.raises(ValueError, match='data.objective'):
        objective.check(key=KEY)


def test_every_problem_is_listed_at_once():
    objective = Objective.from_config({'denoisers': [{'kind': 'spam', 'weight': 0}, {'kind': 'prefix'}], 'extra': 1})
    assert len(objective.problems()) == 4  # the unknown key, the kind, the weight, the missing target_fraction


def test_unknown_preset_raises_with_the_closest_name():
    with pytest.raises(ValueError, match=r"unknown objective preset 'span_corruptoin'.*Did you mean 'span_corruption'\?"):
        Objective.preset('span_corruptoin')


def test_length_and_sentinel_problems():
    # UL2's (3, 0.5) needs 95 sentinels on 568-token rows: a tokenizer with 50 extra ids cannot make them.
    problems = UL2.problems(key=KEY, raw_length=LENGTH, num_sentinels=50)
    assert problems == ["'data.objective.preset' 'ul2' (denoiser 2): span(3,0.5) needs 95 sentinel tokens for rows of 568 "
                        'tokens but the tokenizer has 50 <extra_id_k> tokens; raise mean_span_length or lower '
                        'corruption_rate, or use a tokenizer with more extra_ids.']
    assert UL2.problems(raw_length=LENGTH, num_sentinels=100) == []
    custom = Objective(denoisers=(Denoiser(kind='span', mean_span_length=1, corruption_rate=0.9),))
    (message,) = custom.problems(key=KEY, raw_length=100)
    assert message.startswith("'data.objective.denoisers[0]': span(1,0.9): length 100 with noise_density=0.9")
    with pytest.raises(ValueError, match='non-noise tokens to separate them'):
        custom.output_lengths(100)
    with pytest.raises(ValueError, match='at least 2 tokens'):
        CUSTOM[2].output_lengths(1)
    with pytest.raises(ValueError, match='not a prefix denoiser'):
        UL2.denoisers[0].target_counts(LENGTH)


# ------------------------------------------------------------------------------------ the denoiser choice


def test_assign_denoisers_follows_the_weights_and_only_the_row():
    n = 40_000
    idx = np.arange(n)
    choice = assign_denoisers(SEED, 0, idx, UL2.weights)
    assert choice.dtype == np.int64 and choice.min() >= 0 and choice.max() == 6
    freq = np.bincount(choice, minlength=7) / n
    sigma = np.sqrt(UL2.weights * (1 - UL2.weights) / n)
    assert np.all(np.abs(freq - UL2.weights) < 5 * sigma), (freq, UL2.weights)
    # Unnormalised weights are the same mixture.
    np.testing.assert_array_equal(assign_denoisers(SEED, 0, idx, [d.weight * 10 for d in UL2.denoisers]), choice)
    # A pure function of (seed, epoch, sample_idx): any subset, in any order, gets the same choices.
    perm = np.random.default_rng(1).permutation(n)[:500]
    np.testing.assert_array_equal(assign_denoisers(SEED, np.zeros(500, int), perm, UL2.weights), choice[perm])
    # Another seed or epoch is another draw.
    assert (assign_denoisers(SEED + 1, 0, idx, UL2.weights) != choice).mean() > 0.5
    assert (assign_denoisers(SEED, 1, idx, UL2.weights) != choice).mean() > 0.5
    with pytest.raises(ValueError, match='weights must be'):
        assign_denoisers(SEED, 0, idx, [1.0, 0.0])


def test_the_choice_is_independent_of_the_span_mask():
    # The choice's draw and the prefix split's come from streams no span mask uses.
    keys = row_keys(SEED, 0, np.arange(20_000))
    a, b = row_uniforms(keys, FIRST_FREE_STREAM), row_uniforms(keys, FIRST_FREE_STREAM + 1)
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.03
    with pytest.raises(ValueError, match='FIRST_FREE_STREAM'):
        row_uniforms(keys, 1)
    # Rows of every denoiser have, under one denoiser's mask, the same noise statistics as all rows:
    # the mask of a row does not depend on the choice.
    choice = assign_denoisers(SEED, 0, np.arange(8000), UL2.weights)
    span = SpanCorruptionCollator(sentinel_ids=SENTINELS, eos_id=EOS, seed=SEED)
    out = span.corrupt(np.tile(np.arange(2, 2 + LENGTH), (8000, 1)), keys[:8000])
    first_label = out['labels'][:, 1]  # first noise token's raw position + 2: where the first span starts
    overall = first_label.mean()
    for d in range(7):
        assert abs(first_label[choice == d].mean() - overall) < 0.1 * overall


# ------------------------------------------------------------------------------------ exactness per denoiser


@pytest.mark.parametrize('denoiser', ALL_DENOISERS, ids=[f'{d.name}-{d.mode_token}' for d in ALL_DENOISERS])
def test_inputs_and_targets_give_back_the_row(denoiser):
    samples = make_samples(150, seed=3)
    batch = collator(only(denoiser))(samples)
    assert batch['denoisers'] == [0]
    (group,) = batch['groups']
    arrays = {k: v.numpy() for k, v in group.items() if torch.is_tensor(v)}
    assert all(v.dtype == torch.int64 for v in group.values() if torch.is_tensor(v))
    # The rows' token counts the collator keeps for Composer's token weighting (no tensor read later).
    counts = group[ROW_TOKENS]
    assert counts['loss_generating'] == (arrays['labels'] != -100).sum(axis=1).tolist()
    assert counts['encoder'] == (arrays['attention_mask'].sum(axis=1).tolist() if 'attention_mask' in arrays
                                 else [arrays['input_ids'].shape[1]] * len(samples))
    mode_ids = set(MODE_IDS.values())
    for i, sample in enumerate(samples):
        inputs = arrays['input_ids'][i]
        labels = arrays['labels'][i]
        # The mode token is the first input token and appears nowhere else.
        if denoiser.mode_token is not None:
            assert inputs[0] == MODE_IDS[denoiser.mode_token] and np.isin(inputs[1:], list(mode_ids)).sum() == 0
        else:
            assert np.isin(inputs, list(mode_ids)).sum() == 0
        assert np.isin(labels, list(mode_ids)).sum() == 0
        body = strip(inputs, denoiser)
        if denoiser.kind == 'span':
            row, _ = reconstruct_span(body, labels)
        else:
            fixed = denoiser.target_fraction[0] == denoiser.target_fraction[1]
            assert ('attention_mask' in arrays) == (not fixed)  # a mask exactly where rows can be padded
            mask = np.ones_like(inputs) if fixed else arrays['attention_mask'][i]
            real = int(mask.sum()) - (denoiser.mode_token is not None)
            assert mask[: mask.sum()].all() and not mask[mask.sum():].any()  # real tokens first, then padding
            prefix, eos = body[: real - 1], body[real - 1]
            assert eos == EOS and (body[real:] == PAD).all()
            t = int((labels != -100).sum()) - 1
            assert labels[t] == EOS and (labels[t + 1:] == -100).all()
            row = np.concatenate([prefix, labels[:t]])
        np.testing.assert_array_equal(row, sample['tokens'])
        # Decoder inputs: the labels shifted right after the start id, pad where the labels are padding.
        expected = np.concatenate([[0], labels[:-1]])
        expected[labels == -100] = PAD
        np.testing.assert_array_equal(arrays['decoder_input_ids'][i], expected)


@pytest.mark.parametrize('denoiser', [d for d in ALL_DENOISERS if d.kind == 'span'],
                         ids=[d.name for d in ALL_DENOISERS if d.kind == 'span'])
def test_span_statistics_match_the_settings(denoiser):
    """Over 2,000 rows of 568 tokens.

    Corruption rate: exactly T5's count on every row, round(L * rate) / L (within 0.5 / L of the
    setting). Mean span length: every row has round(noise / mean) spans, so the measured mean is
    noise / spans, within mean / (2 * spans) of the setting (T5's rounding; a few % when a row has
    many spans, but UL2's (64, 0.15) gets one 85-token span per 568-token row). The span lengths
    themselves vary (random compositions), each >= 1, and the spans' starts cover the whole row.
    """
    n = 2000
    rate, mean = denoiser.corruption_rate, denoiser.mean_span_length
    num_noise, num_spans = noise_span_counts(LENGTH, rate, mean)
    batch = collator(only(denoiser))(make_samples(n, seed=5))
    (group,) = batch['groups']
    labels = group['labels'].numpy()
    is_sentinel = np.isin(labels, SENTINELS)
    noise_per_row = (~is_sentinel).sum(axis=1) - 1  # minus EOS
    assert (noise_per_row == num_noise).all() and (is_sentinel.sum(axis=1) == num_spans).all()
    measured_rate = noise_per_row.sum() / (n * LENGTH)
    assert abs(measured_rate - rate) <= 0.5 / LENGTH
    lengths = np.concatenate([reconstruct_span(strip(i, denoiser), l)[1] for i, l in zip(group['input_ids'].numpy()[:300], labels[:300])])
    assert lengths.min() >= 1 and lengths.mean() == pytest.approx(num_noise / num_spans)
    assert abs(lengths.mean() - mean) <= mean / (2 * num_spans) + 1e-9
    if num_noise > num_spans > 1:
        assert lengths.std() > 0
    if mean <= 8:
        assert abs(lengths.mean() - mean) / mean < 0.04  # "within a few %" where rows have many spans


@pytest.mark.parametrize('denoiser', [d for d in ALL_DENOISERS if d.kind == 'prefix'],
                         ids=[d.name for d in ALL_DENOISERS if d.kind == 'prefix'])
def test_prefix_targets_are_the_suffix_and_cover_the_range(denoiser):
    """Over 2,000 rows of 568 tokens: the target fraction t / L lies in [lo, hi] up to the rounding of
    the ends (0.5 / L), its mean is within 0.005 of (lo + hi) / 2 (about 4 standard errors for the
    ul2 preset), and draws reach both ends of the range."""
    n = 2000
    lo, hi = denoiser.target_fraction
    t_lo, t_hi = denoiser.target_counts(LENGTH)
    samples = make_samples(n, seed=7)
    (group,) = collator(only(denoiser))(samples)['groups']
    labels = group['labels'].numpy()
    t = (labels != -100).sum(axis=1) - 1
    assert t.min() >= t_lo and t.max() <= t_hi
    assert (t / LENGTH >= lo - 0.5 / LENGTH).all() and (t / LENGTH <= hi + 0.5 / LENGTH).all()
    assert abs((t / LENGTH).mean() - (lo + hi) / 2) < 0.005
    spread = t_hi - t_lo
    assert t.min() <= t_lo + spread * 0.02 and t.max() >= t_hi - spread * 0.02
    tokens = np.stack([s['tokens'] for s in samples])
    for i in range(n):
        np.testing.assert_array_equal(labels[i, : t[i]], tokens[i, LENGTH - t[i]:])  # exactly the row's suffix


def test_span_groups_are_the_span_collators_rows():
    samples = make_samples(256, start=1000, epoch=2)
    batch = collator(UL2)(samples)
    rows = per_sample(batch, samples, UL2)
    tokens = np.stack([s['tokens'] for s in samples])
    keys = row_keys(SEED, [2] * 256, [s['sample_idx'] for s in samples])
    for i, d in enumerate(UL2.denoisers):
        if d.kind != 'span':
            continue
        reference = SpanCorruptionCollator(sentinel_ids=SENTINELS, eos_id=EOS, decoder_start_id=0, noise_density=d.corruption_rate,
                                           mean_noise_span_length=d.mean_span_length, seed=SEED).corrupt(tokens, keys)
        seen = 0
        for j, s in enumerate(samples):
            denoiser, row = rows[(2, s['sample_idx'])]
            if denoiser != i:
                continue
            seen += 1
            np.testing.assert_array_equal(row['input_ids'], np.concatenate([[MODE_IDS[d.mode_token]], reference['input_ids'][j]]))
            np.testing.assert_array_equal(row['labels'], reference['labels'][j])
            np.testing.assert_array_equal(row['decoder_input_ids'], reference['decoder_input_ids'][j])
            assert 'attention_mask' not in row
        assert seen > 0


def test_a_single_span_denoiser_without_mode_is_the_span_collator():
    samples = make_samples(32, start=7)
    (group,) = collator(PRESETS['span_corruption'])(samples)['groups']
    reference = SpanCorruptionCollator(sentinel_ids=SENTINELS, eos_id=EOS, seed=SEED)(samples)
    assert group.keys() - {ROW_TOKENS, DENOISER} == reference.keys()
    for k in reference:
        assert torch.equal(group[k], reference[k])


# ------------------------------------------------------------------------------------ resumption and shapes


def test_a_row_is_the_same_whatever_shares_its_batch():
    """What makes resumption exact: a row's denoiser and mask depend only on (seed, epoch, sample_idx)."""
    samples = make_samples(96, start=500, epoch=1, seed=11)
    whole = per_sample(collator(UL2)(samples), samples, UL2)
    order = np.random.default_rng(0).permutation(96)
    others = make_samples(40, start=10_000, epoch=1, seed=12)
    mixed = [samples[i] for i in order[:50]] + others
    mixed = [mixed[i] for i in np.random.default_rng(1).permutation(len(mixed))]
    part = per_sample(collator(UL2)(mixed), mixed, UL2)
    for s in samples:
        key = (1, s['sample_idx'])
        if key not in part:
            continue
        assert part[key][0] == whole[key][0]
        for k, v in whole[key][1].items():
            np.testing.assert_array_equal(part[key][1][k], v)
    assert sum((1, s['sample_idx']) in part for s in samples) == 50
    # Another epoch of the same rows draws again.
    again = [dict(s, epoch=2) for s in samples]
    moved = per_sample(collator(UL2)(again), again, UL2)
    assert sum(moved[(2, s['sample_idx'])][0] != whole[(1, s['sample_idx'])][0] for s in samples) > 30


def test_each_denoiser_keeps_one_shape():
    shapes = UL2.output_lengths(LENGTH)
    seen = set()
    present = set()
    for b in range(6):
        batch = collator(UL2)(make_samples(64, start=64 * b))
        assert mixture_num_samples(batch) == 64
        for i, group in zip(batch['denoisers'], batch['groups']):
            e, d = shapes[i]
            n = group['input_ids'].shape[0]
            assert tuple(group['input_ids'].shape) == (n, e) and tuple(group['labels'].shape) == (n, d)
            assert tuple(group['decoder_input_ids'].shape) == (n, d)
            assert ('attention_mask' in group) == (UL2.denoisers[i].kind == 'prefix')
            seen.add((e, d))
            present.add(i)
    assert present == set(range(7)) and seen == set(shapes)


def test_mode_tokens_must_have_ids():
    with pytest.raises(ValueError, match=r"lacks the mode token\(s\) \['\[S2S\]'\]"):
        MixtureCollator(objective=UL2, sentinel_ids=SENTINELS, eos_id=EOS, pad_id=PAD, mode_token_ids={'[NLU]': 5, '[NLG]': 6})
    with pytest.raises(ValueError, match='weight'):
        collator(only(Denoiser(kind='prefix', target_fraction=(0.2, 0.3), weight=0)))


# ------------------------------------------------------------------------------------ batch helpers


def test_split_and_counts():
    batch = collator(UL2)(make_samples(128, seed=2))
    chunks = split_mixture_batch(batch, 10)
    assert all(0 < c['input_ids'].shape[0] <= 10 for c in chunks)
    assert sum(mixture_num_samples(c) for c in chunks) == mixture_num_samples(batch) == 128
    # Chunks are the groups cut in order, every field kept.
    start = 0
    for group in batch['groups']:
        n = group['input_ids'].shape[0]
        parts = chunks[start:start + -(-n // 10)]
        start += len(parts)
        for k in group:
            if k == ROW_TOKENS:  # the rows' counts are cut with them
                assert {c: sum((p[k][c] for p in parts), []) for c in group[k]} == group[k]
            elif k == DENOISER:  # every chunk says whose rows it holds
                assert [p[k] for p in parts] == [group[k]] * len(parts)
            else:
                assert torch.equal(torch.cat([p[k] for p in parts]), group[k])
    assert start == len(chunks)
    # The counts of device batches come from the collator's numbers: no tensor is read.
    blind = [{k: (torch.empty(v.shape, device='meta', dtype=v.dtype) if torch.is_tensor(v) else v) for k, v in c.items()}
             for c in chunks]
    assert [mixture_num_tokens(c) for c in blind] == [mixture_num_tokens(c) for c in chunks]
    counts = mixture_num_tokens(batch)
    summed = [mixture_num_tokens(c) for c in chunks]
    assert counts == {'total': sum(s['total'] for s in summed), 'loss_generating': sum(s['loss_generating'] for s in summed)}
    # By hand: span rows fill their shapes; prefix rows count their real tokens only.
    shapes = UL2.output_lengths(LENGTH)
    total = loss = 0
    for i, group in zip(batch['denoisers'], batch['groups']):
        n = group['input_ids'].shape[0]
        if UL2.denoisers[i].kind == 'span':
            total += n * sum(shapes[i])
            loss += n * shapes[i][1]
        else:
            targets = int((group['labels'] != -100).sum())
            total += int(group['attention_mask'].sum()) + targets
            loss += targets
            assert targets < n * shapes[i][1]  # the counts skip padding
    assert counts == {'total': total, 'loss_generating': loss}
    # A single group dict is one group.
    prefix = batch['groups'][-1]
    assert mixture_num_samples(prefix) == prefix['input_ids'].shape[0]
    assert len(split_mixture_batch(prefix, 1000)) == 1
    with pytest.raises(ValueError, match='microbatch_size'):
        split_mixture_batch(batch, 0)


def test_padding_fractions_match_the_batches():
    assert padding_fractions(PRESETS['span_corruption'], LENGTH) == {'encoder': 0.0, 'decoder': 0.0}
    expected = padding_fractions(UL2, LENGTH)
    assert 0.02 < expected['encoder'] < 0.03 and 0.05 < expected['decoder'] < 0.07
    pad = {'encoder': 0, 'decoder': 0}
    size = {'encoder': 0, 'decoder': 0}
    for b in range(20):
        batch = collator(UL2)(make_samples(128, start=128 * b, seed=b))
        for group in batch['groups']:
            size['encoder'] += group['input_ids'].numel()
            size['decoder'] += group['labels'].numel()
            if 'attention_mask' in group:
                pad['encoder'] += int((group['attention_mask'] == 0).sum())
            pad['decoder'] += int((group['labels'] == -100).sum())
    for side in pad:
        assert pad[side] / size[side] == pytest.approx(expected[side], rel=0.15)
