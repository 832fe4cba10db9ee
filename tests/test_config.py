"""Config loading: overrides, variables, schema errors that name the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from t5composer.config import ConfigError, load_config, redact

REPO = Path(__file__).resolve().parents[1]

MINIMAL = {
    'max_duration': '10ba',
    'global_train_batch_size': 8,
    'tokenizer': {'name': 'some/tokenizer'},
    'data': {'local': '/tmp/nowhere'},
    'optimizer': {'name': 'adamwscale', 'lr': 0.01},
}


def _load(overrides=(), base=None):
    return load_config(None, list(overrides), base=base if base is not None else MINIMAL)


def _problems(overrides=(), base=None) -> str:
    with pytest.raises(ConfigError) as info:
        _load(overrides, base)
    return str(info.value)


@pytest.mark.parametrize('name', sorted(p.name for p in (REPO / 'yamls').glob('*.yaml')))
def test_shipped_recipes_validate(name):
    cfg = load_config(str(REPO / 'yamls' / name))
    assert cfg.optimizer.name
    assert cfg.max_duration


# nanoT5's budget variants: batch 256 as two microbatches of 128, (warmup, total) per budget.
BUDGETS = {4: (1666, 13333), 8: (3332, 26666), 12: (5000, 39999), 16: (6666, 53332), 20: (8332, 66665), 24: (10000, 79998)}


@pytest.mark.parametrize('hours', sorted(BUDGETS))
def test_budget_recipes_match_nanot5(hours):
    cfg = load_config(str(REPO / 'yamls' / f'pt_{hours}h.yaml'))
    warmup, total = BUDGETS[hours]
    assert (cfg.global_train_batch_size, cfg.device_train_microbatch_size) == (256, 128)
    assert cfg.max_duration == f'{total}ba' and cfg.scheduler.kwargs['t_warmup'] == f'{warmup}ba'
    assert cfg.run_name == f'pt_{hours}h' and cfg.save_folder == f'runs/pt_{hours}h'
    base = load_config(str(REPO / 'yamls' / 'pt_base.yaml'))  # everything else is pt_base's
    assert (cfg.optimizer, cfg.model, cfg.data, cfg.precision, cfg.algorithms) == (base.optimizer, base.model, base.data, base.precision, base.algorithms)


def test_base_key_inherits_and_reports_cycles(tmp_path):
    (tmp_path / 'a.yaml').write_text('base: b.yaml\nrun_name: a\n')
    (tmp_path / 'b.yaml').write_text('base: a.yaml\n')
    with pytest.raises(ConfigError, match="'base:' recipes form a cycle"):
        load_config(str(tmp_path / 'a.yaml'))
    (tmp_path / 'c.yaml').write_text('base: missing.yaml\n')
    with pytest.raises(ConfigError, match="'base: missing.yaml' in .* names no file"):
        load_config(str(tmp_path / 'c.yaml'))
    (tmp_path / 'd.yaml').write_text(f"base: {REPO / 'yamls' / 'demo.yaml'}\nrun_name: d\nmodel:\n  d_model: 64\n")
    cfg = load_config(str(tmp_path / 'd.yaml'))
    assert (cfg.run_name, cfg.model.d_model, cfg.model.num_heads, cfg.save_folder) == ('d', 64, 4, 'runs/d')


def test_replace_takes_a_section_whole_instead_of_merging_it(tmp_path):
    """pt_base_adafactor.yaml states only what differs from pt_base.yaml; its schedule has none of
    pt_base's cosine keys (merging would carry t_warmup and final_lr into inverse_sqrt)."""
    cfg = load_config(str(REPO / 'yamls' / 'pt_base_adafactor.yaml'))
    base = load_config(str(REPO / 'yamls' / 'pt_base.yaml'))
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.kwargs) == ('adafactor', pytest.approx(2e-2), {})
    assert (cfg.scheduler.name, cfg.scheduler.kwargs) == ('inverse_sqrt', {})
    assert (cfg.run_name, cfg.save_folder) == ('pt_base_adafactor', 'runs/pt_base_adafactor')
    same = ['model', 'data', 'tokenizer', 'algorithms', 'callbacks', 'precision', 'compile', 'max_duration', 'global_train_batch_size',
            'device_train_microbatch_size', 'eval_interval', 'save_interval', 'seed']
    assert [getattr(cfg, k) for k in same] == [getattr(base, k) for k in same]

    parent = REPO / 'yamls' / 'pt_base.yaml'
    (tmp_path / 'merged.yaml').write_text(f'base: {parent}\nscheduler:\n  name: inverse_sqrt\n')
    merged = load_config(str(tmp_path / 'merged.yaml')).scheduler.kwargs  # what replace is for: the cosine keys merged in
    assert merged == {'t_warmup': '10000ba', 'final_lr': pytest.approx(1e-5)}
    (tmp_path / 'dotted.yaml').write_text(f'base: {parent}\nreplace: [callbacks.speed_monitor]\ncallbacks:\n  speed_monitor: {{}}\n')
    assert load_config(str(tmp_path / 'dotted.yaml')).callbacks['speed_monitor'] in ({}, None)
    for text, message in (
        ('replace: [optimizer]\noptimizer:\n  name: adamw\n', "'replace' in .* needs a 'base:' recipe"),
        (f'base: {parent}\nreplace: optimizer\n', "'replace' in .* must be a list of keys"),
        (f'base: {parent}\nreplace: [scheduler]\nrun_name: x\n', "'replace' in .* names 'scheduler', which the file does not set"),
    ):
        (tmp_path / 'bad.yaml').write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config(str(tmp_path / 'bad.yaml'))


def test_pt_base_matches_the_reference():
    cfg = load_config(str(REPO / 'yamls' / 'pt_base.yaml'))
    assert cfg.optimizer.name == 'adamwscale' and cfg.optimizer.lr == pytest.approx(2e-2)
    assert cfg.scheduler.name == 'cosine'
    assert cfg.scheduler.kwargs == {'t_warmup': '10000ba', 'final_lr': pytest.approx(1e-5)}
    assert cfg.max_duration == '65536ba' and cfg.global_train_batch_size == 128
    assert cfg.algorithms['gradient_clipping']['clipping_threshold'] == 1.0
    assert cfg.model.dropout_rate == 0.0 and cfg.precision == 'amp_bf16' and cfg.compile
    assert cfg.eval_subset_num_batches == 500 and cfg.seed == 2137
    assert (cfg.data.input_length, cfg.data.noise_density, cfg.data.mean_noise_span_length) == (512, 0.15, 3.0)


def test_dotted_overrides_and_variables():
    cfg = load_config(str(REPO / 'yamls' / 'pt_base.yaml'), ['optimizer.lr=0.01', 'run_name=x', 'variables.data_local=/data/c4'])
    assert cfg.optimizer.lr == 0.01
    assert cfg.run_name == 'x'
    assert cfg.save_folder == 'runs/x'  # ${run_name} follows the override
    assert cfg.data.local == '/data/c4'


def test_defaults_fill_in():
    cfg = _load()
    assert cfg.seed == 2137 and cfg.precision == 'fp32' and cfg.data.input_length == 512


@pytest.mark.parametrize(
    'overrides, expected',
    [
        (['optimzer.lr=0.1'], "Unknown key 'optimzer'. Did you mean 'optimizer'?"),
        (['max_durations=5ba'], "Did you mean 'max_duration'?"),
        (['data.input_lenght=256'], "Unknown key 'data.input_lenght'. Did you mean 'input_length'?"),
        (['model.d_modle=64'], "Unknown key 'model.d_modle'. Did you mean 'd_model'?"),
        (['tokenizer.nmae=x'], "Did you mean 'name'?"),
        (['global_train_batch_size=abc'], "'global_train_batch_size' must be an integer, got str 'abc'"),
        (['seed=1.5'], "'seed' must be an integer"),
        (['data.shuffle=maybe'], "'data.shuffle' must be true or false"),
        (['precision=bf16'], "'precision' must be one of 'fp32', 'amp_bf16', 'amp_fp16', got 'bf16'"),
        (['optimizer.lr=-1'], "'optimizer.lr' must be >= 0"),
        (['data.noise_density=1.5'], "'data.noise_density' must be in (0, 1)"),
        (['data.noise_density=0'], "'data.noise_density' must be in (0, 1)"),
        (['data.mean_noise_span_length=0.5'], "'data.mean_noise_span_length' must be >= 1"),
        (['data.input_length=2'], "'data.input_length' 2 is too small"),
        (['data.input_length=4096'], 'needs'),
        (['max_duration=abc'], "'max_duration' must be a duration like '1000ba'"),
        (['global_train_batch_size=0'], "'global_train_batch_size' must be positive"),
        (['device_train_microbatch_size=-2'], "'device_train_microbatch_size' must be positive"),
        (['autoresume=true'], "When setting 'autoresume: true' you must also set 'run_name' and 'save_folder'"),
        (['save_num_checkpoints_to_keep=0'], "'save_num_checkpoints_to_keep' must be -1"),
        (['data.local=null'], "Set 'data.local'"),
        (['data.builtin_corpus=python_docs'], "'tokenizer.name' must be null when 'data.builtin_corpus' is set"),
        (['data.builtin_corpus=wikipedia'], "'data.builtin_corpus' must be 'python_docs' | null, got str 'wikipedia'"),
        (['model.vocab_size=big'], "'model.vocab_size' must be"),
        (['model=3'], "'model' must be a mapping"),
        (['scheduler.name=cosine', 'scheduler.t_warmup=10ba'], "'scheduler.t_warmup' (10ba) must be shorter than 'max_duration' (10ba)"),
        (['scheduler.name=cosine', 'scheduler.t_warmup=5ba', 'scheduler.t_max=4ba'], "must be shorter than 'scheduler.t_max' (4ba)"),
    ],
)
def test_bad_values_name_the_key(overrides, expected):
    assert expected in _problems(overrides)


def test_missing_required_keys_are_listed():
    message = _problems(base={'tokenizer': {'name': 't'}, 'data': {'local': '/x'}})
    for key in ('max_duration', 'global_train_batch_size', 'optimizer'):
        assert f"Missing required key '{key}'" in message
    message = _problems(base={**MINIMAL, 'optimizer': {'name': 'adamw'}})
    assert "Missing required key 'optimizer.lr' (float)" in message


def test_all_problems_reported_together():
    message = _problems(['optimzer.lr=0.1', 'seed=x', 'data.shuffle=maybe'])
    assert '3 problem(s)' in message
    # Values are checked once the types are right; then every value problem is listed too.
    message = _problems(['optimizer.lr=-1', 'data.noise_density=2', 'global_train_batch_size=0'])
    assert '3 problem(s)' in message


def test_open_sections_collect_component_keys():
    cfg = _load(['optimizer.betas=[0.9,0.99]', 'scheduler.name=cosine', 'scheduler.t_warmup=5ba'])
    assert cfg.optimizer.kwargs == {'betas': [0.9, 0.99]}
    assert cfg.scheduler.kwargs == {'t_warmup': '5ba'}


def test_tilde_removes_a_key():
    cfg = load_config(str(REPO / 'yamls' / 'pt_base.yaml'), ['scheduler.name=inverse_sqrt', '~scheduler.t_warmup', '~scheduler.final_lr'])
    assert cfg.scheduler.name == 'inverse_sqrt' and cfg.scheduler.kwargs == {}
    assert "Cannot remove 'scheduler.nope'" in _problems(['~scheduler.nope'])


def test_malformed_override_and_missing_file():
    assert 'must look like key=value' in _problems(['optimizer.lr'])
    with pytest.raises(ConfigError, match='does not exist'):
        load_config('/no/such/recipe.yaml')


def test_redact_hides_secrets_only():
    cfg = {'loggers': {'wandb': {'api_key': 'abc', 'project': 'p'}}, 'tokenizer': {'name': 'x'}, 'hf_token': 't', 'password': None}
    out = redact(cfg)
    assert out['loggers']['wandb']['api_key'] == '****'
    assert out['loggers']['wandb']['project'] == 'p'
    assert out['tokenizer'] == {'name': 'x'}
    assert out['hf_token'] == '****'
