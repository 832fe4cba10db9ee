"""A non-finite loss or gradient stops the run (or skips the batch) before it reaches the weights."""

from __future__ import annotations

import os

import pytest
import torch
from composer.core import Callback, Event

from t5composer.callbacks.nonfinite_guard import NonFiniteError
from t5composer.config import config_from_dict
from t5composer.training import build_trainer
from test_training import tiny

pytestmark = pytest.mark.usefixtures('one_thread')


class Poison(Callback):
    """Make the loss (or one gradient) of the given 0-based batches non-finite, and remember
    the weights before and after each poisoned batch."""

    def __init__(self, batches, *, where: str = 'loss', value: float = float('nan')) -> None:
        self.batches, self.where, self.value = set(batches), where, value
        self.before: dict[int, dict] = {}
        self.after: dict[int, dict] = {}

    def _weights(self, state) -> dict:
        return {k: v.detach().clone() for k, v in state.model.state_dict().items()}

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
    # No step was taken with the bad gradients, and nothing was saved after them.
    assert all(torch.isfinite(v).all() for v in trainer.state.model.state_dict().values() if v.is_floating_point())
    for key, value_before in poison.before[4].items():
        assert torch.equal(value_before, trainer.state.model.state_dict()[key]), key
    assert sorted(os.listdir(folder)) == ['ep0-ba2-rank0.pt', 'ep0-ba4-rank0.pt', 'latest-rank0.pt', 'metrics.jsonl']


@pytest.mark.slow
def test_skip_mode_skips_bad_batches_and_stops_after_max_skips(tmp_path):
    poison = Poison({2, 5})
    cfg = config_from_dict(tiny(nonfinite={'action': 'skip', 'max_skips': 2}))
    trainer = build_trainer(cfg, extra_callbacks=(poison,))
    trainer.fit()
    assert int(trainer.state.timestamp.batch) == 10
    guard = next(c for c in trainer.state.callbacks if type(c).__name__ == 'NonFiniteGuard')
    assert guard.skipped == [2, 5]
    for batch in (2, 5):  # a skipped batch leaves every weight as it was
        for key, value in poison.before[batch].items():
            assert torch.equal(value, poison.after[batch][key]), (batch, key)
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
