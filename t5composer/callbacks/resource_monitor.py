"""Log host memory: this process, its dataloader workers, and streaming's shared memory.

Composer's ``memory_monitor`` reports GPU memory only; a slow host-memory leak (a growing cache,
a list of per-step values) is what ends multi-day runs on shared machines. Logged every
``interval`` batches:

* ``resources/rss_mb``: resident memory of this process;
* ``resources/children_rss_mb``: of its child processes (dataloader workers), recursively;
* ``resources/shm_mb``: streaming shared memory in /dev/shm (all jobs on the machine).
"""

from __future__ import annotations

import os

import psutil
from composer.core import Callback, State
from composer.loggers import Logger

__all__ = ['ResourceMonitor', 'resident_memory_mb']


def resident_memory_mb(process: psutil.Process) -> tuple[float, float]:
    """(this process, its children recursively) resident memory in MiB."""
    own = process.memory_info().rss
    children = 0
    for child in process.children(recursive=True):
        try:
            children += child.memory_info().rss
        except psutil.Error:
            pass  # a worker that just exited
    return own / 2**20, children / 2**20


def _streaming_shm_mb() -> float:
    total = 0
    try:
        for entry in os.scandir('/dev/shm'):
            if entry.name[:6].isdigit() and entry.name[6:7] == '_':
                total += entry.stat().st_size
    except OSError:
        return 0.0
    return total / 2**20


class ResourceMonitor(Callback):
    """Args:
    interval: log every this many batches.
    """

    def __init__(self, *, interval: int = 100) -> None:
        if interval <= 0:
            raise ValueError(f'interval must be positive, got {interval}.')
        self.interval = interval
        self._process = psutil.Process()

    def batch_end(self, state: State, logger: Logger) -> None:
        if int(state.timestamp.batch) % self.interval:
            return
        own, children = resident_memory_mb(self._process)
        logger.log_metrics({'resources/rss_mb': own, 'resources/children_rss_mb': children, 'resources/shm_mb': _streaming_shm_mb()})
