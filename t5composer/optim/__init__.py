"""Optimizers (nanoT5's adamwscale, Adafactor, AdamW) and nanoT5's learning-rate schedules."""

from typing import Any

from t5composer.optim.adamwscale import AdamWScale
from t5composer.optim.registry import OPTIMIZERS, build_optimizer, is_no_decay, optimizer_problems, param_groups, register_optimizer

# The schedules subclass Composer's scheduler, and importing Composer takes ~3 s; they load on
# first use so that config checks (t5composer.run.preflight) can use the optimizer registry quickly.
_SCHEDULER_NAMES = (
    'SCHEDULERS',
    'ConstantScheduler',
    'InverseSqrtScheduler',
    'NanoT5CosineScheduler',
    'build_scheduler',
    'register_scheduler',
    'scheduler_problems',
)

__all__ = [
    'AdamWScale',
    'OPTIMIZERS',
    'build_optimizer',
    'is_no_decay',
    'optimizer_problems',
    'param_groups',
    'register_optimizer',
    *_SCHEDULER_NAMES,
]


def __getattr__(name: str) -> Any:
    if name in _SCHEDULER_NAMES:
        from t5composer.optim import schedulers

        return getattr(schedulers, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
