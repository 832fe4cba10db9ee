"""Pre-training with a mixture of denoisers (``data.objective``) through the real Trainer on CPU.

The denoisers themselves (exact reconstruction, rates, spans, mode tokens, shapes) are tested in
tests/test_objectives.py; here: the config section, the tokenizer's mode tokens, the batches the
Trainer sees, token-weighted microbatches, and exact resumption.
"""

from __future__ import annotations

import pytest
import torch
from composer.core import Callback, Event
from composer.loggers import InMemoryLogger

from t5composer.config import ConfigError, config_from_dict
from t5composer.data.objectives import Objective
from t5composer.run.build import build_trainer
from t5composer.run.plan import plan_run
from t5composer.tokenization import MODE_TOKENS
from test_training import REPO, _assert_same_optimizer_state, _snapshot, tiny

pytestmark = pytest.mark.usefixtures('one_thread')


def ul2(objective=None, **top) -> dict:
    cfg = tiny(**top)
    cfg['data'] = {**cfg['data'], 'objective': objective or {'preset': 'ul2'}}
    return cfg


class _Batches(Callback):
    """Keeps every microbatch's shapes and the loss Composer computed for it."""

    def __init__(self) -> None:
        self.microbatches: list[dict] = []
        self.losses: list[float] = []
        self.tokens: list[int] = []
        self.denoisers: list[tuple[int, int]] = []

    def run_event(self, event: Event, state, logger) -> None:
        if event == Event.AFTER_LOSS:
            self.microbatches.append({k: tuple(v.shape) for k, v in state.batch.items() if torch.is_tensor(v)})
            self.losses.append(float(state.loss))
            self.tokens.append(int((state.batch['labels'] != -100).sum()))
            self.denoisers.append((int(state.timestamp.batch), state.batch.get('denoiser')))


def test_objective_section_is_checked_with_the_rest():
    with pytest.raises(ConfigError) as e:
        config_from_dict(ul2({'preset': 'ul3'}, max_duration='abc'))
    text = str(e.value)
    assert "'ul2'" in text  # the closest preset is suggested
    assert 'max_duration' in text  # and the other problem is listed in the same message
    with pytest.raises(ConfigError, match='set those instead'):
        config_from_dict(ul2({'denoisers': [{'kind': 'span', 'mean_span_length': 3, 'corruption_rate': 0.3}]}))
    # Plain span corruption written out equals the default section: accepted.
    config_from_dict(ul2({'preset': 'span_corruption'}))
    config_from_dict(ul2({'denoisers': [{'kind': 'span', 'mean_span_length': 3.0, 'corruption_rate': 0.15}]}))


def test_too_many_sentinels_for_the_rows_is_refused():
    long_rows = {**tiny()['data'], 'input_length': 512, 'objective': {'denoisers': [
        {'kind': 'span', 'mean_span_length': 2, 'corruption_rate': 0.5, 'mode_token': '[NLG]'}]}}
    with pytest.raises(ConfigError, match='sentinel tokens'):
        config_from_dict(tiny(data=long_rows))


def test_mode_tokens_are_added_after_the_rows_tokenizer(tmp_path):
    plan = plan_run(config_from_dict(ul2(save_folder=str(tmp_path / 'run'))), world_size=1)
    base = plan.rows_tokenizer
    assert base is not plan.tokenizer
    assert len(plan.tokenizer) == len(base) + len(MODE_TOKENS)
    vocab = plan.tokenizer.get_vocab()
    assert [vocab[t] for t in MODE_TOKENS] == list(range(len(base), len(base) + len(MODE_TOKENS)))
    assert not any(t in base.get_vocab() for t in MODE_TOKENS)  # the rows' tokenizer (and its fingerprint) unchanged
    assert plan.model_config.vocab_size > max(vocab[t] for t in MODE_TOKENS)
    # The default objective adds nothing.
    plain = plan_run(config_from_dict(tiny(save_folder=str(tmp_path / 'plain'))), world_size=1)
    assert plain.rows_tokenizer is plain.tokenizer and len(plain.tokenizer) == len(base)


@pytest.mark.slow
def test_ul2_batches_are_per_denoiser_and_token_weighted(tmp_path):
    """One microbatch per denoiser group (fixed sequence shapes), and the step's loss is the mean over
    the batch's target tokens whatever the microbatch size (Composer weighs microbatches by tokens)."""
    seen = {}
    for micro in (8, 2):
        batches, logged = _Batches(), InMemoryLogger()
        cfg = ul2(max_duration='1ba', global_train_batch_size=8, device_train_microbatch_size=micro,
                  save_folder=str(tmp_path / f'm{micro}'), eval_interval='1ba', scheduler={'name': 'constant'})
        cfg['data']['eval_split'] = None
        trainer = build_trainer(config_from_dict(cfg), extra_callbacks=(batches,), extra_loggers=(logged,))
        trainer.fit()
        seen[micro] = (batches, _snapshot(trainer)[0], float(logged.data['loss/train/total'][-1][1]))
        trainer.close()
    whole, pieces = seen[8][0], seen[2][0]
    for batches, _, total in seen.values():
        # The step's loss is the mean over all target tokens of the batch, not over rows.
        by_tokens = sum(loss * n for loss, n in zip(batches.losses, batches.tokens)) / sum(batches.tokens)
        by_rows = sum(loss * mb['labels'][0] for loss, mb in zip(batches.losses, batches.microbatches)) / 8
        assert total == pytest.approx(by_tokens, rel=1e-5)
        assert abs(by_rows - by_tokens) > 1e-3  # the two weightings differ for this batch: the check can fail
    objective = Objective.preset('ul2')
    raw = config_from_dict(tiny()).data.span_corruption.expanded_length
    shapes = {(d.output_lengths(raw)) for d in objective.denoisers}
    for mb in whole.microbatches + pieces.microbatches:
        assert (mb['input_ids'][1], mb['labels'][1]) in shapes
        assert mb['input_ids'][0] <= 8
    assert sum(mb['input_ids'][0] for mb in whole.microbatches) == 8
    assert all(mb['input_ids'][0] <= 2 for mb in pieces.microbatches)
    # Same gradients, hence the same weights after the step, to float rounding.
    for name, value in seen[8][1].items():
        torch.testing.assert_close(value, seen[2][1][name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_ul2_resume_equals_uninterrupted(tmp_path):
    """A resumed run sees the same denoisers and masks: its weights and optimizer state are bit-identical."""
    full = build_trainer(config_from_dict(ul2(save_folder=str(tmp_path / 'full'), save_interval='2ba', max_duration='8ba')))
    full.fit()
    full_model, full_optim = _snapshot(full)
    full.close()

    resumable = ul2(run_name='part', save_folder=str(tmp_path / 'part'), save_interval='2ba', autoresume=True, max_duration='8ba',
                    scheduler={'name': 'cosine', 't_warmup': '3ba', 'final_lr': 1e-4, 't_max': '8ba'})
    first = build_trainer(config_from_dict(resumable))
    first.fit(duration='4ba')
    first.close()
    second = build_trainer(config_from_dict(resumable))
    assert int(second.state.timestamp.batch) == 4
    second.fit()
    part_model, part_optim = _snapshot(second)
    second.close()
    for name in full_model:
        assert torch.equal(full_model[name], part_model[name]), name
    _assert_same_optimizer_state(full_optim, part_optim)


def test_ul2_recipe_has_pt_base_flops():
    """yamls/pt_base_ul2.yaml trains as many FLOPs as pt_base: its steps are pt_base's times the cost ratio of a row."""
    from bench.objective_comparison import expected_flops_per_row
    from t5composer.config import load_config
    from t5composer.models import load_model_config

    base, ul2_recipe = (load_config(str(REPO / 'yamls' / f'{name}.yaml')) for name in ('pt_base', 'pt_base_ul2'))
    assert ul2_recipe.data.pretraining_objective == Objective.preset('ul2')
    assert base.data.pretraining_objective.is_span_corruption
    config = load_model_config(ul2_recipe.model.name, **ul2_recipe.model.config_overrides())
    raw = ul2_recipe.data.span_corruption.expanded_length
    ratio = (expected_flops_per_row(base.data.pretraining_objective, raw, config)
             / expected_flops_per_row(ul2_recipe.data.pretraining_objective, raw, config))
    steps = lambda cfg: int(str(cfg.max_duration).removesuffix('ba'))  # noqa: E731
    assert steps(ul2_recipe) == round(steps(base) * ratio)
    # Everything else is pt_base's.
    for key in ('global_train_batch_size', 'precision', 'compile', 'seed', 'optimizer', 'scheduler'):
        assert getattr(ul2_recipe, key) == getattr(base, key), key


@pytest.mark.slow
def test_each_denoisers_loss_is_logged(tmp_path):
    """loss/train/denoiser/<i>-<name>: the token mean of that denoiser's microbatch losses over the window."""
    import json

    batches = _Batches()
    cfg = ul2(max_duration='4ba', global_train_batch_size=16, save_folder=str(tmp_path / 'run'), scheduler={'name': 'constant'},
              callbacks={'nanot5_log': {'interval': 2}})
    cfg['data']['eval_split'] = None
    trainer = build_trainer(config_from_dict(cfg), extra_callbacks=(batches,))
    trainer.fit()
    trainer.close()
    rows = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
    logged: dict = {}
    for row in rows:  # a step may have several lines
        logged.setdefault(row['step'], {}).update({k: v for k, v in row.items() if k.startswith('loss/train/denoiser/')})
    names = [d.name for d in Objective.preset('ul2').denoisers]
    for step in (2, 4):
        window = [(d, loss, n) for (batch, d), loss, n in zip(batches.denoisers, batches.losses, batches.tokens)
                  if step - 2 <= batch < step]
        expected = {}
        for d in {d for d, _, _ in window}:
            part = [(loss, n) for dd, loss, n in window if dd == d]
            expected[f'loss/train/denoiser/{d}-{names[d]}'] = sum(loss * n for loss, n in part) / sum(n for _, n in part)
        assert logged[step].keys() == expected.keys() and len(expected) >= 3, (logged[step], expected)
        for key, value in expected.items():
            assert logged[step][key] == pytest.approx(value, rel=1e-5), key
