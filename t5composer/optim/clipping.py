"""Gradient clipping by norm with the step's shared gradient norm (``algorithms.gradient_clipping``).

Composer's ``GradientClipping`` with ``clipping_type: norm`` computes the gradient norm itself
(``torch.nn.utils.clip_grad_norm_``, or FSDP's), a second full pass over the gradients when the
non-finite guard and ``nanot5_log`` need it too. This subclass takes the same options and clips
with :func:`t5composer.optim.grad_norm.step_grad_norm` instead: the same norm and the same
scaling (``min(1, max_norm / (norm + 1e-6))``, bit-identical to ``clip_grad_norm_``), computed
once per step on the device. ``value`` and ``adaptive`` clipping are Composer's.
"""

from __future__ import annotations

from typing import Optional

import torch
from composer.algorithms import GradientClipping as ComposerGradientClipping
from composer.core import Event, State
from composer.loggers import Logger

from t5composer.optim.grad_norm import step_grad_norm

__all__ = ['GradientClipping']


class GradientClipping(ComposerGradientClipping):
    """Clip the gradients after every batch (Composer's ``GradientClipping``, sharing the step's norm).

    Args:
        clipping_type: ``norm`` (the total L2 norm, with the shared norm), ``value`` or ``adaptive`` (Composer's).
        clipping_threshold: the largest norm (``norm``), absolute value (``value``) or
            gradient-to-weight norm ratio (``adaptive``).
    """

    def __init__(self, *, clipping_type: str, clipping_threshold: float):
        super().__init__(clipping_type=clipping_type, clipping_threshold=clipping_threshold)

    def apply(self, event: Event, state: State, logger: Logger) -> Optional[int]:
        if event != Event.AFTER_TRAIN_BATCH or self.clipping_type != 'norm':
            return super().apply(event, state, logger)
        params = [p for p in state.model.parameters() if p.grad is not None]
        if params:
            torch.nn.utils.clip_grads_with_norm_(params, self.clipping_threshold, step_grad_norm(state))
        return None
