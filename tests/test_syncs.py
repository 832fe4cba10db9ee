"""No wait for the device in a steady-state training step, counted on a real Composer run on CPU.

Every tensor method that makes the host wait for the device on a GPU (``.item()``, ``.tolist()``,
``.cpu()``, ``.numpy()``, ``.to('cpu')``, ``float(t)``, ``int(t)``, ``bool(t)``, ``t.__index__``;
a tensor built from host numbers on a GPU, ``torch.tensor(x, device='cuda')``, waits too, and
only the GPU check sees it)
is wrapped to count its calls by origin: the innermost caller outside torch is this project's
code (``t5composer/``), Composer, or something else. A tiny pre-training run with gradient
accumulation, clipping, ``nanot5_log``, ``speed_monitor``, checkpoints and ``metrics.jsonl`` then
shows, batch by batch: no call from this project's code outside the logging and checkpoint
batches, and no call at all between the first backward pass of a batch and the return of the
optimizer step. The same counter on Composer's closure path finds its ``.item()`` there, so the
window is watched. On a GPU, ``bench/gpu_check.sh`` reports what is left with
``torch.cuda.set_sync_debug_mode('warn')``.
"""

from __future__ import annotations

import collections
import os
import sys
from pathlib import Path

import pytest
import torch
from composer.core import Callback, Event

from t5composer.config import config_from_dict
from t5composer.run.build import build_trainer
from test_training import tiny

pytestmark = pytest.mark.usefixtures('one_thread')

REPO = Path(__file__).resolve().parents[1]
PROJECT = str(REPO / 't5composer') + os.sep
TORCH = os.path.dirname(torch.__file__) + os.sep
COMPOSER = os.path.dirname(__import__('composer').__file__) + os.sep
SYNC_METHODS = ('item', 'tolist', 'cpu', 'numpy', '__float__', '__int__', '__bool__', '__index__')


def _origin() -> tuple[str, str]:
    """(who, 'file:function') of the innermost caller outside torch and this module."""
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.startswith(TORCH) or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    if frame is None:
        return 'torch', '?'
    path = frame.f_code.co_filename
    who = 'project' if path.startswith(PROJECT) else 'composer' if path.startswith(COMPOSER) else 'other'
    return who, f'{os.path.basename(path)}:{frame.f_code.co_name}'


class SyncCounter(Callback):
    """Counts the calls per batch (1-based) and origin, and those inside the backward-to-optimizer window."""

    def __init__(self) -> None:
        self.batch = 0
        self.in_window = False
        self.calls: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
        self.window_calls: list[tuple[int, str, str]] = []
        self._saved: dict[str, object] = {}

    def install(self, optimizer) -> None:
        for name in SYNC_METHODS + ('to',):
            original = getattr(torch.Tensor, name)
            self._saved[name] = original
            setattr(torch.Tensor, name, self._wrap(name, original))
        step = optimizer.step

        def step_then_close_window(*args, **kwargs):
            out = step(*args, **kwargs)
            self.in_window = False  # the optimizer's work has been issued
            return out

        optimizer.step = step_then_close_window

    def uninstall(self) -> None:
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)

    def _wrap(self, name, original):
        counter = self

        def wrapped(tensor, *args, **kwargs):
            if name != 'to' or _to_cpu(args, kwargs):
                who, where = _origin()
                counter.calls[counter.batch][(who, f'{where} .{name}')] += 1
                if counter.in_window:
                    counter.window_calls.append((counter.batch, who, f'{where} .{name}'))
            return original(tensor, *args, **kwargs)

        return wrapped

    def run_event(self, event, state, logger) -> None:
        if event == Event.BATCH_START:
            self.batch = int(state.timestamp.batch) + 1
        elif event == Event.AFTER_BACKWARD:
            self.in_window = True


def _to_cpu(args, kwargs) -> bool:
    # On a CPU run every device is the CPU: count only an explicit copy to the host ('cpu'),
    # not .to(p.device), which stays on the device on a GPU.
    target = kwargs.get('device', args[0] if args else None)
    return isinstance(target, str) and target.split(':')[0] == 'cpu'


def _counted_run(tmp_path, **overrides) -> SyncCounter:
    counter = SyncCounter()
    settings = dict(
        run_name='syncs', max_duration='8ba', global_train_batch_size=4, device_train_microbatch_size=2,
        eval_interval='8ba', save_folder=str(tmp_path / 'run'), save_interval='4ba',
        callbacks={'nanot5_log': {'interval': 4}, 'speed_monitor': {'window_size': 2}},
    )
    settings.update(overrides)
    trainer = build_trainer(config_from_dict(tiny(**settings)), extra_callbacks=(counter,))
    counter.install(trainer.state.optimizers[0])
    try:
        trainer.fit()
    finally:
        counter.uninstall()
        trainer.close()
    return counter


STEADY = (2, 3, 5, 6, 7)  # not the first batch, nor those that log a line or write a checkpoint (4, 8)


@pytest.mark.slow
def test_no_sync_from_this_project_and_none_before_the_optimizer_step(tmp_path, capsys):
    counter = _counted_run(tmp_path)
    with capsys.disabled():  # what is left per steady batch, for the record (Composer's)
        print('\nsteady-state batch 3, calls by origin:', dict(counter.calls[3]))
    for batch in STEADY:
        ours = {k: n for k, n in counter.calls[batch].items() if k[0] == 'project'}
        assert not ours, (batch, ours)
    assert not counter.window_calls, counter.window_calls[:10]
    # The counter sees this project's calls where they belong: the nanot5 line and the
    # checkpoint (the guard's and metrics.jsonl's reads) of batch 4.
    logged = {where for (who, where) in counter.calls[4] if who == 'project'}
    assert any('nanot5_log.py' in w for w in logged) and any('nonfinite_guard.py' in w for w in logged), logged
    # What Composer has left in a steady batch, all after the optimizer step: its "dataloader
    # exhausted on any rank?" flag when it fetches the next batch, the batch size summed over
    # ranks before the forward pass, and SpeedMonitor's FLOPs (a new wait would show up here).
    composer = {where for (who, where) in counter.calls[3] if who == 'composer'}
    assert composer == {'trainer.py:_iter_dataloader .item', 'trainer.py:_train_microbatches .item',
                        'speed_monitor.py:batch_end .item'}, composer


@pytest.mark.slow
def test_the_counter_sees_composers_closure_wait(tmp_path, monkeypatch):
    # Composer's own path for every precision but fp16 runs the step as a closure whose
    # .item() waits for the backward pass inside optimizer.step(): the window catches it.
    from t5composer.trainer import NonBlockingTrainer

    monkeypatch.setattr(NonBlockingTrainer, '_use_closures', lambda self: True)
    counter = _counted_run(tmp_path, max_duration='4ba', save_interval='100ba')
    assert {(b, who, where) for b, who, where in counter.window_calls} >= {(2, 'composer', 'trainer.py:<lambda> .item')}


@pytest.mark.slow
def test_a_mixture_of_denoisers_adds_no_sync(tmp_path):
    """UL2's batches (one group per denoiser, token-weighted microbatches): still none of ours, none in the window."""
    counter = _counted_run(tmp_path, data={**tiny()['data'], 'objective': {'preset': 'ul2'}})
    for batch in STEADY:
        ours = {k: n for k, n in counter.calls[batch].items() if k[0] == 'project'}
        assert not ours, (batch, ours)
    assert not counter.window_calls, counter.window_calls[:10]
