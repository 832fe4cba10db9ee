"""Optimizers (nanoT5's adamwscale, Adafactor, AdamW) and nanoT5's learning-rate schedules."""

from t5composer.optim.adamwscale import AdamWScale
from t5composer.optim.registry import OPTIMIZERS, build_optimizer, is_no_decay, param_groups, register_optimizer
from t5composer.optim.schedulers import (
    SCHEDULERS,
    ConstantScheduler,
    InverseSqrtScheduler,
    NanoT5CosineScheduler,
    build_scheduler,
    register_scheduler,
)

__all__ = [
    'AdamWScale',
    'OPTIMIZERS',
    'build_optimizer',
    'is_no_decay',
    'param_groups',
    'register_optimizer',
    'SCHEDULERS',
    'ConstantScheduler',
    'InverseSqrtScheduler',
    'NanoT5CosineScheduler',
    'build_scheduler',
    'register_scheduler',
]
