"""One gradient norm per step, shared by clipping, the non-finite guard and nanot5_log."""

from __future__ import annotations

import collections
from types import SimpleNamespace

import pytest
import torch
from composer.algorithms.gradient_clipping.gradient_clipping import apply_gradient_clipping
from composer.core import Callback, Event
from torch import nn

from t5composer import components
from t5composer.config import config_from_dict
from t5composer.optim.clipping import GradientClipping
from t5composer.optim.grad_norm import step_grad_norm
from t5composer.run.build import build_trainer
from test_training import tiny

pytestmark = pytest.mark.usefixtures('one_thread')


class _State:
    """What step_grad_norm and the clipping read of Composer's State."""

    def __init__(self, model: nn.Module, batch: int = 0) -> None:
        self.model = model
        self.timestamp = SimpleNamespace(batch=batch)


def _model_with_grads(seed: int = 0, scale: float = 1.0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8), nn.LayerNorm(8))
    (model(torch.randn(5, 16)).pow(2).sum() * scale).backward()
    return model


@pytest.mark.parametrize('threshold', [0.1, 1e6], ids=['clips', 'does_not_clip'])
def test_clipping_with_the_shared_norm_is_composers_bit_for_bit(threshold):
    composers, ours = _model_with_grads(), _model_with_grads()
    expected_norm = torch.nn.utils.clip_grad_norm_(list(_model_with_grads().parameters()), threshold)
    apply_gradient_clipping(composers, 'norm', threshold, fsdp_enabled=False)
    state = _State(ours)
    GradientClipping(clipping_type='norm', clipping_threshold=threshold).apply(Event.AFTER_TRAIN_BATCH, state, None)
    for a, b in zip(composers.parameters(), ours.parameters()):
        assert torch.equal(a.grad, b.grad)
    assert torch.equal(step_grad_norm(state), expected_norm)  # the pre-clip norm, kept for the others
    unclipped = _model_with_grads()
    clipped = any(not torch.equal(a.grad, b.grad) for a, b in zip(ours.parameters(), unclipped.parameters()))
    assert clipped == (threshold < 1e6)


def test_the_norm_is_computed_once_per_batch_and_a_new_batch_gets_a_new_one():
    model = _model_with_grads()
    state = _State(model, batch=3)
    first = step_grad_norm(state)
    for p in model.parameters():
        p.grad.mul_(0.5)  # e.g. clipping after the norm was taken
    assert step_grad_norm(state) is first  # the same tensor: the pre-clip norm, not a second pass
    state.timestamp.batch = 4
    assert torch.allclose(step_grad_norm(state), first * 0.5)


def test_value_and_adaptive_clipping_stay_composers():
    for kind, threshold in (('value', 0.01), ('adaptive', 0.01)):
        composers, ours = _model_with_grads(), _model_with_grads()
        apply_gradient_clipping(composers, kind, threshold, fsdp_enabled=False)
        GradientClipping(clipping_type=kind, clipping_threshold=threshold).apply(
            Event.AFTER_TRAIN_BATCH, SimpleNamespace(model=ours, fsdp_config_version=None), None)
        assert all(torch.equal(a.grad, b.grad) for a, b in zip(composers.parameters(), ours.parameters())), kind


class _GradNormCounter(Callback):
    """Counts, per batch, the norm computations over the model's gradients (torch._foreach_norm)."""

    def __init__(self) -> None:
        self.per_batch: collections.Counter = collections.Counter()
        self.batch = 0
        self.grads: set[int] = set()

    def run_event(self, event, state, logger) -> None:
        if event == Event.BATCH_START:
            self.batch = int(state.timestamp.batch) + 1
        elif event == Event.AFTER_BACKWARD:
            self.grads = {id(p.grad) for p in state.model.parameters() if p.grad is not None}

    def count(self, tensors) -> None:
        if tensors and id(tensors[0]) in self.grads:
            self.per_batch[self.batch] += 1


def _norms_per_batch(monkeypatch, tmp_path) -> collections.Counter:
    counter = _GradNormCounter()
    original = torch._foreach_norm

    def counting(tensors, *args, **kwargs):
        counter.count(list(tensors))
        return original(tensors, *args, **kwargs)

    monkeypatch.setattr(torch, '_foreach_norm', counting)
    cfg = config_from_dict(tiny(max_duration='4ba', eval_interval='4ba', device_train_microbatch_size=2,
                                callbacks={'nanot5_log': {'interval': 2}}))
    trainer = build_trainer(cfg, extra_callbacks=(counter,))
    trainer.fit()
    trainer.close()
    return counter.per_batch


@pytest.mark.slow
def test_one_norm_per_step_for_clipping_guard_and_log(monkeypatch, tmp_path):
    # Clipping, the non-finite guard and nanot5_log's Grad_l2 all use it; with gradient
    # accumulation too (2 microbatches).
    assert _norms_per_batch(monkeypatch, tmp_path) == {1: 1, 2: 1, 3: 1, 4: 1}
    # Composer's own GradientClipping computes a second one: the counter sees it.
    from composer.algorithms import GradientClipping as ComposersClipping

    monkeypatch.setitem(components.ALGORITHMS, 'gradient_clipping', ComposersClipping)
    assert _norms_per_batch(monkeypatch, tmp_path) == {1: 2, 2: 2, 3: 2, 4: 2}
