"""Print nanoT5's training line so runs can be compared with the reference at a glance.

``[train] Step 100 out of 65536 | Loss --> 59.881 | Grad_l2 --> 61.126 | Weights_l2 --> 7042.931 | Lr --> 0.010 | Seconds_per_step --> 1.385 |``

Loss, gradient norm and seconds per step are averages over the window since the last line;
the gradient norm is the step's norm before clipping (like the reference; the one clipping and
the non-finite guard use, :func:`t5composer.optim.grad_norm.step_grad_norm`), weights norm and lr
at the moment of printing. The sums stay on the device between lines: the host reads them once
per line. Under FSDP each process holds shards of the weights and gradients, so the norms sum
the shards' squares across processes (divided by the number of copies each element has: 1 for
FULL_SHARD, the replica count for HYBRID_SHARD).
"""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

import torch
from composer.core import Callback, Event, State, Time, TimeUnit
from composer.loggers import Logger
from composer.utils import dist

from t5composer.optim.grad_norm import fsdp_copies, global_l2, step_grad_norm

__all__ = ['NanoT5Log']


class NanoT5Log(Callback):
    """Print the reference's ``[train] Step ...`` line every ``interval`` batches.

    Args:
        interval: batches between lines (the reference uses 100).
        stream: where to print (default stdout); only global rank 0 prints.
    """

    def __init__(self, *, interval: int = 100, stream: Optional[TextIO] = None):
        if interval <= 0:
            raise ValueError(f'nanot5_log.interval must be positive, got {interval}.')
        self.interval = interval
        self.stream = stream
        self._copies: Optional[int] = None  # FSDP: processes per element (norms are then collectives)
        self._device: Optional[torch.device] = None
        self._reset()

    def _reset(self) -> None:
        self._loss_sum: Optional[torch.Tensor] = None
        self._grad_sum: Optional[torch.Tensor] = None
        self._steps = 0
        self._window_start = time.perf_counter()

    def run_event(self, event: Event, state: State, logger: Logger) -> None:
        if event == Event.FIT_START:
            self._reset()
            self._copies = fsdp_copies(state.model)
            self._device = next(state.model.parameters()).device
        elif event == Event.AFTER_TRAIN_BATCH:
            norm = step_grad_norm(state)  # before clipping, whichever of them asked first
            self._grad_sum = norm if self._grad_sum is None else self._grad_sum + norm
        elif event == Event.BATCH_END:
            self._on_batch_end(state, logger)

    def _on_batch_end(self, state: State, logger: Logger) -> None:
        loss = state.loss
        if isinstance(loss, dict):
            loss = sum(loss.values())
        if isinstance(loss, (list, tuple)):
            loss = sum(loss)
        loss = loss.detach().float()
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._steps += 1
        step = int(state.timestamp.batch)
        if step % self.interval != 0:
            return
        weights = global_l2([p.detach() for p in state.model.parameters()], copies=self._copies, device=self._device)
        grad_sum = self._grad_sum if self._grad_sum is not None else torch.full_like(weights, float('nan'))
        # The line's one wait for the device (it also makes Seconds_per_step cover the window's work).
        loss_sum, grad_sum, weights = torch.stack([self._loss_sum.reshape(()).to(weights), grad_sum.to(weights), weights]).tolist()
        seconds = (time.perf_counter() - self._window_start) / self._steps
        lr = state.optimizers[0].param_groups[0]['lr'] if state.optimizers else float('nan')
        stats = {
            'Loss': loss_sum / self._steps,
            'Grad_l2': grad_sum / self._steps,
            'Weights_l2': weights,
            'Lr': lr,
            'Seconds_per_step': seconds,
        }
        logger.log_metrics({f'nanot5/{k.lower()}': v for k, v in stats.items()})
        if dist.get_global_rank() == 0:
            total = self._total_batches(state)
            line = f'[train] Step {step} out of {total} | ' + ''.join(f'{k} --> {v:.3f} | ' for k, v in stats.items())
            print(line.rstrip(), file=self.stream or sys.stdout, flush=True)
        self._reset()

    @staticmethod
    def _total_batches(state: State) -> str:
        max_duration = state.max_duration
        if max_duration is None:
            return '?'
        if max_duration.unit == TimeUnit.BATCH:
            return str(max_duration.value)
        if max_duration.unit == TimeUnit.EPOCH and state.dataloader_len is not None:
            return str(max_duration.value * int(state.dataloader_len))
        return str(Time.from_input(max_duration))
