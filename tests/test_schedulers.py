"""Tests for nanoT5's learning-rate schedules as Composer schedulers."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from composer.core import Time, Timestamp
from composer.optim.scheduler import compile_composer_scheduler

from t5composer.optim.schedulers import (
    SCHEDULERS,
    ConstantScheduler,
    InverseSqrtScheduler,
    NanoT5CosineScheduler,
    build_scheduler,
    optimizer_steps_done,
    register_scheduler,
)


def fake_state(step: int, max_duration: str | None = '1000ba', dataloader_len: int | None = None):
    """A state as Composer shows it to schedulers once ``step`` optimizer steps are done.

    Composer evaluates schedulers right after a batch's optimizer step and before advancing
    the timestamp, so after ``step >= 1`` steps ``timestamp.batch == step - 1`` and a batch is set;
    before training (``step == 0``) no batch has been seen.
    """
    return SimpleNamespace(
        timestamp=Timestamp(batch=max(step - 1, 0)),
        batch=None if step == 0 else object(),
        max_duration=None if max_duration is None else Time.from_timestring(max_duration),
        dataloader_len=None if dataloader_len is None else Time(dataloader_len, 'ba'),
    )


def test_optimizer_steps_done():
    assert optimizer_steps_done(SimpleNamespace(timestamp=Timestamp(batch=0), batch=None)) == 0
    assert optimizer_steps_done(SimpleNamespace(timestamp=Timestamp(batch=0), batch={'x': 1})) == 1
    assert optimizer_steps_done(SimpleNamespace(timestamp=Timestamp(batch=41), batch={'x': 1})) == 42
    for s in (0, 1, 7):
        assert optimizer_steps_done(fake_state(s)) == s


# Independent transcriptions of nanoT5.md.
def cosine_lr(s, *, base, final, warmup, total):
    if s <= warmup:
        return base * (0.5 + 0.5 * s / warmup)
    return final + (base - final) * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))) / 2


def legacy_lr(s, *, total):
    n1 = math.ceil(0.9 * total)
    if s == 0:
        return 1e-2
    if s < n1:
        return min(1e-2, 1 / math.sqrt(s))
    start = min(1e-2, 1 / math.sqrt(n1))
    return start - start * (s - n1) / (total - n1)


BASE, FINAL, W, T = 2e-2, 1e-5, 100, 1000


@pytest.mark.parametrize('s', [0, 1, W - 1, W, W + 1, (W + T) // 2, T - 1, T])
def test_cosine_values(s):
    sched = NanoT5CosineScheduler(t_warmup=f'{W}ba', base_lr=BASE, final_lr=FINAL)
    got = sched(fake_state(s, f'{T}ba')) * BASE
    assert got == pytest.approx(cosine_lr(s, base=BASE, final=FINAL, warmup=W, total=T), rel=1e-12, abs=1e-15)


def test_cosine_landmarks_and_explicit_t_max():
    sched = NanoT5CosineScheduler(t_warmup='10000ba', base_lr=BASE, t_max='65536ba')
    state = lambda s: fake_state(s, max_duration='99999ba')  # t_max wins over max_duration
    assert sched(state(0)) == pytest.approx(0.5)
    assert sched(state(10000)) == pytest.approx(1.0)
    assert sched(state(65536)) * BASE == pytest.approx(1e-5)
    assert sched(state(70000)) * BASE == pytest.approx(1e-5)  # held at final past T
    mid = (10000 + 65536) / 2
    assert sched(state(int(mid))) * BASE == pytest.approx((BASE + 1e-5) / 2, rel=1e-3)


def test_cosine_duration_and_epoch_units():
    sched = NanoT5CosineScheduler(t_warmup='0.1dur', base_lr=BASE)
    assert sched(fake_state(50, '1000ba')) == pytest.approx(0.75)  # W = 100
    sched = NanoT5CosineScheduler(t_warmup='1ep', base_lr=BASE)
    assert sched(fake_state(50, '10ep', dataloader_len=100)) == pytest.approx(0.75)  # W = 100, T = 1000
    expected = cosine_lr(550, base=BASE, final=FINAL, warmup=100, total=1000) / BASE
    assert sched(fake_state(550, '10ep', dataloader_len=100)) == pytest.approx(expected)


def test_cosine_ssr_scales_durations():
    sched = NanoT5CosineScheduler(t_warmup='100ba', base_lr=BASE, t_max='1000ba')
    for s in (0, 50, 100, 300, 999):
        scaled = sched(fake_state(2 * s, max_duration='2000ba'), ssr=2.0)
        assert scaled == pytest.approx(sched(fake_state(s)), rel=1e-12)


def test_cosine_no_warmup():
    sched = NanoT5CosineScheduler(t_warmup='0ba', base_lr=BASE, final_lr=0.0)
    assert sched(fake_state(0)) == pytest.approx(1.0)
    assert sched(fake_state(500)) == pytest.approx(0.5)


@pytest.mark.parametrize('total', [1000, 65536, 17])
def test_legacy_values(total):
    n1 = math.ceil(0.9 * total)
    sched = InverseSqrtScheduler(base_lr=BASE)
    steps = {0, 1, 2, 100, 9999, 10000, 10001, n1 - 1, n1, n1 + 1, (n1 + total) // 2, total - 1, total}
    for s in sorted(x for x in steps if 0 <= x <= total):
        got = sched(fake_state(s, f'{total}ba')) * BASE
        assert got == pytest.approx(legacy_lr(s, total=total), rel=1e-12, abs=1e-18), s
    assert sched(fake_state(total, f'{total}ba')) == 0.0


def test_legacy_is_independent_of_base_lr():
    a = InverseSqrtScheduler(base_lr=2e-2)
    b = InverseSqrtScheduler(base_lr=1e-3)
    for s in (0, 5, 20000, 60000):
        state = fake_state(s, '65536ba')
        assert a(state) * 2e-2 == pytest.approx(b(state) * 1e-3)
    # The cap: 1/sqrt(s) is below 1e-2 only from s = 10001 on.
    assert a(fake_state(10000, '65536ba')) * 2e-2 == pytest.approx(1e-2)
    assert a(fake_state(40000, '65536ba')) * 2e-2 == pytest.approx(1 / math.sqrt(40000))


def test_legacy_ssr():
    sched = InverseSqrtScheduler(base_lr=BASE, t_max='1000ba')
    assert sched(fake_state(950, '2000ba'), ssr=2.0) * BASE == pytest.approx(legacy_lr(950, total=2000))


def test_constant():
    assert ConstantScheduler()(fake_state(123)) == 1.0
    assert build_scheduler('constant', base_lr=5e-5)(fake_state(0), 2.0) == 1.0


def test_multiplier_through_composer_lambda_lr():
    # Composer wraps a scheduler in LambdaLR: lr = initial lr * multiplier.
    param = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([param], lr=BASE)
    state = fake_state(0, f'{T}ba')
    state.optimizers = [opt]
    lr_sched = compile_composer_scheduler(NanoT5CosineScheduler(t_warmup=f'{W}ba', base_lr=BASE), state)
    assert opt.param_groups[0]['lr'] == pytest.approx(BASE / 2)
    for s in (1, 2, 3):
        done = fake_state(s, f'{T}ba')
        state.timestamp, state.batch = done.timestamp, done.batch
        opt.step()  # no grads: a no-op that keeps torch's call-order check quiet
        lr_sched.step()
        assert opt.param_groups[0]['lr'] == pytest.approx(cosine_lr(s, base=BASE, final=FINAL, warmup=W, total=T))


@pytest.mark.parametrize('name', ['cosine', 'legacy'])
def test_lr_per_step_in_a_real_composer_run(name):
    # Optimizer step i (0-based) must run with lr(i), as in nanoT5's torch loop.
    from composer import Trainer
    from composer.core import Callback
    from composer.models import ComposerClassifier

    from t5composer.optim import build_optimizer

    class RecordLr(Callback):
        def __init__(self):
            self.lrs = {}

        def before_train_batch(self, state, logger):
            self.lrs[int(state.timestamp.batch)] = state.optimizers[0].param_groups[0]['lr']

    torch.manual_seed(0)
    model = ComposerClassifier(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)), num_classes=2)
    data = torch.utils.data.TensorDataset(torch.randn(48, 4), torch.randint(0, 2, (48,)))
    steps, warmup = 12, 4
    options = {'t_warmup': f'{warmup}ba'} if name == 'cosine' else {}
    record = RecordLr()
    trainer = Trainer(
        model=model,
        train_dataloader=torch.utils.data.DataLoader(data, batch_size=4),
        optimizers=build_optimizer(model, name='adamwscale', lr=BASE),
        schedulers=build_scheduler(name, base_lr=BASE, **options),
        max_duration=f'{steps}ba',
        callbacks=[record],
        device='cpu',
        progress_bar=False,
        log_to_console=False,
        loggers=[],
    )
    trainer.fit()
    trainer.close()
    assert sorted(record.lrs) == list(range(steps))
    for i, lr in record.lrs.items():
        if name == 'cosine':
            expected = cosine_lr(i, base=BASE, final=FINAL, warmup=warmup, total=steps)
        else:
            expected = legacy_lr(i, total=steps)
        assert lr == pytest.approx(expected, rel=1e-12), i


# ---------------------------------------------------------------------------------------------
# Registry and errors
# ---------------------------------------------------------------------------------------------
def test_build_scheduler():
    sched = build_scheduler('cosine', base_lr=BASE, t_warmup='100ba', final_lr=1e-5)
    assert isinstance(sched, NanoT5CosineScheduler) and sched.base_lr == BASE
    assert isinstance(build_scheduler('legacy', base_lr=BASE), InverseSqrtScheduler)


def test_build_scheduler_errors():
    with pytest.raises(ValueError, match=r"unknown scheduler 'cosin'.*Did you mean 'cosine'.*constant, cosine, inverse_sqrt, legacy"):
        build_scheduler('cosin', base_lr=BASE)
    with pytest.raises(ValueError, match=r"unknown option 'warmup' for scheduler 'cosine'.*t_warmup"):
        build_scheduler('cosine', base_lr=BASE, warmup='100ba')


def test_register_scheduler():
    @register_scheduler('test_half')
    def half(*, base_lr, factor=0.5):
        return lambda state, ssr=1.0: factor

    try:
        assert build_scheduler('test_half', base_lr=1.0, factor=0.25)(fake_state(0)) == 0.25
        with pytest.raises(ValueError, match='already registered'):
            register_scheduler('test_half')(lambda **kw: None)
    finally:
        SCHEDULERS.pop('test_half', None)


def test_warmup_must_be_below_t_max():
    with pytest.raises(ValueError, match=r't_warmup \(1000 batches\) must be smaller than t_max \(1000 batches\)'):
        NanoT5CosineScheduler(t_warmup='1000ba', base_lr=BASE, t_max='1000ba')
    sched = NanoT5CosineScheduler(t_warmup='2000ba', base_lr=BASE)
    with pytest.raises(ValueError, match='must be smaller than t_max'):
        sched(fake_state(0, '1000ba'))


def test_unit_errors():
    with pytest.raises(ValueError, match="'tok' units"):
        NanoT5CosineScheduler(t_warmup='1000tok', base_lr=BASE)(fake_state(0))
    with pytest.raises(ValueError, match="'sp' units"):
        NanoT5CosineScheduler(t_warmup='10ba', base_lr=BASE)(fake_state(0, '5000sp'))
    with pytest.raises(ValueError, match='in epochs'):
        NanoT5CosineScheduler(t_warmup='1ep', base_lr=BASE)(fake_state(0))
    with pytest.raises(ValueError, match='must be a duration like'):
        NanoT5CosineScheduler(t_warmup='10 steps', base_lr=BASE)
    with pytest.raises(ValueError, match='no max_duration'):
        InverseSqrtScheduler(base_lr=BASE)(fake_state(0, max_duration=None))


def test_value_errors():
    with pytest.raises(ValueError, match='base_lr must be > 0'):
        NanoT5CosineScheduler(t_warmup='10ba', base_lr=0.0)
    with pytest.raises(ValueError, match='final_lr'):
        NanoT5CosineScheduler(t_warmup='10ba', base_lr=BASE, final_lr=-1.0)
    with pytest.raises(ValueError, match='decay_fraction'):
        InverseSqrtScheduler(base_lr=BASE, decay_fraction=1.5)
    with pytest.raises(ValueError, match='peak_lr'):
        InverseSqrtScheduler(base_lr=BASE, peak_lr=0.0)
