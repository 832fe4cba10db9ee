"""Stop (or skip the batch) when the loss or the gradients stop being finite, without waiting for the device.

One NaN step poisons every weight through the optimizer state, and the next checkpoint then
saves the damage. After the backward pass of every batch and before the optimizer step
(Composer's ``AFTER_TRAIN_BATCH``) the guard computes one "found non-finite" flag on the device,
from the losses of the batch's microbatches and the step's gradient norm (the one shared with
clipping and the log, :func:`t5composer.optim.grad_norm.step_grad_norm`), all-reduced over the
processes, and hands it to the optimizer, which applies it on the device: a flagged step leaves
the weights, the moments and the step counts bit-identical, as PyTorch's fused Adam does with
GradScaler's ``found_inf`` (the schedule still advances). The host reads the flags later, all
at once: every ``check_interval`` batches, at the end of training, and while a checkpoint is
being written (Composer asks every callback for its ``state_dict`` before it writes anything):

* ``action: stop`` raises :class:`NonFiniteError` naming the first bad batch and its samples; no
  checkpoint is written after it (the one being written is abandoned), so autoresume restarts
  from the last good one. The batches between the bad one and the read have trained and are lost.
* ``action: skip`` logs each skipped batch and stops once more than ``max_skips`` batches were
  skipped in the run (counted across resumes: the count is part of every checkpoint).

Optimizers that cannot take the flag on the device (those without ``skip_next_step_if``, e.g.
``adamw`` and ``adafactor``) get the previous behaviour: the flags are read at once, every batch
(one host sync), and a skipped batch's gradients are dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import torch
from composer.core import Callback, Event, State
from composer.loggers import Logger
from composer.utils import dist, ensure_tuple

from t5composer.data.denoising import batch_groups
from t5composer.optim.grad_norm import step_grad_norm

log = logging.getLogger(__name__)

__all__ = ['NonFiniteError', 'NonFiniteGuard']


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or gradient (the message says where and what to do)."""


@dataclass(frozen=True)
class _Batch:
    """Where a batch was, known on the host when its flags were made."""

    batch: int  # batches completed before it (its global step)
    epoch: int
    first_sample: int  # in the epoch
    samples: int  # global batch size

    def describe(self) -> str:
        return (f'batch {self.batch + 1} (global step {self.batch}, epoch {self.epoch}, '
                f'samples {self.first_sample}-{self.first_sample + self.samples - 1} of the epoch)')


class NonFiniteGuard(Callback):
    """Args:
    action: ``stop`` or ``skip``.
    max_skips: with ``skip``, the most batches one run may skip before it stops.
    check_gradients: also check the gradient norm (off under fp16 loss scaling, whose scaler
        already skips steps with inf gradients).
    check_interval: batches between two host reads of the flags (each read waits for the
        device once); they are also read at the end of training and before every checkpoint.
    """

    def __init__(self, *, action: str = 'stop', max_skips: int = 10, check_gradients: bool = True, check_interval: int = 100) -> None:
        if action not in ('stop', 'skip'):
            raise ValueError(f"nonfinite.action must be 'stop' or 'skip', not {action!r}.")
        if check_interval < 1:
            raise ValueError(f'check_interval must be >= 1, got {check_interval}.')
        self.action = action
        self.max_skips = max_skips
        self.check_gradients = check_gradients
        self.check_interval = check_interval
        self.skipped: list[int] = []
        self._loss_bad: Optional[torch.Tensor] = None
        self._pending: list[tuple[_Batch, torch.Tensor]] = []  # flags not yet read on the host
        self._on_device = False  # every optimizer applies the flag itself
        self._logger: Optional[Logger] = None

    def run_event(self, event: Event, state: State, logger: Logger) -> None:
        if event == Event.FIT_START:
            self._logger = logger
            self._on_device = all(hasattr(o, 'skip_next_step_if') for o in ensure_tuple(state.optimizers))
        elif event == Event.BEFORE_TRAIN_BATCH:
            self._loss_bad = None
        elif event == Event.AFTER_LOSS:
            self._note_loss(state.loss)
        elif event == Event.AFTER_TRAIN_BATCH:
            self._after_train_batch(state)
        elif event == Event.BATCH_END and int(state.timestamp.batch) % self.check_interval == 0:
            self.read_flags()
        elif event == Event.FIT_END:
            self.read_flags()

    def _note_loss(self, loss: Any) -> None:
        # Accumulate on the device (no sync per microbatch); the loss may be a tensor, tuple or dict.
        parts = loss.values() if isinstance(loss, dict) else (loss if isinstance(loss, (tuple, list)) else (loss,))
        for part in parts:
            if torch.is_tensor(part):
                bad = ~torch.isfinite(part.detach()).all()
                self._loss_bad = bad if self._loss_bad is None else (self._loss_bad | bad)

    def _after_train_batch(self, state: State) -> None:
        device = next(state.model.parameters()).device
        no = torch.zeros((), dtype=torch.bool, device=device)
        loss_bad = no if self._loss_bad is None else self._loss_bad.to(device)
        grad_bad = ~torch.isfinite(step_grad_norm(state)) if self.check_gradients else no
        flags = torch.stack([loss_bad, grad_bad]).float()
        dist.all_reduce(flags, reduce_operation='MAX')  # one rank's NaN is everyone's problem
        batch = _Batch(batch=int(state.timestamp.batch), epoch=int(state.timestamp.epoch),
                       first_sample=int(state.timestamp.sample_in_epoch), samples=_global_batch_size(state))
        if self._on_device:
            found = flags.amax() > 0
            for optimizer in ensure_tuple(state.optimizers):
                optimizer.skip_next_step_if(found)
            self._pending.append((batch, flags))
            return
        loss_flag, grad_flag = flags.tolist()  # this optimizer cannot skip on the device: decide now
        if (loss_flag or grad_flag) and self._act(batch, bool(loss_flag)):
            for p in state.model.parameters():
                p.grad = None  # the optimizer skips parameters without a gradient, as fp16 loss scaling does

    def read_flags(self) -> None:
        """Read the pending flags on the host (one wait for the device) and act on the bad batches, oldest first."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        values = torch.stack([flags for _, flags in pending]).tolist()
        for (batch, _), (loss_flag, grad_flag) in zip(pending, values):
            if loss_flag or grad_flag:
                self._act(batch, bool(loss_flag))

    def _act(self, batch: _Batch, loss_bad: bool) -> bool:
        """Record a skipped batch (True), or raise NonFiniteError."""
        what = 'loss' if loss_bad else 'gradient'
        where = batch.describe()
        if self.action == 'skip' and len(self.skipped) < self.max_skips:
            self.skipped.append(batch.batch)
            log.warning('Non-finite %s at %s: skipped this batch (%d of at most %d skips).', what, where, len(self.skipped), self.max_skips)
            if self._logger is not None:
                self._logger.log_metrics({'nonfinite/skipped_batches': len(self.skipped)})
            return True
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
        # Called while a checkpoint is being written, before anything is on disk: a bad batch
        # not yet read stops the save (action=stop), and the skip count saved is complete.
        self.read_flags()
        return {'skipped': list(self.skipped)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped = list(state.get('skipped', []))


def _global_batch_size(state: State) -> int:
    size = state.device_train_microbatch_size  # fallback, replaced below when the batch is known
    if isinstance(state.batch, dict):
        rows = [next((v.shape[0] for v in group.values() if torch.is_tensor(v)), None) for group in batch_groups(state.batch)]
        if rows and None not in rows:
            size = sum(rows)
    return int(size or 1) * dist.get_world_size()
