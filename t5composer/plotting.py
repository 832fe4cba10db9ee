"""Read runs' metrics.jsonl files and draw training loss, eval NLL and learning rate side by side.

The picture nanoT5's README compares optimizers and schedules with; ``recipes/plot_runs.py`` is
the command. Imports neither torch nor Composer, so it runs in a second on any machine that has
the files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

log = logging.getLogger(__name__)

__all__ = ['LOSS_KEY', 'RunCurves', 'RunFileError', 'read_metrics', 'metrics_path', 'load_run', 'run_labels', 'smooth',
           'default_window', 'plot_runs']

LOSS_KEY = 'loss/train/total'
_EVAL_NLL = re.compile(r'^metrics/([^/]+)/LanguageNLL$')  # metrics/eval/... for C4, metrics/sni/... for SNI
_LR = re.compile(r'^lr-(.+)/group0$')  # Composer's LRMonitor, which build_trainer always adds
_NON_FINITE = {'nan': math.nan, 'inf': math.inf, '-inf': -math.inf}  # MetricsJSONL's spelling (JSON has none)
_PRODUCER = ('every training run with a local save_folder writes <save_folder>/metrics.jsonl '
             '(python recipes/train.py yamls/demo.yaml writes runs/demo/metrics.jsonl)')


class RunFileError(ValueError):
    """A run directory or metrics file that cannot be plotted; the message says why and what to do."""


def read_metrics(path: str) -> dict[str, dict[int, Any]]:
    """Every metric in a metrics.jsonl file as ``{key: {step: value}}``; the last line for a step wins.

    A resumed run appends, so the steps between its last checkpoint and the kill appear twice; the
    later line (from the run that went on) is kept. The strings ``'nan'``, ``'inf'`` and ``'-inf'``
    that :class:`~t5composer.loggers.MetricsJSONL` writes for non-finite floats come back as
    floats. A line that is not a JSON object with an integer step (a killed run's last line can be
    cut short) is skipped with a warning naming the file and line.

    Args:
        path: the metrics.jsonl file.
    """
    series: dict[str, dict[int, Any]] = {}
    bad: list[int] = []
    with open(path, encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            step = row.get('step') if isinstance(row, dict) else None
            if not isinstance(step, int) or isinstance(step, bool):
                bad.append(number)
                continue
            for key, value in row.items():
                if key != 'step':
                    series.setdefault(key, {})[step] = _NON_FINITE.get(value, value) if isinstance(value, str) else value
    if bad:
        shown = ', '.join(map(str, bad[:5])) + (f' and {len(bad) - 5} more' if len(bad) > 5 else '')
        log.warning('%s: skipped %d line(s) that are not a JSON object with an integer step (line %s).', path, len(bad), shown)
    return series


def metrics_path(run: str) -> str:
    """The metrics.jsonl of ``run`` (a run's save folder, or the file itself); RunFileError if absent."""
    if os.path.isdir(run):
        path = os.path.join(run, 'metrics.jsonl')
        if not os.path.isfile(path):
            raise RunFileError(f'{run} has no metrics.jsonl: {_PRODUCER}. Pass such a folder or the file itself.')
        return path
    if os.path.isfile(run):
        return run
    raise RunFileError(f'{run} does not exist. Pass a run\'s save folder (e.g. runs/demo) or its metrics.jsonl; {_PRODUCER}.')


@dataclass
class RunCurves:
    """The three curves of one run; each is (steps, values) sorted by step, possibly empty."""

    label: str
    path: str
    loss: tuple[list[int], list[float]] = field(default_factory=lambda: ([], []))
    eval_key: Optional[str] = None
    eval_nll: tuple[list[int], list[float]] = field(default_factory=lambda: ([], []))
    lr_key: Optional[str] = None
    lr: tuple[list[int], list[float]] = field(default_factory=lambda: ([], []))


def _curve(values: dict[int, Any], steps: tuple[Optional[int], Optional[int]]) -> tuple[list[int], list[float]]:
    first, last = steps
    points = sorted((s, float(v)) for s, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                    and (first is None or s >= first) and (last is None or s <= last))
    # inf would wreck the axis limits; matplotlib leaves a gap at NaN, as for a skipped batch.
    return [s for s, _ in points], [v if math.isfinite(v) else math.nan for _, v in points]


def _pick(series: dict[str, Any], pattern: re.Pattern, preferred: Optional[str] = None) -> Optional[str]:
    if preferred is not None and preferred in series:
        return preferred
    found = sorted(k for k in series if pattern.match(k))
    return found[0] if found else None


def load_run(run: str, *, label: str, min_step: Optional[int] = None, max_step: Optional[int] = None) -> RunCurves:
    """Training loss, eval NLL and learning rate of one run.

    Args:
        run: the run's save folder or its metrics.jsonl.
        label: the name shown in the legend.
        min_step: drop points before this step (None: keep all); skips the first steep drop of the loss.
        max_step: drop points after this step (None: keep all).
    """
    path = metrics_path(run)
    if os.path.getsize(path) == 0:
        raise RunFileError(f'{path} is empty: the run has logged nothing yet (it was stopped before its first step, or is '
                           'still starting). Plot it once it has trained a few steps.')
    series = read_metrics(path)
    steps = (min_step, max_step)
    eval_key = _pick(series, _EVAL_NLL, 'metrics/eval/LanguageNLL')
    lr_key = _pick(series, _LR)
    if lr_key is None and 'nanot5/lr' in series:
        lr_key = 'nanot5/lr'  # runs from before the lr was always logged: the nanot5_log callback's lr
    if LOSS_KEY not in series and eval_key is None and lr_key is None:
        raise RunFileError(f"{path} holds no training loss ('{LOSS_KEY}'), eval NLL ('metrics/<evaluator>/LanguageNLL') or "
                           "learning rate ('lr-<Optimizer>/group0'): it is not a metrics.jsonl written by t5composer training.")
    return RunCurves(
        label=label, path=path,
        loss=_curve(series.get(LOSS_KEY, {}), steps),
        eval_key=eval_key, eval_nll=_curve(series[eval_key], steps) if eval_key else ([], []),
        lr_key=lr_key, lr=_curve(series[lr_key], steps) if lr_key else ([], []),
    )


def run_labels(runs: Sequence[str]) -> list[str]:
    """Legend names: each run's folder name, with its parent when two runs share a name."""
    files = [os.path.isfile(r) or r.endswith('.jsonl') for r in runs]
    folders = [os.path.dirname(os.path.abspath(r)) if is_file else os.path.abspath(r) for r, is_file in zip(runs, files)]
    labels = [os.path.basename(f) for f in folders]
    if len(set(labels)) < len(labels):
        labels = [os.path.join(os.path.basename(os.path.dirname(f)), os.path.basename(f)) for f in folders]
    if len(set(labels)) < len(labels):
        labels = [f'{label} ({i + 1})' for i, label in enumerate(labels)]
    return labels


def default_window(points: int) -> int:
    """Smoothing window for a loss curve of ``points`` steps: nanoT5's 100, or a 30th of a shorter run."""
    return max(1, min(100, round(points / 30)))


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start), ignoring NaN.

    Trailing rather than centred, like the loss nanoT5 prints (the mean since the last line).

    Args:
        values: the raw curve.
        window: points per mean; 1 returns the values unchanged.
    """
    if window < 1:
        raise ValueError(f'the smoothing window must be at least 1, got {window}.')
    out, total, count = [], 0.0, 0
    for i, v in enumerate(values):
        if not math.isnan(v):
            total, count = total + v, count + 1
        if i >= window:
            old = values[i - window]
            if not math.isnan(old):
                total, count = total - old, count - 1
        out.append(total / count if count else math.nan)
    return out


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _log_scale(ax: Any, values: list[float], yscale: str) -> bool:
    """Put ``ax`` on a log scale when asked, or (auto) when ``values`` span more than a factor of 3."""
    if yscale == 'linear' or not values or min(values) <= 0:
        return False
    if yscale == 'auto' and max(values) / min(values) <= 3:
        return False
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale('log')

    # Plain numbers (2, 3, 5, 10, 20) rather than 2x10^0; every tick between decades labelled
    # would overlap, so 1, 2, 3 and 5 times a power of ten only.
    def label(v: float, _: Any) -> str:
        mantissa = round(v / 10 ** math.floor(math.log10(v)), 6) if v > 0 else 0
        return f'{v:g}' if mantissa in (1, 2, 3, 5) else ''

    ax.yaxis.set_major_formatter(FuncFormatter(label))
    ax.yaxis.set_minor_formatter(FuncFormatter(label))
    return True


def plot_runs(
    runs: Sequence[RunCurves],
    *,
    out: str,
    window: Optional[int] = None,
    title: Optional[str] = None,
    yscale: str = 'auto',
) -> list[str]:
    """Draw the runs' training loss, eval NLL and learning rate in three panels sharing the step axis.

    Args:
        runs: the curves (see :func:`load_run`); one colour per run in every panel.
        out: the image to write (the format follows the extension: .png, .pdf, .svg).
        window: loss smoothing window in steps; None picks :func:`default_window` per run.
        title: the figure's title.
        yscale: y axis of the loss and eval panels: ``linear``, ``log``, or ``auto`` (log for a
            panel whose values span more than a factor of 3, as from the reference's first loss
            of ~60 down to ~2).

    Returns:
        One line per run saying what was drawn.
    """
    from matplotlib.figure import Figure  # no pyplot: no display, no global state (Agg canvas)
    from matplotlib.ticker import FuncFormatter

    if yscale not in ('auto', 'linear', 'log'):
        raise ValueError(f"yscale must be 'auto', 'linear' or 'log', got {yscale!r}.")
    fig = Figure(figsize=(9, 9), dpi=100, layout='constrained')
    ax_loss, ax_eval, ax_lr = fig.subplots(3, 1, sharex=True, height_ratios=[2.2, 1.6, 1])
    colors = [f'C{i % 10}' for i in range(len(runs))]
    smoothed_all: list[float] = []
    eval_all: list[float] = []
    report = []
    for run, color in zip(runs, colors):
        steps, loss = run.loss
        w = window if window is not None else default_window(len(steps))
        parts = []
        if steps:
            smoothed = smooth(loss, w)
            smoothed_all += _finite(smoothed)
            if w > 1:  # the raw loss faintly behind every smoothed curve: its spread, without hiding them
                ax_loss.plot(steps, loss, color=color, alpha=0.15, linewidth=0.6, zorder=1)
            ax_loss.plot(steps, smoothed, color=color, linewidth=1.6, label=run.label, zorder=3)
            parts.append(f'training loss at {len(steps)} steps ({steps[0]}-{steps[-1]}, '
                         + (f'mean of the last {w})' if w > 1 else 'not smoothed)'))
        else:
            ax_loss.plot([], [], color=color, label=run.label)  # keeps the run in the legend
            parts.append('no training loss')
        e_steps, nll = run.eval_nll
        if e_steps:
            ax_eval.plot(e_steps, nll, color=color, marker='o', markersize=4, linewidth=1.2)
            eval_all += _finite(nll)
            parts.append(f'{run.eval_key} at {len(e_steps)} steps (last {nll[-1]:.4g} at step {e_steps[-1]})')
        else:
            parts.append('no eval points')
        l_steps, lr = run.lr
        if l_steps:
            ax_lr.plot(l_steps, lr, color=color, linewidth=1.4)
            peak = max(_finite(lr), default=math.nan)
            parts.append(f'{run.lr_key} at {len(l_steps)} steps (peak {peak:.3g})')
        else:
            parts.append('no learning rate')
        report.append(f'{run.label}: ' + ', '.join(parts))

    ax_loss.set_ylabel('training loss' + (' (log scale)' if _log_scale(ax_loss, smoothed_all, yscale) else ''))
    ax_eval.set_ylabel('eval NLL' + (' (log scale)' if _log_scale(ax_eval, eval_all, yscale) else ''))
    eval_keys = sorted({r.eval_key for r in runs if r.eval_key and r.eval_nll[0]})
    if eval_keys:
        ax_eval.set_title(', '.join(eval_keys), fontsize=8, loc='right', color='0.4')
    else:
        ax_eval.text(0.5, 0.5, 'no eval points', transform=ax_eval.transAxes, ha='center', va='center', color='0.5')
    ax_lr.set_ylabel('learning rate')
    ax_lr.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f'{v:.3g}'))  # 0.01, 0.005, 1e-05: no offset text
    ax_lr.set_xlabel('step')
    for ax in (ax_loss, ax_eval, ax_lr):
        ax.grid(True, alpha=0.3)
    ax_loss.legend(loc='upper right', fontsize=9)
    if title:
        fig.suptitle(title)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out)
    return report
