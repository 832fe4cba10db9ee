"""A non-finite loss or gradient stops the run (or skips the batch) before it reaches the weights."""

from __future__ import annotations

import os

import pytest
import torch
from composer.core import Callback, Event

from t5composer.callbacks.nonfinite_guard import NonFiniteError
from t5composer.config import config_from_dict
from t5composer.run.build import build_trainer
from test_training import tiny

pytestmark = pytest.mark.usefixtures('one_thread')


class Poison(Callback):
    """Make the loss (or one gradient) of the given 0-based batches non-finite, and remember
    the weights and the optimizer's state (moments, step counts) before and after each poisoned batch."""

    def __init__(self, batches, *, where: str = 'loss', value: float = float('nan')) -> None:
        self.batches, self.where, self.value = set(batches), where, value
        self.before: dict[int, dict] = {}
        self.after: dict[int, dict] = {}

    def _weights(self, state) -> dict:
        weights = {k: v.detach().clone() for k, v in state.model.state_dict().items()}
        for i, param_state in enumerate(state.optimizers[0].state.values()):
            weights.update({f'optimizer.{i}.{k}': v.detach().clone() for k, v in param_state.items()})
        return weights

    def run_event(self, event, state, logger) -> None:
        batch = int(state.timestamp.batch)
        if event == Event.BATCH_START and batch in self.batches:
            self.before[batch] = self._weights(state)
        elif event == Event.AFTER_LOSS and self.where == 'loss' and batch in self.batches:
            state.loss = state.loss * self.value
        elif event == Event.AFTER_BACKWARD and self.where == 'grad' and batch in self.batches:
            next(p for p in state.model.parameters() if p.grad is not None).grad.view(-1)[0] = self.value
        elif event == Event.BATCH_END and batch - 1 in self.batches:
            self.after[batch - 1] = self._weights(state)


@pytest.mark.slow
@pytest.mark.parametrize('where, value, what', [('loss', float('nan'), 'loss'), ('grad', float('inf'), 'gradient')])
def test_non_finite_stops_and_keeps_the_last_good_checkpoint(tmp_path, where, value, what):
    folder = tmp_path / 'run'
    poison = Poison({4}, where=where, value=value)
    cfg = config_from_dict(tiny(save_folder=str(folder), save_interval='2ba'))
    trainer = build_trainer(cfg, extra_callbacks=(poison,))
    with pytest.raises(NonFiniteError) as info:
        trainer.fit()
    trainer.close()
    message = str(info.value)
    assert f'Non-finite {what} at batch 5 (global step 4, epoch 0, samples 16-19 of the epoch)' in message
    assert 'nonfinite.action=skip' in message and 'optimizer.lr' in message
    # No step was taken with the bad gradients: weights, moments and step counts came through
    # the bad batch bit for bit (the flag was applied on the device; the host read it at the
    # next checkpoint, after batch 6 had trained) ...
    assert all(torch.isfinite(v).all() for v in trainer.state.model.state_dict().values() if v.is_floating_point())
    assert poison.before[4].keys() == poison.after[4].keys() and any(k.startswith('optimizer.') for k in poison.after[4])
    for key, value_before in poison.before[4].items():
        assert torch.equal(value_before, poison.after[4][key]), key
    # ... and the checkpoint of batch 6, the first after it, was abandoned before it was written.
    assert sorted(f for f in os.listdir(folder) if f.endswith('.pt')) == ['ep0-ba2-rank0.pt', 'ep0-ba4-rank0.pt', 'latest-rank0.pt']
    assert 'metrics.jsonl' in os.listdir(folder)


@pytest.mark.slow
def test_skip_mode_skips_bad_batches_and_stops_after_max_skips(tmp_path):
    poison = Poison({2, 5})
    cfg = config_from_dict(tiny(nonfinite={'action': 'skip', 'max_skips': 2}))
    trainer = build_trainer(cfg, extra_callbacks=(poison,))
    trainer.fit()
    assert int(trainer.state.timestamp.batch) == 10
    guard = next(c for c in trainer.state.callbacks if type(c).__name__ == 'NonFiniteGuard')
    assert guard.skipped == [2, 5]
    for batch in (2, 5):  # a skipped batch leaves every weight, moment and step count as it was
        assert any(k.endswith('.step') for k in poison.after[batch])
        for key, value in poison.before[batch].items():
            assert torch.equal(value, poison.after[batch][key]), (batch, key)
    # The batches in between did step: each of those tensors moved.
    changed = {k for k, v in poison.after[2].items() if not torch.equal(v, poison.before[5][k])}
    assert any(k.endswith('.step') for k in changed) and any(k.endswith('.exp_avg') for k in changed)
    assert 'model.lm_head.weight' in changed
    assert all(torch.isfinite(v).all() for v in trainer.state.model.state_dict().values() if v.is_floating_point())
    trainer.close()

    third = Poison({1, 3, 4})
    trainer = build_trainer(config_from_dict(tiny(nonfinite={'action': 'skip', 'max_skips': 2})), extra_callbacks=(third,))
    with pytest.raises(NonFiniteError, match=r'2 batches were already skipped \(nonfinite.max_skips=2\), at steps \[1, 3\]'):
        trainer.fit()
    trainer.close()


@pytest.mark.slow
def test_the_cli_exits_3_with_the_message(tmp_path, capsys):
    from omegaconf import OmegaConf

    from t5composer.cli import train_main

    recipe = tmp_path / 'tiny.yaml'
    OmegaConf.save(OmegaConf.create(tiny(save_folder=str(tmp_path / 'run'), save_interval='2ba')), recipe)
    code = train_main([str(recipe), 'max_duration=4ba'], extra_callbacks=(Poison({3}),))
    assert code == 3
    err = capsys.readouterr().err
    assert err.startswith('error: Non-finite loss at batch 4') and 'Traceback' not in err


@pytest.mark.slow
def test_skip_count_survives_a_resume(tmp_path):
    # The flags are read on the host before each checkpoint is written, so the count it saves is complete.
    settings = dict(run_name='skips', save_folder=str(tmp_path / 'run'), save_interval='3ba', autoresume=True,
                    nonfinite={'action': 'skip', 'max_skips': 2},
                    scheduler={'name': 'cosine', 't_warmup': '3ba', 'final_lr': 1e-4, 't_max': '10ba'})
    first = build_trainer(config_from_dict(tiny(**settings)), extra_callbacks=(Poison({1}),))
    first.fit(duration='6ba')
    first.close()
    resumed = build_trainer(config_from_dict(tiny(**settings)), extra_callbacks=(Poison({7}),))
    guard = next(c for c in resumed.state.callbacks if type(c).__name__ == 'NonFiniteGuard')
    assert guard.skipped == [1] and int(resumed.state.timestamp.batch) == 6
    resumed.fit()
    assert guard.skipped == [1, 7]
    resumed.close()
    third = build_trainer(config_from_dict(tiny(**settings, max_duration='14ba')), extra_callbacks=(Poison({11}),))
    with pytest.raises(NonFiniteError, match=r'2 batches were already skipped \(nonfinite.max_skips=2\), at steps \[1, 7\]'):
        third.fit()
    third.close()
