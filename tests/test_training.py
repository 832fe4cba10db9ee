"""End-to-end pre-training on CPU: tiny configs through the real Trainer, resume, first contact."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from t5composer.config import ConfigError, config_from_dict
from t5composer.data.span_spec import SpanCorruptionSpec
from t5composer.run.build import build_trainer
from t5composer.run.preflight import preflight

REPO = Path(__file__).resolve().parents[1]


def tiny(**top) -> dict:
    """A config small enough to train a few batches in seconds (builtin corpus, 2+2 layers)."""
    cfg = {
        'run_name': 'tiny',
        'seed': 5,
        'max_duration': '10ba',
        'global_train_batch_size': 4,
        'device_eval_batch_size': 8,
        'eval_interval': '5ba',
        'eval_subset_num_batches': 2,
        'progress_bar': False,
        'log_to_console': False,
        'python_log_level': None,
        'tokenizer': {'name': None},
        'model': {
            'name': 'google/t5-v1_1-small', 'vocab_size': 'tokenizer', 'd_model': 32, 'd_kv': 8, 'd_ff': 64,
            'num_heads': 4, 'num_layers': 2, 'num_decoder_layers': 2, 'dropout_rate': 0.0, 'lm_head_init_std': 0.2,
        },
        'data': {'builtin_corpus': 'python_docs', 'builtin_vocab_size': 500, 'input_length': 64, 'num_workers': 0},
        'optimizer': {'name': 'adamwscale', 'lr': 1e-2},
        'scheduler': {'name': 'cosine', 't_warmup': '3ba', 'final_lr': 1e-4},
        'algorithms': {'gradient_clipping': {'clipping_type': 'norm', 'clipping_threshold': 1.0}},
    }
    cfg.update(top)
    return cfg


def _snapshot(trainer) -> tuple[dict, dict]:
    model = {k: v.detach().clone() for k, v in trainer.state.model.state_dict().items()}
    optim = trainer.state.optimizers[0].state_dict()
    return model, optim


def _assert_same_optimizer_state(a: dict, b: dict) -> None:
    assert a['state'].keys() == b['state'].keys()
    for key in a['state']:
        for name, value in a['state'][key].items():
            other = b['state'][key][name]
            if torch.is_tensor(value):
                assert torch.equal(value, other), (key, name)
            else:
                assert value == other, (key, name)
    assert [g['lr'] for g in a['param_groups']] == [g['lr'] for g in b['param_groups']]


@pytest.mark.slow
def test_resume_after_6_batches_equals_uninterrupted_10(tmp_path):
    full = build_trainer(config_from_dict(tiny(save_folder=str(tmp_path / 'full'), save_interval='2ba')))
    full.fit()
    full_model, full_optim = _snapshot(full)
    full.close()

    # fit(duration=...) moves max_duration to 6ba for the first session; pin the schedule's
    # length so both runs follow the same 10-batch cosine, as a killed run would.
    resumable = tiny(run_name='part', save_folder=str(tmp_path / 'part'), save_interval='2ba', autoresume=True,
                     scheduler={'name': 'cosine', 't_warmup': '3ba', 'final_lr': 1e-4, 't_max': '10ba'})
    first = build_trainer(config_from_dict(resumable))
    first.fit(duration='6ba')
    assert int(first.state.timestamp.batch) == 6
    first.close()
    del first

    second = build_trainer(config_from_dict(resumable))
    assert int(second.state.timestamp.batch) == 6  # autoresume picked up the checkpoint
    second.fit()
    assert int(second.state.timestamp.batch) == 10
    part_model, part_optim = _snapshot(second)
    second.close()

    assert full_model.keys() == part_model.keys()
    for name in full_model:
        assert torch.equal(full_model[name], part_model[name]), name
    _assert_same_optimizer_state(full_optim, part_optim)


@pytest.mark.slow
def test_training_reduces_loss_and_eval_masks_are_fixed(tmp_path):
    trainer = build_trainer(config_from_dict(tiny(max_duration='30ba', eval_interval='30ba')))
    trainer.eval()
    before = float(trainer.state.eval_metrics['eval']['LanguageNLL'].compute())
    trainer.eval()
    again = float(trainer.state.eval_metrics['eval']['LanguageNLL'].compute())
    assert before == again  # same eval masks every time
    trainer.fit()
    after = float(trainer.state.eval_metrics['eval']['LanguageNLL'].compute())
    trainer.close()
    assert after < 0.85 * before


@pytest.mark.slow
def test_nanot5_log_line(tmp_path):
    from t5composer.callbacks.nanot5_log import NanoT5Log

    stream = io.StringIO()
    trainer = build_trainer(config_from_dict(tiny(max_duration='4ba', eval_interval='4ba')), extra_callbacks=(NanoT5Log(interval=2, stream=stream),))
    trainer.fit()
    trainer.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    pattern = (r'^\[train\] Step (\d+) out of 4 \| Loss --> [\d.]+ \| Grad_l2 --> [\d.]+ \| '
               r'Weights_l2 --> [\d.]+ \| Lr --> [\d.]+ \| Seconds_per_step --> [\d.]+ \|$')
    steps = [int(re.match(pattern, line).group(1)) for line in lines]
    assert steps == [2, 4]
    grad = float(re.search(r'Grad_l2 --> ([\d.]+)', lines[0]).group(1))
    assert grad > 0


def test_preflight_names_every_first_contact_problem(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setenv('WORLD_SIZE', '3')
    cfg = config_from_dict({
        'max_duration': '10ba', 'global_train_batch_size': 8, 'precision': 'amp_bf16',
        'tokenizer': {'name': 'google/t5-v1_1-base'}, 'data': {'local': str(tmp_path / 'c4')},
        'optimizer': {'name': 'adamwscale', 'lr': 0.01},
    })
    with pytest.raises(ConfigError) as info:
        preflight(cfg)
    message = str(info.value)
    assert "precision 'amp_bf16' is not supported on CPU; set precision=fp32" in message
    assert 'global_train_batch_size 8 is not divisible by the number of processes (3)' in message
    assert f'python recipes/convert_c4.py --source allenai/c4 --out_root {tmp_path / "c4"} --splits train val' in message


def test_command_line_runs_preflight_once(tmp_path, monkeypatch):
    # train_main checks before its heavy imports; build_trainer must not repeat the checks (a
    # data.remote probe, a dummy optimizer) for it, but still runs them for library callers.
    import yaml
    from composer.utils import dist

    import t5composer.run.build as build
    import t5composer.run.preflight as checks
    from t5composer.cli import train_main

    calls = []
    real = checks.preflight
    spy = lambda cfg, **kw: calls.append(kw) or real(cfg, **kw)  # noqa: E731
    monkeypatch.setattr(checks, 'preflight', spy)  # the command line's
    monkeypatch.setattr(build, 'preflight', spy)  # build_trainer's

    def stop(*args, **kwargs):  # build_trainer's next step after its preflight
        raise ConfigError(['stopped after the checks'])

    monkeypatch.setattr(dist, 'initialize_dist', stop)
    recipe = tmp_path / 'tiny.yaml'
    recipe.write_text(yaml.safe_dump(tiny(save_folder=str(tmp_path / 'run'))))
    assert train_main([str(recipe)]) == 2
    assert len(calls) == 1
    calls.clear()
    with pytest.raises(ConfigError, match='stopped after the checks'):
        build_trainer(config_from_dict(tiny()))
    assert len(calls) == 1


def test_one_message_names_a_misspelt_option_and_a_warmup_longer_than_the_run(tmp_path, monkeypatch, capsys):
    # composer recipes/train.py yamls/demo.yaml optimizer.lrr=0.1 max_duration=1ba: the config's values,
    # the optimizer's options and the rest of preflight are checked in one pass, so both show at once.
    from t5composer.cli import train_main

    monkeypatch.chdir(tmp_path)  # the demo's save folder is relative; nothing may be created for a config that fails
    assert train_main([str(REPO / 'yamls' / 'demo.yaml'), 'optimizer.lrr=0.1', 'max_duration=1ba']) == 2
    message = capsys.readouterr().err
    assert message.startswith('error: Invalid config (2 problem(s)):\n'), message
    assert "'scheduler.t_warmup' (40ba) must be shorter than 'max_duration' (1ba); lower t_warmup or train longer." in message
    assert "Unknown key 'optimizer.lrr'. Did you mean 'lr'? Valid keys here: betas, compiled, eps, fused, lr, name, sharded_params, " \
           "weight_decay (options of 'adamwscale')." in message
    assert not (tmp_path / 'runs').exists()


def test_a_bad_weight_decay_is_named_once(tmp_path, monkeypatch, capsys):
    # The value check names weight_decay; the optimizer's trial build, which refuses it before
    # anything else, would only repeat it (its name and option names are still checked).
    from t5composer.cli import train_main

    monkeypatch.chdir(tmp_path)
    assert train_main([str(REPO / 'yamls' / 'demo.yaml'), 'optimizer.weight_decay=-1']) == 2
    message = capsys.readouterr().err
    assert message.startswith('error: Invalid config (1 problem(s)):\n'), message
    assert "'optimizer.weight_decay' must be >= 0, got -1.0; 0.0 turns weight decay off." in message


def test_a_bad_lr_and_warmup_are_named_once(tmp_path, monkeypatch, capsys):
    # The value checks name both; the schedule's trial build (base_lr, t_warmup) would only repeat them.
    from t5composer.cli import train_main

    monkeypatch.chdir(tmp_path)
    assert train_main([str(REPO / 'yamls' / 'demo.yaml'), 'optimizer.lr=-1', 'scheduler.t_warmup=abc']) == 2
    message = capsys.readouterr().err
    assert message.startswith('error: Invalid config (2 problem(s)):\n'), message
    assert "'optimizer.lr' must be >= 0, got -1.0" in message and "'scheduler.t_warmup' must be a duration" in message
    assert 'refuses its settings' not in message
    # A misspelt schedule option is still found in the same pass.
    assert train_main([str(REPO / 'yamls' / 'demo.yaml'), 'optimizer.lr=-1', 'scheduler.final_lrr=0.1']) == 2
    assert "Did you mean 'final_lr'?" in capsys.readouterr().err


@pytest.mark.parametrize('micro, expected', [(3, 'must divide the per-device batch 8'), ('auto', "'auto' needs a GPU")])
def test_preflight_microbatch(micro, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.delenv('WORLD_SIZE', raising=False)
    cfg = config_from_dict(tiny(global_train_batch_size=8, device_train_microbatch_size=micro))
    with pytest.raises(ConfigError, match=re.escape(expected)):
        preflight(cfg)


def test_microbatch_above_the_device_batch_runs_the_device_batch_as_one(monkeypatch):
    # pt_base (batch 128, microbatch 128) launched on 8 GPUs: 16 rows each, one microbatch of 16.
    from t5composer.config.batches import batch_sizes

    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setenv('WORLD_SIZE', '8')
    cfg = config_from_dict(tiny(global_train_batch_size=128, device_train_microbatch_size=128, device_eval_batch_size=None))
    preflight(cfg)  # no problem reported
    assert batch_sizes(cfg, 8) == (16, 16, 16)
    assert batch_sizes(cfg, 1) == (128, 128, 128)


def test_first_contact_without_data_is_fast_and_gives_the_command(tmp_path):
    env = {**os.environ, 'CUDA_VISIBLE_DEVICES': ''}
    out = subprocess.run(
        [sys.executable, str(REPO / 'recipes' / 'train.py'), str(REPO / 'yamls' / 'pt_base.yaml'), 'precision=fp32'],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2
    assert 'No converted data for split(s) train, val' in out.stderr
    assert 'python recipes/convert_c4.py --source allenai/c4 --out_root data/c4 --splits train val' in out.stderr
    assert 'Traceback' not in out.stderr


def test_data_converted_for_another_length_is_refused():
    # The builtin corpus is converted for input_length 64 under one directory; point a
    # config with another length at that same directory.
    from t5composer.data.plan import plan_data

    plan = plan_data(config_from_dict(tiny()))
    cfg = config_from_dict(tiny(tokenizer={'name': plan.tokenizer_name},
                                data={'local': plan.local, 'input_length': 128, 'num_workers': 0}))
    with pytest.raises(ConfigError, match='expanded_length'):
        build_trainer(cfg)


@pytest.mark.slow
def test_demo_recipe_end_to_end(tmp_path):
    """The README's demos: pre-training (eval loss ends >= 30% below the first eval, checkpoints,
    resumes), then fine-tuning its checkpoint on generated SNI-format tasks."""
    env = {**os.environ, 'CUDA_VISIBLE_DEVICES': '', 'PYTHONUNBUFFERED': '1'}
    composer = Path(sys.executable).with_name('composer')
    cmd = [str(composer), str(REPO / 'recipes' / 'train.py'), str(REPO / 'yamls' / 'demo.yaml')]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    nll = [float(x) for x in re.findall(r'metrics/eval/LanguageNLL: ([\d.]+)', out.stdout + out.stderr)]
    assert len(nll) >= 2
    assert nll[-1] <= 0.7 * nll[0], nll
    assert '[train] Step 400 out of 400' in out.stdout
    checkpoints = sorted(p.name for p in (tmp_path / 'runs' / 'demo').iterdir())
    assert 'latest-rank0.pt' in checkpoints and len(checkpoints) >= 2

    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Run 'demo' is already complete (400ba)" in again.stdout

    # The README's fine-tuning demo continues from this checkpoint.
    ft_cmd = [str(composer), str(REPO / 'recipes' / 'train.py'), str(REPO / 'yamls' / 'demo_ft.yaml')]
    ft = subprocess.run(ft_cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert ft.returncode == 0, ft.stdout[-3000:] + ft.stderr[-3000:]
    rouge = [float(x) for x in re.findall(r'metrics/sni/RougeL: ([\d.]+)', ft.stdout + ft.stderr)]
    assert len(rouge) == 3 and rouge[-1] > rouge[0], rouge  # before, mid-way and after fine-tuning
    run = tmp_path / 'runs' / 'demo_ft'
    assert (run / 'predictions' / 'sni-ba300.jsonl').exists()
    from transformers import T5ForConditionalGeneration

    exported = T5ForConditionalGeneration.from_pretrained(run / 'hf' / 'final')
    assert exported.config.d_model == 128


@pytest.mark.slow
def test_pretrain_on_real_c4_sample_with_real_t5_tokenizer(tmp_path):
    """Real data when ../shared/data is present: convert the C4 sample, train and evaluate."""
    from conftest import shared_data

    from t5composer.data.c4_convert import convert_c4

    c4 = shared_data('c4_sample')
    spiece = shared_data('tokenizer', 't5', 'spiece.model')
    convert_c4(source=str(c4), out_root=str(tmp_path / 'c4'), splits=('train', 'val'), tokenizer=str(spiece),
               spec=SpanCorruptionSpec(input_length=128), progress=False)
    cfg = config_from_dict(tiny(
        max_duration='6ba', eval_interval='6ba',
        tokenizer={'name': str(spiece)},
        model={**tiny()['model'], 'vocab_size': None},  # the preset's 32128 covers 32100 tokens
        data={'local': str(tmp_path / 'c4'), 'input_length': 128, 'num_workers': 0},
    ))
    trainer = build_trainer(cfg)
    trainer.eval()
    before = float(trainer.state.eval_metrics['eval']['LanguageNLL'].compute())
    trainer.fit()
    after = float(trainer.state.eval_metrics['eval']['LanguageNLL'].compute())
    trainer.close()
    assert trainer.state.model.model.config.vocab_size == 32128
    assert after < before


@pytest.mark.slow
def test_load_path_weights_only_starts_a_fresh_run_from_the_weights(tmp_path):
    source = build_trainer(config_from_dict(tiny(max_duration='4ba', save_folder=str(tmp_path / 'src'), save_interval='4ba')))
    source.fit()
    weights, _ = _snapshot(source)
    source.close()
    checkpoint = tmp_path / 'src' / 'latest-rank0.pt'
    assert checkpoint.exists()

    warm = build_trainer(config_from_dict(tiny(load_path=str(checkpoint), load_weights_only=True)))
    assert int(warm.state.timestamp.batch) == 0  # schedule and data start over
    loaded, optim = _snapshot(warm)
    assert all(torch.equal(weights[k], loaded[k]) for k in weights)
    assert optim['state'] == {}  # a fresh optimizer
    warm.close()


def test_missing_load_path_is_named(tmp_path):
    trainer_cfg = config_from_dict(tiny(load_path=str(tmp_path / 'nope.pt')))
    with pytest.raises(Exception, match='nope.pt'):
        build_trainer(trainer_cfg)
