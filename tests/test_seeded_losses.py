"""The losses of a seeded tiny run are those the code gave before the training loop was made sync-free.

Recorded (``state.loss`` after every microbatch) with the code before issue 12's changes (git
0d585d1: Composer's closure path, its GradientClipping, the per-parameter adamwscale loop, the
guard reading its flags every batch). Since then: Composer's non-closure path, one shared
gradient norm for clipping, the device-side skip flag, the multi-tensor step, device-side logging.
On this machine the run without weight decay is bit for bit the same; with weight decay the
decay is one multiply-add where it was a fused add (float rounding, 7e-8 after 16 microbatches).
The compiled optimizer step (inductor's kernels) is equal to float rounding, and so are our
Triton kernels (the fused attention and the fused optimizer update, in Triton's interpreter).
"""

from __future__ import annotations

import json

import pytest
from composer.core import Callback, Event

from t5composer.config import config_from_dict
from t5composer.plotting import read_metrics
from t5composer.run.build import build_trainer
from test_training import tiny

pytestmark = pytest.mark.usefixtures('one_thread')

PLAIN = dict(max_duration='8ba')
ACCUMULATING_WITH_DECAY = dict(max_duration='8ba', device_train_microbatch_size=2,
                               optimizer={'name': 'adamwscale', 'lr': 1e-2, 'weight_decay': 0.01})

BEFORE = {
    'plain': [7.1006975173950195, 7.09780216217041, 7.0416975021362305, 6.652706623077393, 6.685429573059082,
              6.558398723602295, 6.631051540374756, 6.433836936950684],
    'accumulating_with_decay': [7.143738746643066, 7.0576581954956055, 7.018234729766846, 7.177260875701904,
                                6.920085430145264, 7.163059234619141, 6.6080708503723145, 6.697147369384766,
                                6.611161708831787, 6.759435176849365, 6.6009297370910645, 6.515739917755127,
                                6.676442623138428, 6.585391044616699, 6.3754801750183105, 6.491427898406982],
}


class _Losses(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def run_event(self, event, state, logger) -> None:
        if event == Event.AFTER_LOSS:
            self.losses.append(state.loss.detach().double().item())


def _losses(tmp_path=None, **settings) -> list[float]:
    recorder = _Losses()
    if tmp_path is not None:
        settings.update(save_folder=str(tmp_path / 'run'), save_interval='4ba')
    trainer = build_trainer(config_from_dict(tiny(**settings)), extra_callbacks=(recorder,))
    trainer.fit()
    trainer.close()
    return recorder.losses


@pytest.mark.slow
def test_seeded_losses_are_unchanged(tmp_path):
    plain = _losses(tmp_path, **PLAIN)
    assert plain == pytest.approx(BEFORE['plain'], rel=1e-6, abs=0)
    # metrics.jsonl keeps its content: one training loss per step, the number Composer logged.
    rows = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
    assert [r['loss/train/total'] for r in rows if 'loss/train/total' in r] == plain
    assert sorted(read_metrics(str(tmp_path / 'run' / 'metrics.jsonl'))['lr-AdamWScale/group0']) == list(range(1, 9))
    assert _losses(**ACCUMULATING_WITH_DECAY) == pytest.approx(BEFORE['accumulating_with_decay'], rel=1e-6, abs=0)


@pytest.mark.slow
def test_seeded_losses_with_the_compiled_optimizer_step():
    compiled = _losses(**PLAIN, optimizer={'name': 'adamwscale', 'lr': 1e-2, 'compiled': True})
    assert compiled == pytest.approx(BEFORE['plain'], rel=1e-6, abs=0)


@pytest.mark.slow
@pytest.mark.usefixtures('large_interpreter_tiles')
def test_seeded_losses_with_our_triton_kernels():
    """Our fused attention (model.attn_impl=triton) and fused optimizer update (optimizer.fused=true),
    in Triton's interpreter on a CPU: the default run's losses, to float rounding."""
    # Four steps and no evaluation (it does not enter the losses): the interpreter is slow.
    short = dict(max_duration='4ba', eval_interval='100ba')
    default = _losses(**short)
    ours = _losses(**short, model={**tiny()['model'], 'attn_impl': 'triton'},
                   optimizer={'name': 'adamwscale', 'lr': 1e-2, 'fused': True})
    assert ours == pytest.approx(default, rel=1e-6, abs=0) and ours != default[:1] * 4
