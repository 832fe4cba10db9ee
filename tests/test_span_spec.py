"""The span-corruption spec value: lengths (equal to T5's helper), checks, and the convert command."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import shlex
from pathlib import Path

import pytest

from t5composer.config.schema import DataConfig
from t5composer.data.metadata import convert_command as metadata_convert_command
from t5composer.data.span_spec import SpanCorruptionSpec, convert_command, noise_problems

REPO = Path(__file__).resolve().parents[1]


def t5_random_spans_helper(inputs_length, noise_density, mean_noise_span_length,
                           extra_tokens_per_span_inputs=1, extra_tokens_per_span_targets=1):
    """T5's ``random_spans_helper`` (t5/data/preprocessors.py), transcribed as the oracle."""

    def _tokens_length_to_inputs_length_targets_length(tokens_length):
        num_noise_tokens = int(round(tokens_length * noise_density))
        num_nonnoise_tokens = tokens_length - num_noise_tokens
        num_noise_spans = int(round(num_noise_tokens / mean_noise_span_length))
        # inputs contain all nonnoise tokens, sentinels for all noise spans and one EOS token.
        return (num_nonnoise_tokens + num_noise_spans * extra_tokens_per_span_inputs + 1,
                num_noise_tokens + num_noise_spans * extra_tokens_per_span_targets + 1)

    tokens_length = inputs_length - 1
    while _tokens_length_to_inputs_length_targets_length(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    inputs_length, targets_length = _tokens_length_to_inputs_length_targets_length(tokens_length)
    # minor hack to get the targets length to be equal to inputs length
    if noise_density == 0.5 and targets_length > inputs_length:
        tokens_length -= 1
        targets_length -= 1
    return tokens_length, targets_length


def test_t5_lengths():
    spec = SpanCorruptionSpec(input_length=512, noise_density=0.15, mean_noise_span_length=3.0)
    assert (spec.expanded_length, spec.target_length, spec.noise_spans) == (568, 114, 28)
    assert SpanCorruptionSpec() == spec  # T5's settings are the defaults


@pytest.mark.parametrize('input_length', [4, 10, 64, 128, 256, 512, 1024, 2048])
@pytest.mark.parametrize(('density', 'mean'), [(0.15, 3.0), (0.15, 1.0), (0.3, 3.0), (0.5, 3.0), (0.1, 8.0), (0.25, 2.5)])
def test_lengths_equal_t5s_helper(input_length, density, mean):
    spec = SpanCorruptionSpec(input_length=input_length, noise_density=density, mean_noise_span_length=mean)
    if spec.problems():
        pytest.skip('settings the checks refuse')
    assert (spec.expanded_length, spec.target_length) == t5_random_spans_helper(input_length, density, mean)


def test_value_semantics():
    with pytest.raises(TypeError):
        SpanCorruptionSpec(512, 0.15, 3.0)  # keyword-only
    spec = SpanCorruptionSpec(input_length=64)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.input_length = 128
    assert spec == SpanCorruptionSpec(input_length=64) and hash(spec) == hash(SpanCorruptionSpec(input_length=64))
    assert spec.expanded_length == 70  # the converter's rows for the tests' input_length


def test_defaults_are_the_configs():
    d = DataConfig()
    assert d.span_corruption == SpanCorruptionSpec()
    assert (d.input_length, d.noise_density, d.mean_noise_span_length) == (512, 0.15, 3.0)
    assert DataConfig(input_length=64, noise_density=0.3).span_corruption == SpanCorruptionSpec(input_length=64, noise_density=0.3)


@pytest.mark.parametrize(
    ('settings', 'fragments'),
    [
        ({'noise_density': 0.0}, ["'data.noise_density' must be in (0, 1), got 0.0; T5 uses 0.15."]),
        ({'noise_density': 1.0}, ['must be in (0, 1), got 1.0']),
        ({'noise_density': -0.1}, ['must be in (0, 1), got -0.1']),
        ({'noise_density': math.nan}, ['must be in (0, 1), got nan']),
        ({'noise_density': '0.15'}, ["'data.noise_density' must be a number, got '0.15'"]),
        ({'mean_noise_span_length': 0.5}, ["'data.mean_noise_span_length' must be >= 1, got 0.5; T5 uses 3."]),
        ({'mean_noise_span_length': math.nan}, ['must be >= 1, got nan']),
        ({'mean_noise_span_length': math.inf}, ['must be a finite number >= 1, got inf']),
        ({'input_length': 3}, ["'data.input_length' 3 is too small to hold one noise span and EOS; use at least 4 (512 is standard)."]),
        ({'input_length': 0}, ["'data.input_length' 0 is too small"]),
        ({'input_length': 64.0}, ["'data.input_length' must be an integer, got 64.0"]),
        ({'input_length': 2, 'noise_density': 1.5, 'mean_noise_span_length': 0.5},
         ['noise_density', 'mean_noise_span_length', "'data.input_length' 2 is too small"]),  # all at once
    ],
)
def test_problems(settings, fragments):
    spec = SpanCorruptionSpec(**settings)
    problems = spec.problems(key="'data.{}'")
    assert len(problems) == len(fragments)
    for problem, fragment in zip(problems, fragments):
        assert fragment in problem
    with pytest.raises(ValueError, match='--'):
        spec.check(key='--{}')  # the converter names its flags
    with pytest.raises(ValueError):
        spec.expanded_length  # noqa: B018 - lengths of a refused spec raise its problems


def test_good_settings_have_no_problems():
    for spec in (SpanCorruptionSpec(), SpanCorruptionSpec(input_length=4), SpanCorruptionSpec(noise_density=0.5, mean_noise_span_length=1.0)):
        assert spec.problems() == []
        spec.check()
    assert noise_problems(0.15, 3.0) == []


def _parse_convert_command(command: str, monkeypatch) -> dict:
    """What recipes/convert_c4.py passes to convert_c4 when run with ``command``."""
    import t5composer.data.c4_convert as c4_convert

    module_spec = importlib.util.spec_from_file_location('convert_c4_recipe', REPO / 'recipes' / 'convert_c4.py')
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    seen = {}

    def fake_convert_c4(**kwargs):
        seen.update(kwargs)
        return {}

    monkeypatch.setattr(c4_convert, 'convert_c4', fake_convert_c4)
    argv = shlex.split(command)
    assert argv[:2] == ['python', 'recipes/convert_c4.py']
    assert module.main(argv[2:]) == 0
    return seen


@pytest.mark.parametrize('spec', [SpanCorruptionSpec(), SpanCorruptionSpec(input_length=64),
                                  SpanCorruptionSpec(input_length=1024, noise_density=0.3, mean_noise_span_length=2.5)])
def test_convert_command_round_trips_through_the_recipe(spec, monkeypatch, tmp_path):
    out_root = str(tmp_path / 'my data')  # a space: the command must quote it
    command = spec.convert_command(out_root=out_root, splits=['train', 'val'], tokenizer='google/t5-v1_1-base', overwrite=True)
    seen = _parse_convert_command(command, monkeypatch)
    assert seen['spec'] == spec
    assert (seen['out_root'], seen['splits'], seen['tokenizer'], seen['source'], seen['overwrite']) == (
        out_root, ['train', 'val'], 'google/t5-v1_1-base', 'allenai/c4', True)
    assert seen['spec'].expanded_length == spec.expanded_length

    # The command the split metadata gives back (verify_data.py, mismatch messages) is the same one.
    meta = {'source': 'allenai/c4', 'split': ['train', 'val'], 'tokenizer': 'google/t5-v1_1-base',
            'input_length': spec.input_length, 'noise_density': spec.noise_density,
            'mean_noise_span_length': spec.mean_noise_span_length}
    assert metadata_convert_command(meta, out_root=out_root) == command
    assert SpanCorruptionSpec.from_mapping(meta) == spec


def test_convert_command_without_a_spec_asks_for_the_settings():
    command = convert_command(out_root='data/c4', splits='train', tokenizer='<tokenizer.name>')
    assert command == ('python recipes/convert_c4.py --source allenai/c4 --out_root data/c4 --splits train '
                       '--tokenizer <tokenizer.name> --input_length <data.input_length>')
    assert SpanCorruptionSpec.from_mapping({}) == SpanCorruptionSpec()
