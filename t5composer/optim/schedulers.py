"""nanoT5's learning-rate schedules as Composer schedulers.

Composer multiplies each param group's initial lr by the scheduler's return value, so the
schedules return ``lr(s) / base_lr`` where ``s`` is the number of optimizer steps completed
(see :func:`optimizer_steps_done` for how ``s`` is read from Composer's state, which differs
by one from ``state.timestamp.batch`` when Composer evaluates schedulers). The optimizer step
with 0-based index ``i`` therefore runs with ``lr(i)``, exactly as in nanoT5's torch loop.

Durations are counted in batches; ``'Xdur'`` fractions and epochs are converted, and the
scale-schedule ratio ``ssr`` stretches explicit durations (``state.max_duration`` is already
scaled by Composer's trainer).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Union

from composer.core import State, Time, TimeUnit
from composer.optim import ComposerScheduler

from t5composer.durations import UNIT_NAMES, parse_duration
from t5composer import registry
from t5composer.registry import builder_options, check_options

__all__ = [
    'NanoT5CosineScheduler',
    'InverseSqrtScheduler',
    'ConstantScheduler',
    'SCHEDULERS',
    'register_scheduler',
    'build_scheduler',
    'scheduler_problems',
    'to_batches',
    'optimizer_steps_done',
]

TimeLike = Union[str, int, Time]


def _parse_time(value: TimeLike, what: str) -> Time:
    if isinstance(value, Time):
        return value
    if isinstance(value, bool):
        raise TypeError(f'{what} must be a time string like "10000ba", got {value!r}')
    if isinstance(value, int):
        return Time(value, TimeUnit.BATCH)  # from Python: a bare int means optimizer steps (recipes must give a unit)
    if isinstance(value, str):
        # The recipes' one duration parser (whole counts, 'dur' fractions, a unit required).
        d = parse_duration(value, key=what, units=tuple(UNIT_NAMES), allow_zero=True)
        return Time(d.value, TimeUnit(d.unit))
    raise TypeError(f'{what} must be a time string like "10000ba", got {type(value).__name__}')


def to_batches(value: TimeLike, state: State, *, ssr: float = 1.0, what: str = 'time') -> int:
    """Convert a duration to a number of batches (optimizer steps).

    Args:
        value: ``'Nba'``, ``'Nep'`` (needs ``state.dataloader_len``), ``'Xdur'`` (a fraction of
            ``state.max_duration``), a :class:`Time`, or an int (batches).
        state: the trainer state.
        ssr: scale-schedule ratio applied to explicit batch/epoch durations.
        what: name used in error messages.

    Returns:
        The number of batches.
    """
    time = _parse_time(value, what)
    if time.unit == TimeUnit.DURATION:
        if state.max_duration is None:
            raise ValueError(f'{what}={time} is a fraction of max_duration, but the trainer has no max_duration')
        # max_duration is already scaled by ssr in Composer's trainer.
        total = to_batches(state.max_duration, state, ssr=1.0, what='max_duration')
        return int(time.value * total)
    if time.unit == TimeUnit.BATCH:
        return int(time.value * ssr)
    if time.unit == TimeUnit.EPOCH:
        if state.dataloader_len is None:
            raise ValueError(
                f'{what}={time} is in epochs, but the train dataloader has no length to convert it to '
                'batches; give it in batches, e.g. "10000ba"',
            )
        return int(time.value * int(state.dataloader_len) * ssr)
    raise ValueError(
        f'{what}={time} is in {time.unit.value!r} units; nanoT5 schedules count optimizer steps: give it in '
        'batches ("ba"), epochs ("ep") or as a fraction of max_duration ("dur")',
    )


def optimizer_steps_done(state: State) -> int:
    """Optimizer steps completed at the moment Composer evaluates a scheduler.

    Composer evaluates a scheduler (a) once when compiling it in ``Trainer.__init__``/``fit``,
    before any batch, and (b) after every batch's optimizer step but *before* it advances
    ``state.timestamp`` (``trainer.py``: ``scheduler.step()`` precedes ``to_next_batch``). The
    value set in (b) is used by the next step. So in (b) ``timestamp.batch + 1`` steps are done;
    in (a), recognised by ``state.batch`` still being None, none are. Reading the timestamp
    as is would run every step with the previous step's lr (a one-step lag versus nanoT5).

    Args:
        state: the trainer state.

    Returns:
        The number of optimizer steps completed.
    """
    batches = int(state.timestamp.batch.value)
    if batches == 0 and getattr(state, 'batch', None) is None:
        return 0
    return batches + 1


def _constant_batches(value: TimeLike | None, what: str) -> int | None:
    """Batch count known without a state (explicit 'ba' or int), for early validation."""
    if value is None:
        return None
    time = _parse_time(value, what)
    return int(time.value) if time.unit == TimeUnit.BATCH else None


def _check_base_lr(base_lr: float) -> float:
    if isinstance(base_lr, bool) or not isinstance(base_lr, (int, float)):
        raise TypeError(f'base_lr must be a number, got {base_lr!r}')
    if not base_lr > 0:
        raise ValueError(f'base_lr must be > 0 (the scheduler returns lr / base_lr), got {base_lr}')
    return float(base_lr)


class NanoT5CosineScheduler(ComposerScheduler):
    """nanoT5's 'cosine' schedule: warm up from base/2 to base, then cosine decay to ``final_lr``.

    With ``s`` optimizer steps done, warmup ``W`` and total ``T``::

        s <= W: lr = base_lr * (0.5 + 0.5 * s / W)
        s >  W: lr = final_lr + (base_lr - final_lr) * (1 + cos(pi * (s - W) / (T - W))) / 2

    Steps past ``T`` hold ``final_lr``. Returns ``lr / base_lr``.

    Args:
        t_warmup: warmup duration ``W`` (e.g. ``'10000ba'``); must be < ``T``. 0 disables warmup.
        base_lr: peak learning rate; must equal the optimizer's lr.
        final_lr: learning rate at ``T``.
        t_max: total duration ``T``; default: ``state.max_duration``.
    """

    def __init__(
        self,
        *,
        t_warmup: TimeLike,
        base_lr: float,
        final_lr: float = 1e-5,
        t_max: TimeLike | None = None,
    ) -> None:
        self.base_lr = _check_base_lr(base_lr)
        if not final_lr >= 0:
            raise ValueError(f'final_lr must be >= 0, got {final_lr}')
        self.final_lr = float(final_lr)
        _parse_time(t_warmup, 't_warmup')
        if t_max is not None:
            _parse_time(t_max, 't_max')
        self.t_warmup = t_warmup
        self.t_max = t_max
        warmup, total = _constant_batches(t_warmup, 't_warmup'), _constant_batches(t_max, 't_max')
        if warmup is not None and warmup < 0:
            raise ValueError(f't_warmup must be >= 0, got {t_warmup}')
        if warmup is not None and total is not None:
            _check_warmup_total(warmup, total)

    def lr_at(self, step: int, warmup: int, total: int) -> float:
        """Learning rate after ``step`` optimizer steps (not the multiplier).

        Args:
            step: optimizer steps completed.
            warmup: warmup steps ``W``.
            total: total steps ``T``.

        Returns:
            The learning rate.
        """
        if warmup > 0 and step <= warmup:
            return self.base_lr * (0.5 + 0.5 * step / warmup)
        progress = (min(step, total) - warmup) / (total - warmup)
        return self.final_lr + (self.base_lr - self.final_lr) * (1.0 + math.cos(math.pi * progress)) / 2.0

    def __call__(self, state: State, ssr: float = 1.0) -> float:
        """Learning-rate multiplier for the current step.

        Args:
            state: the trainer state.
            ssr: scale-schedule ratio.

        Returns:
            ``lr / base_lr``.
        """
        warmup = to_batches(self.t_warmup, state, ssr=ssr, what='t_warmup')
        total = _total_batches(self.t_max, state, ssr)
        _check_warmup_total(warmup, total)
        return self.lr_at(optimizer_steps_done(state), warmup, total) / self.base_lr


class InverseSqrtScheduler(ComposerScheduler):
    """nanoT5's 'legacy' schedule: inverse square root, then linear decay to 0.

    Independent of the base lr: with ``s`` steps done, total ``T`` and
    ``n1 = ceil((1 - decay_fraction) * T)``::

        s == 0:  lr = peak_lr
        s <  n1: lr = min(peak_lr, 1 / sqrt(s))
        s >= n1: lr = min(peak_lr, 1 / sqrt(n1)) * (1 - (s - n1) / (T - n1))     (0 from T on)

    Returns ``lr / base_lr``.

    Args:
        base_lr: the optimizer's lr (only used to turn the lr into a multiplier).
        t_max: total duration ``T``; default: ``state.max_duration``.
        peak_lr: cap of the inverse square root (nanoT5: 1e-2).
        decay_fraction: final fraction of ``T`` spent decaying linearly to 0 (nanoT5: 0.1).
    """

    def __init__(
        self,
        *,
        base_lr: float,
        t_max: TimeLike | None = None,
        peak_lr: float = 1e-2,
        decay_fraction: float = 0.1,
    ) -> None:
        self.base_lr = _check_base_lr(base_lr)
        if not peak_lr > 0:
            raise ValueError(f'peak_lr must be > 0, got {peak_lr}')
        if not 0.0 <= decay_fraction <= 1.0:
            raise ValueError(f'decay_fraction must be in [0, 1], got {decay_fraction}')
        if t_max is not None:
            _parse_time(t_max, 't_max')
            total = _constant_batches(t_max, 't_max')
            if total is not None and total <= 0:
                raise ValueError(f't_max must be > 0 batches, got {t_max}')
        self.t_max = t_max
        self.peak_lr = float(peak_lr)
        self.decay_fraction = float(decay_fraction)

    def decay_start(self, total: int) -> int:
        """First step of the linear decay, ``n1 = ceil((1 - decay_fraction) * T)``.

        Args:
            total: total steps ``T``.

        Returns:
            ``n1``.
        """
        return math.ceil(total * (1.0 - self.decay_fraction))

    def lr_at(self, step: int, total: int) -> float:
        """Learning rate after ``step`` optimizer steps (not the multiplier).

        Args:
            step: optimizer steps completed.
            total: total steps ``T``.

        Returns:
            The learning rate.
        """
        n1 = self.decay_start(total)
        if step == 0:
            return self.peak_lr
        if step < n1:
            return min(self.peak_lr, 1.0 / math.sqrt(step))
        if step >= total:
            return 0.0
        start = min(self.peak_lr, 1.0 / math.sqrt(n1)) if n1 > 0 else self.peak_lr
        return start * (1.0 - (step - n1) / (total - n1))

    def __call__(self, state: State, ssr: float = 1.0) -> float:
        """Learning-rate multiplier for the current step.

        Args:
            state: the trainer state.
            ssr: scale-schedule ratio.

        Returns:
            ``lr / base_lr``.
        """
        total = _total_batches(self.t_max, state, ssr)
        if total <= 0:
            raise ValueError(f'the schedule needs a positive number of batches, got t_max={total} batches')
        return self.lr_at(optimizer_steps_done(state), total) / self.base_lr


class ConstantScheduler(ComposerScheduler):
    """Constant learning rate (fine-tuning): always returns 1.0.

    Args:
        base_lr: accepted for a uniform registry interface; unused.
    """

    def __init__(self, *, base_lr: float | None = None) -> None:
        if base_lr is not None:
            _check_base_lr(base_lr)
        self.base_lr = base_lr

    def __call__(self, state: State, ssr: float = 1.0) -> float:
        """Return 1.0.

        Args:
            state: the trainer state (unused).
            ssr: scale-schedule ratio (unused).

        Returns:
            1.0.
        """
        del state, ssr
        return 1.0


def _total_batches(t_max: TimeLike | None, state: State, ssr: float) -> int:
    if t_max is None:
        if state.max_duration is None:
            raise ValueError('t_max is not set and the trainer has no max_duration')
        return to_batches(state.max_duration, state, ssr=1.0, what='max_duration')
    return to_batches(t_max, state, ssr=ssr, what='t_max')


def _check_warmup_total(warmup: int, total: int) -> None:
    if warmup < 0:
        raise ValueError(f't_warmup must be >= 0 batches, got {warmup}')
    if not warmup < total:
        raise ValueError(f't_warmup ({warmup} batches) must be smaller than t_max ({total} batches)')


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------
SchedulerBuilder = Callable[..., ComposerScheduler]

SCHEDULERS = registry.schedulers  # cosine, inverse_sqrt (alias legacy), constant: the classes above

register_scheduler = SCHEDULERS.register


def build_scheduler(name: str, *, base_lr: float, **kwargs: Any) -> ComposerScheduler:
    """Build a registered scheduler.

    Args:
        name: 'cosine', 'inverse_sqrt' (alias 'legacy', nanoT5's name), 'constant', or a registered name.
        base_lr: the optimizer's lr; passed to builders that take it.
        **kwargs: scheduler options (e.g. ``t_warmup='10000ba'``), checked against the builder's
            signature.

    Returns:
        A Composer scheduler.
    """
    builder = SCHEDULERS.lookup(name)
    options, var_kwargs = builder_options(builder, skip_first=False)
    if not var_kwargs:
        check_options([o for o in options if o != 'base_lr'], kwargs, what=f'scheduler {name!r}')
    call_kwargs = dict(kwargs)
    if var_kwargs or 'base_lr' in options:
        call_kwargs['base_lr'] = base_lr
    return builder(**call_kwargs)




def scheduler_problems(name: str, *, base_lr: float, kwargs: dict[str, Any], build: bool = True) -> list[str]:
    """Problems with a config's ``scheduler:`` section, as messages that name the YAML keys.

    The scheduler is built once (its constructor checks durations and lrs), so a wrong value is
    reported before the model is built rather than as a traceback after it.

    Args:
        name: ``scheduler.name``.
        base_lr: ``optimizer.lr``.
        kwargs: the section's other keys.
        build: also build it; False checks the name and option names only (for a caller whose
            value checks already named ``optimizer.lr`` or a ``scheduler.*`` value, which the
            build would only restate).

    Returns:
        One message per problem (empty when the scheduler builds).
    """
    problems = SCHEDULERS.name_problems(name)
    problems = problems or SCHEDULERS.option_problems(name, kwargs, also=('name',))
    if problems or not build:
        return problems
    try:
        build_scheduler(name, base_lr=base_lr, **kwargs)
    except (TypeError, ValueError) as e:
        given = ', '.join(f'scheduler.{k}={v!r}' for k, v in kwargs.items()) or 'no options'
        return [f"Schedule {name!r} refuses its settings ({given}, optimizer.lr={base_lr!r}): {e}. Fix those values in the YAML or with overrides."]
    return []
