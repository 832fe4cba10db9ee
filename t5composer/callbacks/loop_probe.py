"""Callback ``loop_probe``: what a steady stretch of the real training loop does on the device.

Any run can name it (``callbacks: {loop_probe: {out: probe.json}}``); ``bench/gpu_check.sh``
adds it to a ``recipes/train.py`` run with overrides (``callbacks.loop_probe.out=FILE
callbacks.loop_probe.sync_start=21 ...``). Two windows of batches, chosen away from the logging,
checkpoint and compilation batches:

- ``sync_steps`` batches from batch ``sync_start`` (counted from 0) run under
  ``torch.cuda.set_sync_debug_mode('warn')``: every operation that makes the host wait for the
  GPU warns, and the probe counts the warnings by the Python line that made them;
- ``profile_steps`` batches from ``profile_start`` run under ``torch.profiler``, between two
  ``torch.cuda.synchronize()``: the window's wall time, the GPU's busy time (the sum of its kernel
  and copy times) and so the fraction of the wall time the GPU sat idle, and the top kernels by
  GPU time.

It writes one JSON file (``out``) at the end of the run. On a CPU there is no sync debug mode
(reported as unavailable) and the profile lists CPU operators (no idle fraction).
"""

from __future__ import annotations

import collections
import json
import linecache
import os
import time
import warnings
from typing import Any, Optional

import torch
from composer.core import Callback, Event, State
from composer.loggers import Logger

__all__ = ['LoopProbe']

_SYNC_WARNING = 'called a synchronizing CUDA operation'


class LoopProbe(Callback):
    """Args:
    out: the JSON file to write (global rank 0).
    sync_start: first batch (0-based) under the sync debug mode.
    sync_steps: batches under it.
    profile_start: first batch (0-based) profiled.
    profile_steps: batches profiled.
    top: kernels (operators on CPU) listed.
    """

    def __init__(self, *, out: str, sync_start: int = 21, sync_steps: int = 8, profile_start: int = 31, profile_steps: int = 8,
                 top: int = 15) -> None:
        self.out = out
        self.sync_window = (sync_start, sync_start + sync_steps)
        self.profile_window = (profile_start, profile_start + profile_steps)
        self.top = top
        self._cuda = torch.cuda.is_available()
        self._sites: collections.Counter = collections.Counter()
        self._show = None
        self._profiler: Optional[Any] = None
        self._profile_start = 0.0
        self.report: dict[str, Any] = {
            'device': torch.cuda.get_device_name() if self._cuda else 'cpu', 'torch': torch.__version__,
            'sync_debug': {'available': self._cuda, 'batches': list(self.sync_window)},
            'profile': {'batches': list(self.profile_window)},
        }

    def run_event(self, event: Event, state: State, logger: Logger) -> None:
        batch = int(state.timestamp.batch)
        if event == Event.BATCH_START:
            if batch == self.sync_window[0] and self._cuda:
                self._start_sync_debug()
            if batch == self.profile_window[0]:
                self._start_profile()
        elif event == Event.BATCH_END:  # the timestamp has moved on: ``batch`` batches are done
            if batch == self.sync_window[1] and self._show is not None:
                self._stop_sync_debug()
            if batch == self.profile_window[1] and self._profiler is not None:
                self._stop_profile()
        elif event == Event.FIT_END:
            self._write()

    # -- sync debug ---------------------------------------------------------------------------

    def _start_sync_debug(self) -> None:
        self._show = warnings.showwarning
        warnings.filterwarnings('always', message=f'.*{_SYNC_WARNING}')  # every occurrence, not once per line

        def show(message, category, filename, lineno, file=None, line=None):
            if _SYNC_WARNING in str(message):
                self._sites[(filename, lineno)] += 1
            else:
                self._show(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode('warn')

    def _stop_sync_debug(self) -> None:
        torch.cuda.set_sync_debug_mode('default')
        warnings.showwarning = self._show
        self._show = None
        steps = self.sync_window[1] - self.sync_window[0]
        self.report['sync_debug'].update({
            'waits_per_batch': sum(self._sites.values()) / steps,
            'sites': [{'where': f'{_short(f)}:{n}', 'code': linecache.getline(f, n).strip(), 'per_batch': c / steps}
                      for (f, n), c in self._sites.most_common()],
        })

    # -- profile -------------------------------------------------------------------------------

    def _start_profile(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self._cuda else [])
        if self._cuda:
            torch.cuda.synchronize()
        self._profiler = profile(activities=activities)
        self._profiler.__enter__()
        self._profile_start = time.perf_counter()

    def _stop_profile(self) -> None:
        if self._cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - self._profile_start
        profiler, self._profiler = self._profiler, None
        profiler.__exit__(None, None, None)
        steps = self.profile_window[1] - self.profile_window[0]
        profile = self.report['profile']
        profile.update({'wall_s_per_batch': wall / steps})
        if self._cuda:
            profile.update(device_profile(profiler.events(), steps=steps, wall_s=wall, top=self.top))
        else:
            rows = profiler.key_averages()
            cpu = sorted(((r.key, r.self_cpu_time_total, r.count) for r in rows), key=lambda x: -x[1])[:self.top]
            profile['top'] = [{'name': k[:120], 'ms_per_batch': us / 1e3 / steps, 'calls_per_batch': n / steps} for k, us, n in cpu]

    def _write(self) -> None:
        if self._show is not None:
            self._stop_sync_debug()
        if self._profiler is not None:
            self._stop_profile()
        if int(os.environ.get('RANK', '0')) != 0:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.out)), exist_ok=True)
        with open(self.out, 'w') as f:
            json.dump(self.report, f, indent=1)


def device_profile(events: Any, *, steps: int, wall_s: float, top: int) -> dict[str, Any]:
    """The GPU's side of a profiled window, from the profiler's events.

    Kernels and copies count; a range named on the host (``record_function``, the optimizer's
    step) also appears on the device's timeline spanning its kernels and the gaps between them, so
    it is listed apart and counts for neither the busy time nor the top kernels.

    Args:
        events: ``profiler.events()`` (each with ``device_type``, ``is_user_annotation``, ``name``, ``time_range`` in us).
        steps: batches in the window.
        wall_s: the window's wall time.
        top: kernels listed.
    """
    on_device = [e for e in events if str(getattr(e, 'device_type', '')).endswith('CUDA')]
    kernels = [e for e in on_device if not getattr(e, 'is_user_annotation', False)]
    spans: collections.Counter = collections.Counter()
    for e in on_device:
        if getattr(e, 'is_user_annotation', False):
            spans[e.name] += e.time_range.end - e.time_range.start
    per_name: dict[str, list[float]] = {}
    for e in kernels:
        entry = per_name.setdefault(e.name, [0.0, 0])
        entry[0] += e.time_range.end - e.time_range.start
        entry[1] += 1
    busy = busy_us([(e.time_range.start, e.time_range.end) for e in kernels]) / 1e6
    return {
        'gpu_busy_s_per_batch': busy / steps, 'gpu_idle_fraction': max(0.0, 1.0 - busy / wall_s),
        'top': [{'name': k[:120], 'ms_per_batch': us / 1e3 / steps, 'share_of_busy': us / 1e6 / busy if busy else None,
                 'calls_per_batch': n / steps} for k, (us, n) in sorted(per_name.items(), key=lambda x: -x[1][0])[:top]],
        'host_ranges_on_device': [{'name': k[:120], 'ms_per_batch': us / 1e3 / steps} for k, us in spans.most_common(5)],
    }


def busy_us(intervals: list[tuple[float, float]]) -> float:
    """The length of the union of ``(start, end)`` intervals: time the device ran anything (streams may overlap)."""
    total, reach = 0.0, float('-inf')
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def _short(path: str) -> str:
    for marker in ('site-packages/', '/t5composer/', '/recipes/'):
        if marker in path:
            return path.split(marker, 1)[1] if marker == 'site-packages/' else marker.strip('/') + '/' + path.split(marker, 1)[1]
    return path
