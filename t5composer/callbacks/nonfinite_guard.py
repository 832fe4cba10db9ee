"""Stop (or skip the batch) when the loss or the gradients stop being finite.

One NaN step poisons every weight through the optimizer state, and the next checkpoint then
saves the damage. The guard runs after the backward pass of every batch and before the
optimizer step (Composer's ``AFTER_TRAIN_BATCH``), so the weights and the last checkpoint are
still good when it acts:

* ``action: stop`` raises :class:`NonFiniteError` naming the batch and its samples; no step
  is taken and no checkpoint is written after it, so autoresume restarts from the last good one.
* ``action: skip`` drops the gradients (the optimizer skips parameters without a gradient,
  as fp16 loss scaling does), logs the batch, and stops once ``max_skips`` batches were skipped
  in the run (counted across resumes). The schedule still advances.

Cost: one small reduction over the gradients and one host sync per batch.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch
from composer.core import Callback, Event, State
from composer.loggers import Logger
from composer.utils import dist

log = logging.getLogger(__name__)

__all__ = ['NonFiniteError', 'NonFiniteGuard']


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or gradient (the message says where and what to do)."""


class NonFiniteGuard(Callback):
    """Args:
    action: ``stop`` or ``skip``.
    max_skips: with ``skip``, the most batches one run may skip before it stops.
    check_gradients: also check the gradient norm (off under fp16 loss scaling, whose scaler
        already skips steps with inf gradients).
    """

    def __init__(self, *, action: str = 'stop', max_skips: int = 10, check_gradients: bool = True) -> None:
        if action not in ('stop', 'skip'):
            raise ValueError(f"nonfinite.action must be 'stop' or 'skip', not {action!r}.")
        self.action = action
        self.max_skips = max_skips
        self.check_gradients = check_gradients
        self.skipped: list[int] = []
        self._loss_bad: Optional[torch.Tensor] = None

    def run_event(self, event: Event, state: State, logger: Logger) -> None:
        if event == Event.BEFORE_TRAIN_BATCH:
            self._loss_bad = None
        elif event == Event.AFTER_LOSS:
            self._note_loss(state.loss)
        elif event == Event.AFTER_TRAIN_BATCH:
            self._check(state, logger)

    def _note_loss(self, loss: Any) -> None:
        # Accumulate on the device (no sync per microbatch); the loss may be a tensor, tuple or dict.
        parts = loss.values() if isinstance(loss, dict) else (loss if isinstance(loss, (tuple, list)) else (loss,))
        for part in parts:
            if torch.is_tensor(part):
                bad = ~torch.isfinite(part.detach()).all()
                self._loss_bad = bad if self._loss_bad is None else (self._loss_bad | bad)

    def _check(self, state: State, logger: Logger) -> None:
        device = next(state.model.parameters()).device
        flags = torch.zeros(2, device=device)
        if self._loss_bad is not None:
            flags[0] = self._loss_bad.float()
        grads = [p.grad for p in state.model.parameters() if p.grad is not None]
        if self.check_gradients and grads:
            norms = torch._foreach_norm(grads)
            flags[1] = (~torch.isfinite(torch.stack(norms)).all()).float()
        dist.all_reduce(flags, reduce_operation='MAX')  # one rank's NaN is everyone's problem
        loss_bad, grad_bad = (bool(v) for v in flags.tolist())
        if not (loss_bad or grad_bad):
            return
        what = 'loss' if loss_bad else 'gradient'
        batch = int(state.timestamp.batch)  # batches completed before this one
        first = int(state.timestamp.sample_in_epoch)
        where = (f'batch {batch + 1} (global step {batch}, epoch {int(state.timestamp.epoch)}, '
                 f'samples {first}-{first + _global_batch_size(state) - 1} of the epoch)')
        if self.action == 'skip' and len(self.skipped) < self.max_skips:
            for p in state.model.parameters():
                p.grad = None
            self.skipped.append(batch)
            log.warning('Non-finite %s at %s: skipped this batch (%d of at most %d skips).', what, where, len(self.skipped), self.max_skips)
            logger.log_metrics({'nonfinite/skipped_batches': len(self.skipped)})
            return
        if self.action == 'skip':
            advice = (f'{len(self.skipped)} batches were already skipped (nonfinite.max_skips={self.max_skips}), at steps '
                      f'{self.skipped[-10:]}; the run is diverging: lower optimizer.lr, add or tighten gradient clipping, '
                      'or raise nonfinite.max_skips.')
        else:
            advice = ('Lower optimizer.lr, add or tighten algorithms.gradient_clipping, check the data at those samples, '
                      'or set nonfinite.action=skip to skip such batches (at most nonfinite.max_skips).')
        raise NonFiniteError(
            f'Non-finite {what} at {where}. The optimizer step was not taken and no checkpoint was written after it; '
            f'running the same command again resumes from the last good checkpoint. {advice}',
        )

    def state_dict(self) -> dict[str, Any]:
        return {'skipped': list(self.skipped)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped = list(state.get('skipped', []))


def _global_batch_size(state: State) -> int:
    size = state.device_train_microbatch_size  # fallback, replaced below when the batch is known
    batch = state.batch
    if isinstance(batch, dict):
        first = next((v for v in batch.values() if torch.is_tensor(v)), None)
        if first is not None:
            size = first.shape[0]
    return int(size or 1) * dist.get_world_size()
