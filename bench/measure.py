"""Timing and peak-memory helpers shared by the benchmark cases.

Times are the median over repeats after warm-up runs. Peak memory: on CUDA
``torch.cuda.max_memory_allocated``; on CPU the process's peak resident set size (VmHWM, reset
before each variant where Linux allows it; otherwise ``getrusage``'s lifetime maximum, which only
grows, so variants run smallest first).
"""

from __future__ import annotations

import resource
import statistics
import time
from typing import Any, Callable, Sequence

import torch


def sync(device: str) -> None:
    """Wait for queued CUDA work so the clock measures it (no-op on CPU)."""
    if device == 'cuda':
        torch.cuda.synchronize()


def reset_peak_memory(device: str) -> None:
    """Start a new peak-memory window (CUDA allocator stats, or Linux VmHWM)."""
    if device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        return
    try:  # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) of this process
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        pass


def peak_memory_mib(device: str) -> float:
    """Peak memory since the last ``reset_peak_memory`` in MiB (see the module docstring)."""
    if device == 'cuda':
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def measure(fn: Callable[[], Any], *, device: str, warmup: int, repeats: int, warmup_fn: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Run ``fn`` ``repeats`` times after ``warmup`` runs of ``warmup_fn`` (default ``fn``).

    Args:
        fn: the work to time.
        device: 'cpu' or 'cuda' (CUDA work is synchronised before reading the clock).
        warmup: untimed runs first.
        repeats: timed runs.
        warmup_fn: a cheaper stand-in for the warm-up runs (same kernels, less work).

    Returns:
        ``{'times_s': [...], 'median_s': ..., 'peak_mib': ..., 'result': last return value}``.
    """
    for _ in range(warmup):
        (warmup_fn or fn)()
    sync(device)
    reset_peak_memory(device)
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return {'times_s': times, 'median_s': statistics.median(times), 'peak_mib': peak_memory_mib(device), 'result': result}


def format_table(columns: Sequence[tuple[str, str, str]], rows: list[dict[str, Any]]) -> str:
    """``rows`` as a Markdown table.

    Args:
        columns: (row key, header, format string) per column; a row without the key shows '-'.
        rows: the case's result rows.
    """
    cells = [[fmt.format(row[key]) if row.get(key) is not None else '-' for key, _, fmt in columns] for row in rows]
    headers = [header for _, header, _ in columns]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ['| ' + ' | '.join(h.ljust(w) for h, w in zip(headers, widths)) + ' |',
             '|' + '|'.join('-' * (w + 2) for w in widths) + '|']
    lines += ['| ' + ' | '.join(x.ljust(w) for x, w in zip(c, widths)) + ' |' for c in cells]
    return '\n'.join(lines)
