"""Fine-tuning on SNI-format tasks end to end: the three starting points, eval, predictions, export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from t5composer.config import ConfigError, config_from_dict
from t5composer.data.plan import plan_data
from t5composer.run.build import build_trainer
from test_training import tiny

REPO = Path(__file__).resolve().parents[1]


def _demo_tokenizer() -> str:
    # The tiny pre-training config's builtin corpus brings a small tokenizer.
    return plan_data(config_from_dict(tiny())).tokenizer_name


def ft(**top) -> dict:
    """A fine-tuning config small enough for a few CPU batches: synthetic SNI tasks."""
    cfg = tiny(
        max_duration='6ba', eval_interval='6ba', eval_subset_num_batches=1, device_eval_batch_size=8,
        tokenizer={'name': _demo_tokenizer()},
        data={'name': 'sni', 'builtin_tasks': 'synthetic', 'max_instances_per_task': 8, 'max_source_length': 96,
              'max_target_length': 16, 'max_new_tokens': 6},
        scheduler={'name': 'constant'},
    )
    cfg.update(top)
    return cfg


@pytest.mark.slow
def test_random_init_fine_tune_writes_predictions_and_scores(tmp_path):
    trainer = build_trainer(config_from_dict(ft(save_folder=str(tmp_path / 'run'))))
    trainer.fit()
    metrics = trainer.state.eval_metrics['sni']
    assert set(metrics) == {'LanguageNLL', 'TokenAccuracy', 'RougeL', 'ExactMatch'}
    rouge = float(metrics['RougeL'].compute())
    trainer.close()
    assert 0.0 <= rouge <= 100.0
    rows = [json.loads(line) for line in (tmp_path / 'run' / 'predictions' / 'sni-ba6.jsonl').read_text().splitlines()]
    assert len(rows) == 8  # one eval batch of 8
    assert set(rows[0]) == {'task', 'id', 'source', 'prediction', 'references', 'rougeL'}
    assert rows[0]['source'].endswith('Output: ')
    scores = json.loads((tmp_path / 'run' / 'predictions' / 'sni-ba6-scores.json').read_text())
    assert scores['RougeL'] == pytest.approx(rouge, abs=1e-4)
    assert scores['RougeL_per_task'] and scores['RougeL_per_category']


@pytest.mark.slow
def test_fine_tune_with_a_mode_token_trains_evaluates_and_exports_it(tmp_path):
    from t5composer.models.hf_interchange import export_composer_checkpoint
    from t5composer.tokenization import MODE_TOKENS, load_tokenizer

    base = load_tokenizer(_demo_tokenizer())
    cfg = ft(data={**ft()['data'], 'mode_token': '[S2S]'}, save_folder=str(tmp_path / 'run'), save_interval='6ba')
    trainer = build_trainer(config_from_dict(cfg))
    s2s = len(base) + 2  # after the sentinels and [NLU], [NLG]
    loaders = [trainer.state.train_dataloader] + [e.dataloader.dataloader for e in trainer.state.evaluators]
    for loader in loaders:
        batch = next(iter(loader))
        assert loader.dataset.mode_token_id == s2s and (batch['input_ids'][:, 0] == s2s).all()
        assert (batch['attention_mask'].sum(1) <= 96).all()
    trainer.fit()
    rouge = float(trainer.state.eval_metrics['sni']['RougeL'].compute())
    trainer.close()
    assert 0.0 <= rouge <= 100.0
    rows = [json.loads(line) for line in (tmp_path / 'run' / 'predictions' / 'sni-ba6.jsonl').read_text().splitlines()]
    assert len(rows) == 8 and not any('[S2S]' in r['prediction'] for r in rows)
    # The checkpoint carries the tokenizer the run used, mode tokens included; the export keeps their ids.
    out = export_composer_checkpoint(tmp_path / 'run' / 'latest-rank0.pt', tmp_path / 'hf')
    exported = load_tokenizer(out)
    assert exported.convert_tokens_to_ids(list(MODE_TOKENS)) == [s2s - 2, s2s - 1, s2s] and len(exported) == len(base) + 3
    assert exported('[S2S] x', add_special_tokens=False).input_ids[0] == s2s
    # Evaluating the checkpoint with its own tokenizer (which has the tokens already) prompts the same way.
    evaluation = build_trainer(config_from_dict({**cfg, 'tokenizer': {'name': None}, 'model': {'init': 'checkpoint'},
                                                 'load_path': str(tmp_path / 'run' / 'latest-rank0.pt')}), train=False,
                               predictions_folder=str(tmp_path / 'eval'))
    loader = evaluation.state.evaluators[0].dataloader.dataloader
    assert loader.dataset.mode_token_id == s2s and (next(iter(loader))['input_ids'][:, 0] == s2s).all()
    evaluation.eval()
    evaluation.close()
    assert (tmp_path / 'eval' / 'predictions' / 'sni-ba0.jsonl').exists()


@pytest.mark.slow
def test_fine_tune_from_a_pretraining_checkpoint_takes_its_weights_and_tokenizer(tmp_path):
    pre = build_trainer(config_from_dict(tiny(max_duration='4ba', save_folder=str(tmp_path / 'pt'), save_interval='4ba')))
    pre.fit()
    weights = {k: v.detach().clone() for k, v in pre.state.model.state_dict().items()}
    pre.close()

    cfg = ft(tokenizer={'name': None}, model={'init': 'checkpoint'}, load_path=str(tmp_path / 'pt' / 'latest-rank0.pt'),
             save_folder=str(tmp_path / 'ft'))
    trainer = build_trainer(config_from_dict(cfg))
    loaded = trainer.state.model.state_dict()
    assert all(torch.equal(weights[k], loaded[k]) for k in weights)
    assert int(trainer.state.timestamp.batch) == 0
    trainer.fit(duration='2ba')
    trainer.close()


@pytest.mark.slow
def test_fine_tune_from_hugging_face_weights(tmp_path):
    from t5composer.models import build_composer_t5, export_hf, load_model_config
    from t5composer.tokenization import load_tokenizer

    tokenizer = load_tokenizer(_demo_tokenizer())
    config = load_model_config('google/t5-v1_1-small', vocab_size=640, d_model=32, d_kv=8, d_ff=64, num_heads=4,
                               num_layers=2, num_decoder_layers=2)
    source = build_composer_t5(config=config, lm_head_init_std=0.2)
    export_hf(model=source, out_dir=tmp_path / 'hf', tokenizer=tokenizer)

    cfg = ft(model={'name': str(tmp_path / 'hf'), 'init': 'hf', 'dropout_rate': 0.0}, tokenizer={'name': str(tmp_path / 'hf')})
    trainer = build_trainer(config_from_dict(cfg))
    loaded = trainer.state.model.model.state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in source.model.state_dict().items())
    trainer.close()


def test_hf_init_refuses_architecture_overrides():
    with pytest.raises(ConfigError, match=r"'model.init: hf' takes the architecture from the weights; remove the model overrides model.d_model"):
        config_from_dict(ft(model={'name': 'x', 'init': 'hf', 'd_model': 64}))


def test_checkpoint_init_needs_load_path():
    with pytest.raises(ConfigError, match="When setting 'model.init: checkpoint' you must also set 'load_path'"):
        config_from_dict(ft(model={'init': 'checkpoint'}))


def test_sni_root_that_is_not_a_checkout_is_named(tmp_path):
    from t5composer.run.preflight import preflight

    cfg = config_from_dict(ft(data={'name': 'sni', 'root': str(tmp_path)}))
    with pytest.raises(ConfigError, match=r'is not a natural-instructions checkout: it needs tasks/<task>.json'):
        preflight(cfg)


@pytest.mark.slow
def test_evaluate_recipe_reports_rouge_beside_the_checkpoint(tmp_path):
    trainer = build_trainer(config_from_dict(ft(max_duration='2ba', save_folder=str(tmp_path / 'run'), save_interval='2ba',
                                                 data={**ft()['data'], 'eval': False})))
    trainer.fit()
    trainer.close()
    checkpoint = tmp_path / 'run' / 'latest-rank0.pt'
    overrides = [f'tokenizer.name={_demo_tokenizer()}', f'load_path={checkpoint}', 'eval_subset_num_batches=1',
                 'device_eval_batch_size=4', 'data.max_new_tokens=4', 'data.max_instances_per_task=4']
    yaml = tmp_path / 'ft.yaml'
    yaml.write_text(json.dumps({k: v for k, v in ft().items() if k != 'tokenizer'}))
    env = {**os.environ, 'CUDA_VISIBLE_DEVICES': ''}
    out = subprocess.run([sys.executable, str(REPO / 'recipes' / 'evaluate.py'), str(yaml), *overrides],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'sni/RougeL:' in out.stdout and 'sni/ExactMatch:' in out.stdout
    assert (tmp_path / 'run' / 'predictions' / 'sni-ba0.jsonl').exists()


@pytest.mark.slow
def test_fine_tune_on_the_real_sni_sample(tmp_path):
    """Real SNI task files and split lists with the real T5 tokenizer (skips without ../shared)."""
    from conftest import shared_data

    root = shared_data('sni_sample')
    spiece = shared_data('tokenizer', 't5', 'spiece.model')
    cfg = ft(tokenizer={'name': str(spiece)}, model={**tiny()['model'], 'vocab_size': None},
             data={'name': 'sni', 'root': str(root), 'split_name': 'sample', 'max_instances_per_task': 4, 'max_new_tokens': 4},
             max_duration='2ba', eval_interval='2ba', save_folder=str(tmp_path / 'run'))
    trainer = build_trainer(config_from_dict(cfg))
    trainer.fit()
    trainer.close()
    rows = [json.loads(line) for line in (tmp_path / 'run' / 'predictions' / 'sni-ba2.jsonl').read_text().splitlines()]
    assert rows and all(r['task'].startswith('task') for r in rows)
