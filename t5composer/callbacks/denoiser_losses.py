"""The training loss of each denoiser of a mixture, so objectives can be compared denoiser by denoiser.

A mixture batch trains one microbatch per denoiser group (:mod:`t5composer.data.denoising`); this
callback adds each microbatch's loss, weighted by its target tokens, to its denoiser's sum on the
device, and every ``interval`` batches logs ``loss/train/denoiser/<i>-<name>``: the mean over the
target tokens that denoiser had in the window (``metrics.jsonl`` and any logger). Nothing waits
for the device here; a logger reads the values when it writes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from composer.core import Callback, Event, State
from composer.loggers import Logger

from t5composer.data.denoising import DENOISER, loss_tokens

__all__ = ['DenoiserLosses']


class DenoiserLosses(Callback):
    """Log each denoiser's token-mean training loss every ``interval`` batches.

    Args:
        names: the objective's denoiser names, in order (``Objective.denoisers[i].name``).
        interval: batches between logged values.
    """

    def __init__(self, *, names: Sequence[str], interval: int = 100) -> None:
        if interval <= 0:
            raise ValueError(f'interval must be positive, got {interval}.')
        self.keys = [f'loss/train/denoiser/{i}-{name}' for i, name in enumerate(names)]
        self.interval = interval
        self._sums: Optional[torch.Tensor] = None  # on the device: loss x tokens per denoiser
        self._tokens = [0] * len(self.keys)  # on the host: from the collator's counts

    def run_event(self, event: Event, state: State, logger: Logger) -> None:
        if event == Event.AFTER_LOSS and state.model.training:
            index = state.batch.get(DENOISER) if isinstance(state.batch, dict) else None
            if index is None or not torch.is_tensor(state.loss):
                return
            tokens = loss_tokens(state.batch)
            loss = state.loss.detach().float().reshape(())
            if self._sums is None:
                self._sums = torch.zeros(len(self.keys), device=loss.device)
            self._sums[index] += loss * tokens
            self._tokens[index] += tokens
        elif event == Event.BATCH_END and int(state.timestamp.batch) % self.interval == 0 and self._sums is not None:
            logger.log_metrics({key: self._sums[i] / self._tokens[i] for i, key in enumerate(self.keys) if self._tokens[i]})
            self._sums, self._tokens = None, [0] * len(self.keys)
