"""What a run logs (metrics.jsonl, TensorBoard) and the plots recipes/plot_runs.py draws from it."""

from __future__ import annotations

import json
import logging
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from test_training import tiny

from t5composer.config import config_from_dict
from t5composer.plotting import RunFileError, load_run, read_metrics, run_labels, smooth

REPO = Path(__file__).resolve().parents[1]
PLOT = REPO / 'recipes' / 'plot_runs.py'


def _write(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(''.join((r if isinstance(r, str) else json.dumps(r)) + '\n' for r in rows))
    return path


# --- reading metrics.jsonl -------------------------------------------------------------------


def test_reader_keeps_the_last_line_per_step_and_reads_nan_strings(tmp_path, caplog):
    # A run killed after step 3 with its checkpoint at step 2: the resumed run redoes steps 2-3.
    path = _write(tmp_path / 'metrics.jsonl', [
        {'step': 0, 'loss/train/total': 9.0},
        {'step': 1, 'loss/train/total': 8.0, 'lr-AdamWScale/group0': 0.001},
        {'step': 2, 'loss/train/total': 'nan'},
        {'step': 3, 'loss/train/total': 7.5, 'metrics/eval/LanguageNLL': 'inf'},
        {'step': 2, 'loss/train/total': 7.9},  # resumed
        {'step': 3, 'loss/train/total': 7.6},
        {'step': 4, 'loss/train/total': '-inf', 'note': 'text stays text'},
        '{"step": 5, "loss/train/tot',  # the kill cut the last line short
    ])
    with caplog.at_level(logging.WARNING, logger='t5composer.plotting'):
        series = read_metrics(str(path))
    assert series['loss/train/total'] == {0: 9.0, 1: 8.0, 2: 7.9, 3: 7.6, 4: -math.inf}
    assert series['metrics/eval/LanguageNLL'] == {3: math.inf}  # not redone: the first line's value stays
    assert series['lr-AdamWScale/group0'] == {1: 0.001}
    assert series['note'] == {4: 'text stays text'}
    assert 'skipped 1 line(s)' in caplog.text and '(line 8)' in caplog.text and str(path) in caplog.text


def test_load_run_picks_the_keys_and_a_run_without_eval_has_no_eval_curve(tmp_path):
    path = _write(tmp_path / 'sft' / 'metrics.jsonl', [
        {'step': 0, 'loss/train/total': 3.0, 'metrics/sni/LanguageNLL': 2.5},
        {'step': 1, 'loss/train/total': 'nan', 'nanot5/lr': 5e-5},
        {'step': 2, 'loss/train/total': 2.0, 'metrics/sni/LanguageNLL': 2.2, 'metrics/sni/RougeL': 30.0, 'nanot5/lr': 5e-5},
    ])
    run = load_run(str(path), label='sft')
    assert run.eval_key == 'metrics/sni/LanguageNLL' and run.eval_nll == ([0, 2], [2.5, 2.2])
    assert run.lr_key == 'nanot5/lr' and run.lr == ([1, 2], [5e-5, 5e-5])  # fallback for runs without LRMonitor
    assert run.loss[0] == [0, 1, 2] and math.isnan(run.loss[1][1])
    assert load_run(str(path.parent), label='x', max_step=1).eval_nll == ([0], [2.5])

    no_eval = load_run(str(_write(tmp_path / 'b' / 'metrics.jsonl', [
        {'step': 0, 'loss/train/total': 3.0}, {'step': 1, 'lr-Adafactor/group0': 0.01, 'lr-Adafactor/group1': 0.01},
    ]).parent), label='b')
    assert no_eval.eval_key is None and no_eval.eval_nll == ([], [])
    assert no_eval.lr_key == 'lr-Adafactor/group0' and no_eval.lr == ([1], [0.01])


def test_unusable_runs_are_named_with_the_fix(tmp_path):
    (tmp_path / 'no_metrics').mkdir()
    with pytest.raises(RunFileError, match=r'no_metrics has no metrics.jsonl: every training run with a local save_folder writes '
                                           r'<save_folder>/metrics.jsonl \(python recipes/train.py yamls/demo.yaml'):
        load_run(str(tmp_path / 'no_metrics'), label='x')
    with pytest.raises(RunFileError, match=r"nope does not exist. Pass a run's save folder"):
        load_run(str(tmp_path / 'nope'), label='x')
    empty = _write(tmp_path / 'empty' / 'metrics.jsonl', [])
    with pytest.raises(RunFileError, match=rf'{empty} is empty: the run has logged nothing yet'):
        load_run(str(empty.parent), label='x')
    other = _write(tmp_path / 'other.jsonl', [{'step': 1, 'accuracy': 0.5}])
    with pytest.raises(RunFileError, match=r"holds no training loss \('loss/train/total'\), eval NLL"):
        load_run(str(other), label='x')


def test_smooth_is_a_trailing_mean_that_skips_nan():
    assert smooth([1.0, 2.0, 3.0, 4.0], 1) == [1.0, 2.0, 3.0, 4.0]
    assert smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert smooth([2.0, math.nan, 4.0, 6.0], 3) == [2.0, 2.0, 3.0, 5.0]
    with pytest.raises(ValueError, match='at least 1'):
        smooth([1.0], 0)


def test_labels_are_folder_names_made_unique_by_their_parent(tmp_path):
    assert run_labels([str(tmp_path / 'a'), str(tmp_path / 'b' / 'metrics.jsonl')]) == ['a', 'b']
    assert run_labels([str(tmp_path / 'x' / 'demo'), str(tmp_path / 'y' / 'demo')]) == ['x/demo', 'y/demo']


# --- a real tiny run: what it logs, and its plot ----------------------------------------------


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    """12 batches, eval every 4, with TensorBoard and nothing declared about the lr."""
    from t5composer.run.build import build_trainer

    folder = tmp_path_factory.mktemp('runs') / 'tiny_adamwscale'
    cfg = config_from_dict(tiny(max_duration='12ba', eval_interval='4ba', save_folder=str(folder), save_interval='12ba',
                                loggers={'tensorboard': {'flush_interval': 5}}))
    assert 'lr_monitor' not in cfg.callbacks
    trainer = build_trainer(cfg)
    trainer.fit()
    trainer.close()
    return folder


@pytest.mark.slow
def test_metrics_file_has_loss_and_lr_every_step_and_eval_nll_at_eval_steps(tiny_run):
    series = read_metrics(str(tiny_run / 'metrics.jsonl'))
    # Composer logs a batch's loss at the step count before it, the lr after the step it set.
    assert sorted(series['loss/train/total']) == list(range(12))
    lr = series['lr-AdamWScale/group0']
    assert sorted(lr) == list(range(1, 13))
    assert max(lr.values()) == pytest.approx(1e-2) and lr[12] < lr[4]  # warmup to the peak, then the cosine
    assert sorted(series['metrics/eval/LanguageNLL']) == [4, 8, 12]
    assert all(len(json.loads(line)) > 1 for line in (tiny_run / 'metrics.jsonl').read_text().splitlines())  # no bare steps


@pytest.mark.slow
def test_tensorboard_events_land_in_the_save_folder(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tiny_run / 'tensorboard' / 'tiny'))  # <save_folder>/tensorboard/<run_name>
    events.Reload()
    assert [e.step for e in events.Scalars('loss/train/total')] == list(range(12))
    assert [e.step for e in events.Scalars('metrics/eval/LanguageNLL')] == [4, 8, 12]
    assert len(events.Scalars('lr-AdamWScale/group0')) == 12


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b'\x89PNG\r\n\x1a\n', 'not a PNG'
    return struct.unpack('>II', head[16:24])


@pytest.mark.slow
def test_plot_script_overlays_a_real_run_and_a_resumed_synthetic_one(tiny_run, tmp_path):
    # An Adafactor run that was resumed at step 6 (steps 6-7 twice), with a NaN loss and no eval.
    rows = [{'step': s, 'loss/train/total': 7.0 - 0.2 * s} for s in range(8)]
    rows += [{'step': s, 'loss/train/total': 'nan' if s == 9 else 7.1 - 0.2 * s, 'lr-Adafactor/group0': 0.01} for s in range(6, 12)]
    synthetic = _write(tmp_path / 'adafactor' / 'metrics.jsonl', rows)
    out = tmp_path / 'plots' / 'loss.png'
    result = subprocess.run([sys.executable, str(PLOT), str(tiny_run), str(synthetic), '--out', str(out), '--title', 'tiny'],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith('tiny_adamwscale: training loss at 12 steps (0-11, not smoothed), '
                               'metrics/eval/LanguageNLL at 3 steps (last ')
    assert lines[0].endswith('at step 12), lr-AdamWScale/group0 at 12 steps (peak 0.01)')
    assert lines[1] == ('adafactor: training loss at 12 steps (0-11, not smoothed), no eval points, '
                        'lr-Adafactor/group0 at 6 steps (peak 0.01)')
    assert lines[2] == f'wrote {out}'
    assert _png_size(out) == (900, 900)
    assert 20_000 < out.stat().st_size < 300_000  # three panels of lines, not an empty canvas

    missing = subprocess.run([sys.executable, str(PLOT), str(tiny_run), str(tmp_path / 'plots')], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and f"error: {tmp_path / 'plots'} has no metrics.jsonl" in missing.stderr
    assert 'Traceback' not in missing.stderr


@pytest.mark.slow
def test_a_declared_lr_monitor_is_not_doubled():
    from composer.callbacks import LRMonitor

    from t5composer.run.build import build_trainer

    trainer = build_trainer(config_from_dict(tiny(callbacks={'lr_monitor': {}})))
    try:
        assert sum(isinstance(c, LRMonitor) for c in trainer.state.callbacks) == 1
    finally:
        trainer.close()


def test_tensorboard_log_dir_defaults_to_the_save_folder():
    from t5composer.run.build import with_default_log_dirs

    section = {'tensorboard': None, 'file': {}}
    assert with_default_log_dirs(section, 'runs/x') == {'tensorboard': {'log_dir': 'runs/x/tensorboard'}, 'file': {}}
    assert section == {'tensorboard': None, 'file': {}}  # the config itself is untouched
    mine = {'tensorboard': {'log_dir': '/tb', 'flush_interval': 5}}
    assert with_default_log_dirs(mine, 'runs/x') == mine
    assert with_default_log_dirs({'tensorboard': {}}, None) == {'tensorboard': {}}  # no local save folder: Composer's default
