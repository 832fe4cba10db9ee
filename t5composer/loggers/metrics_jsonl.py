"""A JSONL file of every logged metric, written by every run that has a save_folder.

One line per ``log_metrics`` call: ``{"step": 120, "loss/train/total": 3.21, ...}``. A resumed
run appends to the same file, so a step redone after a kill appears twice; readers keep the last
line for a step (``t5composer.plotting.read_metrics`` does). Plain JSON lines outlive any logging
service and are what ``recipes/plot_runs.py`` reads.
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
    """

    def __init__(self, *, path: str) -> None:
        super().__init__()
        self.path = path
        self._file: Optional[Any] = None

    def init(self, state: State, logger: Logger) -> None:
        del state, logger
        if dist.get_global_rank() == 0:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            self._file = open(self.path, 'a', buffering=1)  # line-buffered: a kill loses at most a line

    def log_metrics(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        if self._file is None or not metrics:  # Composer logs some empty dicts; a bare step says nothing
            return
        row = {'step': step}
        row.update({k: _plain(v) for k, v in metrics.items()})
        self._file.write(json.dumps(row) + '\n')

    def close(self, state: State, logger: Logger) -> None:
        del state, logger
        if self._file is not None:
            self._file.close()
            self._file = None
