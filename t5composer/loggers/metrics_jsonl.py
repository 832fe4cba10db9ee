"""A JSONL file of every logged metric, written by every run that has a save_folder.

One line per ``log_metrics`` call: ``{"step": 120, "loss/train/total": 3.21, ...}``. A resumed
run appends to the same file, so a step redone after a kill appears twice; readers keep the last
line for a step (``t5composer.plotting.read_metrics`` does). Plain JSON lines outlive any logging
service and are what ``recipes/plot_runs.py`` reads.

The training loss arrives as a tensor on the device every batch (see
:class:`t5composer.trainer.NonBlockingTrainer`); turning it into a number would make the host wait
for the device. Lines are therefore kept, in order, and written every ``flush_interval`` batches,
after an evaluation, whenever a checkpoint is written (before it, so a resumed run redoes only
lines it rewrites) and at the end. A kill loses the lines since the last of these, which belong
to steps after the last checkpoint: the resumed run writes them again.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Optional

import torch
from composer.core import State
from composer.loggers import Logger, LoggerDestination
from composer.utils import dist

__all__ = ['MetricsJSONL']


def _plain(value: Any) -> Any:
    if torch.is_tensor(value):
        value = value.detach().float().mean().item() if value.numel() > 1 else value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)


class MetricsJSONL(LoggerDestination):
    """Args:
    path: the file to append to (global rank 0 writes it).
    flush_interval: batches between writes of the kept lines (see the module docstring).
    """

    def __init__(self, *, path: str, flush_interval: int = 100) -> None:
        super().__init__()
        if flush_interval < 1:
            raise ValueError(f'flush_interval must be >= 1, got {flush_interval}.')
        self.path = path
        self.flush_interval = flush_interval
        self._file: Optional[Any] = None
        self._rows: list[tuple[Optional[int], dict[str, Any]]] = []

    def init(self, state: State, logger: Logger) -> None:
        del state, logger
        if dist.get_global_rank() == 0:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._file = open(self.path, 'a')

    def log_metrics(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        if self._file is None or not metrics:  # Composer logs some empty dicts; a bare step says nothing
            return
        self._rows.append((step, dict(metrics)))  # values are read when written (flush)

    def flush(self) -> None:
        """Write the kept lines (reading their tensors waits for the device once)."""
        if self._file is None or not self._rows:
            return
        rows, self._rows = self._rows, []
        self._file.write(''.join(json.dumps({'step': step, **{k: _plain(v) for k, v in metrics.items()}}) + '\n'
                                 for step, metrics in rows))
        self._file.flush()

    def batch_end(self, state: State, logger: Logger) -> None:
        del logger
        if int(state.timestamp.batch) % self.flush_interval == 0:
            self.flush()

    def eval_end(self, state: State, logger: Logger) -> None:
        del state, logger
        self.flush()

    def fit_end(self, state: State, logger: Logger) -> None:
        del state, logger
        self.flush()

    def state_dict(self) -> dict[str, Any]:
        # Composer asks while it writes a checkpoint: the lines up to it go to disk first.
        self.flush()
        return {}

    def close(self, state: State, logger: Logger) -> None:
        del state, logger
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None
