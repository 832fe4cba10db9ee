"""The FSDP recipes (pt_large, pt_xl): validation of parallelism_config, --dry-run, the wrap policy.

FSDP needs GPUs, so on CPU the recipes are checked by their dry run (model on the meta device),
and the wrap / checkpoint policy by a real FULL_SHARD step over two gloo processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest
import torch

from t5composer.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
T5_TOKENIZER = REPO.parent / 'shared' / 'data' / 'tokenizer' / 't5'


def _tokenizer_override() -> list[str]:
    # The real T5 tokenizer when the shared data is there; otherwise the dry run notes that the
    # hub tokenizer was not loaded (HF_HUB_OFFLINE keeps that fast).
    return [f'tokenizer.name={T5_TOKENIZER}'] if T5_TOKENIZER.is_dir() else []


def test_fsdp_keys_and_values_match_the_installed_composer():
    from composer.distributed.mosaic_parallelism import BACKWARD_PREFETCH_MAP, SHARDING_MAP, get_mixed_precision
    from composer.utils.parallelism import FSDPConfig

    from t5composer.config.parallelism import BACKWARD_PREFETCHES, FSDP_KEYS, MIXED_PRECISIONS, SHARDING_STRATEGIES

    hints = {k: v for k, v in typing.get_type_hints(FSDPConfig).items() if not k.startswith('_')}
    kinds = {bool: 'bool', int: 'int', str: 'str', typing.Optional[int]: 'optional_int', typing.Optional[typing.Any]: 'any'}
    assert FSDP_KEYS == {k: kinds[v] for k, v in hints.items()}
    assert set(SHARDING_STRATEGIES) == set(SHARDING_MAP)
    assert set(BACKWARD_PREFETCHES) == set(BACKWARD_PREFETCH_MAP)
    for name in MIXED_PRECISIONS:
        get_mixed_precision('amp_bf16', mixed_precision=name)
    with pytest.raises(ValueError):
        get_mixed_precision('amp_bf16', mixed_precision='HALF')


@pytest.mark.parametrize('overrides, expected', [
    (['parallelism_config.fsdp.sharding_stratgy=FULL_SHARD'], "Unknown key 'parallelism_config.fsdp.sharding_stratgy'. Did you mean 'sharding_strategy'?"),
    (['parallelism_config.fdsp.sharding_strategy=FULL_SHARD'], "Unknown key 'parallelism_config.fdsp'. Did you mean 'fsdp'?"),
    (['parallelism_config.fsdp.sharding_strategy=FULL_SHRAD'], "must be one of FULL_SHARD, SHARD_GRAD_OP, NO_SHARD, HYBRID_SHARD, got 'FULL_SHRAD'. Did you mean 'FULL_SHARD'?"),
    (['parallelism_config.fsdp.mixed_precision=HALF'], "'parallelism_config.fsdp.mixed_precision' must be one of DEFAULT, PURE, FULL, got 'HALF'"),
    (['parallelism_config.fsdp.state_dict_type=sharded'], 'set state_dict_type: full'),
    (['parallelism_config.fsdp.limit_all_gathers=3'], "'parallelism_config.fsdp.limit_all_gathers' must be true or false, got 3."),
    (['model.gradient_checkpointing=true'], "When setting 'parallelism_config.fsdp.activation_checkpointing: true' you must set 'model.gradient_checkpointing: false'"),
    (['optimizer.name=adafactor', 'optimizer.lr=0.01', '~optimizer.weight_decay'],
     "optimizer 'adafactor' cannot be combined with 'parallelism_config.fsdp'"),
])
def test_bad_fsdp_settings_are_named(overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_config(str(REPO / 'yamls' / 'pt_xl.yaml'), overrides)
    assert expected in str(info.value)


def test_recipes_inherit_pt_base_and_configure_fsdp():
    base = load_config(str(REPO / 'yamls' / 'pt_base.yaml'))
    for name, model in (('pt_large', 'google/t5-v1_1-large'), ('pt_xl', 'google/t5-v1_1-xl')):
        cfg = load_config(str(REPO / 'yamls' / f'{name}.yaml'))
        assert cfg.model.name == model and cfg.run_name == name and cfg.save_folder == f'runs/{name}'
        assert (cfg.optimizer, cfg.scheduler, cfg.max_duration, cfg.global_train_batch_size) == \
               (base.optimizer, base.scheduler, base.max_duration, base.global_train_batch_size)
        fsdp = cfg.parallelism_config.fsdp
        assert fsdp['sharding_strategy'] == 'FULL_SHARD' and fsdp['activation_checkpointing'] is True
        assert fsdp['activation_checkpointing_reentrant'] is False and fsdp['state_dict_type'] == 'full'
        assert not cfg.model.gradient_checkpointing


def test_wrap_and_checkpoint_policies_select_the_t5_blocks():
    from t5composer.dry_run import fsdp_plan
    from t5composer.models import build_composer_t5, load_model_config
    from t5composer.models.t5 import T5Block

    with torch.device('meta'):
        model = build_composer_t5(config=load_model_config('google/t5-v1_1-xl'))
    plan = fsdp_plan(model)
    blocks = [name for name, m in model.named_modules() if isinstance(m, T5Block)]
    assert len(blocks) == 48
    assert plan.roots == ['model']
    assert plan.checkpointed == blocks  # every block, and nothing else
    # Every block but the first of each stack, which owns the position bias the stack uses
    # outside the blocks (tests/drivers/fsdp_cpu.py trains through this policy for real).
    assert plan.units == [b for b in blocks if not b.endswith('.block.0')]
    assert sum(plan.unit_params.values()) == model.model.num_parameters() == 2_849_757_184


def test_fsdp_units_give_the_gradients_and_adamwscale_step_of_the_unwrapped_model():
    env = {**os.environ, 'CUDA_VISIBLE_DEVICES': '', 'PYTHONWARNINGS': 'ignore'}
    out = subprocess.run([sys.executable, str(REPO / 'tests' / 'drivers' / 'fsdp_cpu.py')], env=env,
                         capture_output=True, text=True, timeout=180)
    ranks = [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{')]
    assert out.returncode == 0 and len(ranks) == 2, out.stdout[-2000:] + out.stderr[-3000:]
    for r in ranks:
        assert 'error' not in r, r
        assert r['compared'] == r['parameters']
        assert r['max_grad_diff'] < 1e-5, r
        # The step of 1e-2 x RMS per weight matches when the RMS is the whole tensor's, not when a
        # shard's; the compiled step and our fused kernel on shards too; a flagged step moves nothing.
        assert r['max_step_diff_sharded_rms'] < 1e-6 < 1e-4 < r['max_step_diff_shard_local_rms'], r
        assert r['max_step_diff_sharded_rms_compiled'] < 1e-6 and r['max_change_flagged_step'] == 0.0, r
        assert r['max_step_diff_sharded_rms_fused'] < 1e-6 and r['max_change_flagged_step_fused'] == 0.0, r
        # The step's gradient norm (clipping, the guard, nanot5_log's Grad_l2) and Weights_l2 over
        # shards: the whole model's, not this rank's part; clipping with it is FSDP's clip_grad_norm_.
        assert r['copies'] == 1 and r['grad_l2_diff'] < 1e-4 and r['weights_l2_diff'] < 1e-3, r
        assert r['grad_l2_local_diff'] > 1e-2, r
        assert r['clipped'] and r['clip_norm_diff'] < 1e-5 and r['clip_grad_diff'] < 1e-9, r  # norm ~10: float rounding
        assert r['fsdp_units'] == 5 and r['checkpointed'] == 6  # root + blocks 1-2 of each stack; all 6 blocks


def test_xl_dry_run_through_recipes_train_py(tmp_path):
    env = {**os.environ, 'CUDA_VISIBLE_DEVICES': '', 'HF_HUB_OFFLINE': '1'}
    env.pop('WORLD_SIZE', None)
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, str(REPO / 'recipes' / 'train.py'), str(REPO / 'yamls' / 'pt_xl.yaml'), '--dry-run', *_tokenizer_override()],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    seconds = time.monotonic() - start
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert 'google/t5-v1_1-xl: 2,849,757,184 parameters' in text
    assert 'for 8 GPU(s) (an FSDP recipe: one node' in text and 'global 128 = 8 GPU(s) x 16; microbatch 16, no gradient accumulation' in text
    assert 'FULL_SHARD over 8 GPU(s)' in text
    assert 'wrap units: 46 T5Block (23 encoder, 23 decoder)' in text
    assert 'activation checkpointing of 48 T5Block (24 encoder, 24 decoder) (non-reentrant)' in text
    # 2,849,757,184 x 4 bytes / 8 GPUs = 1.33 GiB each of weights and gradients, 2.65 GiB of Adam state.
    assert 'params 1.33 GiB + grads 1.33 GiB + optimizer 2.65 GiB (fp32, sharded 8 ways) = 5.31 GiB' in text
    assert 'runs/pt_xl every 5000ba, keep 3, ~34.2 GB each' in text
    assert 'python recipes/convert_c4.py' in text  # missing data is a note with the command, not an error
    assert 'Dry run OK' in text and 'Traceback' not in out.stderr
    assert not (tmp_path / 'runs').exists()
    assert seconds < 60, seconds


def test_large_dry_run_flags_anywhere_and_gpu_count(capsys, monkeypatch):
    from t5composer.cli import train_main

    monkeypatch.delenv('WORLD_SIZE', raising=False)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    code = train_main(['--dry_run', str(REPO / 'yamls' / 'pt_large.yaml'), '--dry-run-gpus', '4', *_tokenizer_override()])
    text = capsys.readouterr().out
    assert code == 0, text
    assert 'google/t5-v1_1-large: 783,150,080 parameters' in text
    assert 'for 4 GPU(s) (--dry-run-gpus)' in text
    assert 'global 128 = 4 GPU(s) x 32; microbatch 16, 2 microbatches per step (gradient accumulation)' in text
    assert 'wrap units: 46 T5Block (23 encoder, 23 decoder)' in text and 'FULL_SHARD over 4 GPU(s)' in text
    assert 'params 0.73 GiB + grads 0.73 GiB + optimizer 1.46 GiB' in text  # 783,150,080 x 4 / 4 GPUs


def test_real_run_with_fsdp_on_cpu_stops_in_preflight(capsys, monkeypatch):
    from t5composer.cli import train_main

    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.delenv('WORLD_SIZE', raising=False)
    code = train_main([str(REPO / 'yamls' / 'pt_xl.yaml'), 'precision=fp32'])
    err = capsys.readouterr().err
    assert code == 2
    assert "'parallelism_config.fsdp' is set, but FSDP needs CUDA GPUs and this machine has none" in err
    assert 'add --dry-run' in err and '~parallelism_config' in err
    assert 'Traceback' not in err


def test_dry_run_gpus_needs_a_number(capsys):
    from t5composer.cli import train_main

    assert train_main([str(REPO / 'yamls' / 'pt_xl.yaml'), '--dry-run-gpus']) == 2
    assert '--dry-run-gpus needs a positive number of GPUs' in capsys.readouterr().err


def test_dry_run_plans_one_node_for_fsdp_recipes_and_one_gpu_otherwise():
    from t5composer.dry_run import target_gpus

    assert target_gpus(None, {}, sharded=True) == (8, 'an FSDP recipe: one node; --dry-run-gpus N for another count')
    assert target_gpus(None, {}, sharded=False)[0] == 1  # pt_base as written: its microbatch is its batch
    assert target_gpus(None, {'WORLD_SIZE': '4'}, sharded=False) == (4, 'WORLD_SIZE')
    assert target_gpus(2, {'WORLD_SIZE': '4'}, sharded=True) == (2, '--dry-run-gpus')
