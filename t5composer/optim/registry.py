"""Optimizers by name (:data:`t5composer.registry.optimizers`) and parameter groups (no weight decay on biases and norm weights).

A builder is any callable ``builder(param_groups, *, lr, [weight_decay], **options) -> Optimizer``
(an optimizer class qualifies). Its signature is the source of truth for which options a config
may pass, so a typo in a YAML fails at build time with the list of valid keys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from t5composer import registry
from t5composer.learning_rate import check_learning_rate
from t5composer.registry import builder_options, check_options

__all__ = [
    'OPTIMIZERS',
    'OptimizerBuilder',
    'register_optimizer',
    'build_optimizer',
    'optimizer_problems',
    'param_groups',
    'is_no_decay',
]

OptimizerBuilder = Callable[..., Optimizer]

OPTIMIZERS = registry.optimizers  # adamwscale, adafactor (below), adamw

# Substrings of parameter names that never get weight decay (nanoT5: bias and norm weights).
_NO_DECAY_SUBSTRINGS = ('layer_norm', 'norm', 'bias')


register_optimizer = OPTIMIZERS.register


def build_adafactor(
    params: Any,
    *,
    lr: float,
    weight_decay: float = 0.0,
    eps: tuple[float, float] = (1e-30, 1e-3),
    clip_threshold: float = 1.0,
    decay_rate: float = -0.8,
    beta1: float | None = None,
    scale_parameter: bool = True,
    relative_step: bool = False,
    warmup_init: bool = False,
) -> Optimizer:
    """HF transformers' Adafactor with an explicit learning rate (nanoT5's 'adafactor').

    Args:
        params: parameters or parameter groups.
        lr: learning rate (used as is, since ``relative_step`` is False).
        weight_decay: weight decay coefficient.
        eps: regularisation constants for the squared gradient and the parameter scale.
        clip_threshold: threshold of the root-mean-square of the final update.
        decay_rate: coefficient for the running average of the squared gradient.
        beta1: first-moment coefficient (None: no momentum).
        scale_parameter: scale the learning rate by the parameter's RMS.
        relative_step: use Adafactor's time-dependent lr instead of ``lr``.
        warmup_init: warmup variant of the relative step.

    Returns:
        ``transformers.optimization.Adafactor``, whose ``step`` runs a closure with gradients on.
    """
    return _adafactor_class()(
        params,
        lr=lr,
        eps=eps,
        clip_threshold=clip_threshold,
        decay_rate=decay_rate,
        beta1=beta1,
        weight_decay=weight_decay,
        scale_parameter=scale_parameter,
        relative_step=relative_step,
        warmup_init=warmup_init,
    )


_ADAFACTOR: list[type] = []


def _adafactor_class() -> type:
    """transformers' Adafactor, with a ``step`` that runs the closure with gradients enabled.

    Its ``step`` is decorated with ``@torch.no_grad()`` and calls the closure inside it; Composer
    passes the whole forward and backward as that closure (every precision but fp16), which then
    fails with "element 0 of tensors does not require grad". Built lazily: transformers is slow to import.
    """
    if not _ADAFACTOR:
        from transformers.optimization import Adafactor as HFAdafactor

        class Adafactor(HFAdafactor):
            def step(self, closure: Any = None) -> Any:
                loss = None
                if closure is not None:
                    with torch.enable_grad():
                        loss = closure()
                super().step()
                return loss

        _ADAFACTOR.append(Adafactor)
    return _ADAFACTOR[0]


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """Whether a parameter is excluded from weight decay (biases, norm weights, vectors).

    Args:
        name: the parameter's qualified name in the model.
        param: the parameter.

    Returns:
        True for names containing 'layer_norm', 'norm' or 'bias', or tensors with ndim < 2.
    """
    lowered = name.lower()
    return param.ndim < 2 or any(s in lowered for s in _NO_DECAY_SUBSTRINGS)


def param_groups(model: nn.Module, *, weight_decay: float) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed and a non-decayed group.

    Args:
        model: the model.
        weight_decay: coefficient of the decayed group.

    Returns:
        Non-empty groups, each ``{'params': [...], 'weight_decay': float}``; the decayed group
        comes first. (Names stay out of the groups so checkpoints keep torch's plain layout;
        use :func:`is_no_decay` to see where a parameter goes.)
    """
    decay: list[tuple[str, nn.Parameter]] = []
    no_decay: list[tuple[str, nn.Parameter]] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if is_no_decay(name, param) else decay).append((name, param))
    groups = []
    for members, wd in ((decay, float(weight_decay)), (no_decay, 0.0)):
        if members:
            groups.append({'params': [p for _, p in members], 'weight_decay': wd})
    return groups


def build_optimizer(
    model: nn.Module,
    *,
    name: str,
    lr: float,
    weight_decay: float = 0.0,
    sharded: bool = False,
    compile_step: bool = False,
    **kwargs: Any,
) -> Optimizer:
    """Build a registered optimizer over ``model``'s parameters.

    Biases, norm weights and other tensors with ndim < 2 get no weight decay.

    Args:
        model: the model whose trainable parameters are optimised.
        name: registry key ('adamwscale', 'adafactor', 'adamw', or a registered one).
        lr: learning rate (finite, >= 0: :func:`t5composer.learning_rate.check_learning_rate`).
        weight_decay: weight decay of the decayed group (>= 0).
        sharded: the run shards parameters (FSDP); passed as ``sharded_params=True`` to an
            optimizer that takes it (adamwscale: RMS over whole tensors).
        compile_step: the run compiles its step (``compile: true``); passed as ``compiled=True``
            to an optimizer that takes it (adamwscale: its update through ``torch.compile``),
            unless the config sets ``optimizer.compiled`` itself.
        **kwargs: optimizer-specific options (e.g. ``betas``, ``eps``); checked against the
            builder's signature.

    Returns:
        The optimizer.
    """
    builder = OPTIMIZERS.lookup(name)
    check_learning_rate(lr)
    if not weight_decay >= 0:
        raise ValueError(f'weight_decay must be >= 0, got {weight_decay}')
    options, var_kwargs = builder_options(builder, skip_first=True)
    if not var_kwargs:
        check_options([o for o in options if o not in ('lr', 'weight_decay')], kwargs, what=f'optimizer {name!r}')
        if 'lr' not in options:
            raise TypeError(f'optimizer builder {name!r} must accept an lr keyword')
    groups = param_groups(model, weight_decay=weight_decay)
    if not groups:
        raise ValueError('the model has no trainable parameters')
    call_kwargs = dict(kwargs)
    call_kwargs['lr'] = float(lr)
    if sharded and 'sharded_params' in options:
        call_kwargs['sharded_params'] = True
    if compile_step and 'compiled' in options and 'compiled' not in kwargs:
        call_kwargs['compiled'] = True
    if var_kwargs or 'weight_decay' in options:
        call_kwargs['weight_decay'] = float(weight_decay)
    elif weight_decay > 0:
        raise ValueError(f'optimizer {name!r} takes no weight_decay, but weight_decay={weight_decay} was given')
    return builder(groups, **call_kwargs)


def optimizer_problems(name: str, *, lr: float, weight_decay: float, kwargs: dict[str, Any], build: bool = True) -> list[str]:
    """Problems with a config's ``optimizer:`` section, as messages that name the YAML keys.

    The optimizer is built once over a dummy parameter, so that every value the optimizer itself
    refuses (betas out of range, a string where a number goes) is found in a second, before the
    model is built, rather than as a traceback after it.

    Args:
        name: ``optimizer.name``.
        lr: ``optimizer.lr``.
        weight_decay: ``optimizer.weight_decay``.
        kwargs: the section's other keys.
        build: also build it (False: only the name and the option names, when the values it
            would be built with are already reported as problems).

    Returns:
        One message per problem (empty when the optimizer builds).
    """
    problems = OPTIMIZERS.name_problems(name)
    problems = problems or OPTIMIZERS.option_problems(name, kwargs, also=('name', 'lr', 'weight_decay'))
    if problems or not build:
        return problems
    try:
        build_optimizer(nn.Linear(2, 2), name=name, lr=lr, weight_decay=weight_decay, **kwargs)
    except (TypeError, ValueError) as e:
        given = ', '.join(f'optimizer.{k}={v!r}' for k, v in {'lr': lr, 'weight_decay': weight_decay, **kwargs}.items())
        return [f"Optimizer {name!r} refuses its settings ({given}): {e}. Fix those values in the YAML or with overrides."]
    return []
