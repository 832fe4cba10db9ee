"""Registries of the Composer algorithms, callbacks and loggers a YAML recipe can name.

``callbacks: {speed_monitor: {window_size: 10}}`` builds ``SpeedMonitor(window_size=10)``. Keys
are checked against the constructor's signature so a typo is an error, not a silent default.
Add your own with :func:`register`.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Callable, Optional

from t5composer.config.validation import ConfigError, check_keys, closest
from t5composer.registry import builder_options

__all__ = ['ALGORITHMS', 'CALLBACKS', 'LOGGERS', 'REQUIRED_PACKAGES', 'register', 'build_components', 'check_component_kwargs', 'component_problems']


def _lazy(path: str) -> Callable[[], type]:
    module, name = path.rsplit('.', 1)
    return lambda: getattr(importlib.import_module(module), name)


# Values are zero-argument loaders so that importing t5composer does not import every logger.
ALGORITHMS: dict[str, Callable[[], type]] = {
    # Composer's GradientClipping, clipping by norm with the step's one shared gradient norm.
    'gradient_clipping': _lazy('t5composer.optim.clipping.GradientClipping'),
    'low_precision_layernorm': _lazy('composer.algorithms.LowPrecisionLayerNorm'),
}

CALLBACKS: dict[str, Callable[[], type]] = {
    'nanot5_log': _lazy('t5composer.callbacks.nanot5_log.NanoT5Log'),
    'hf_export': _lazy('t5composer.callbacks.hf_export.HFExport'),
    'speed_monitor': _lazy('composer.callbacks.SpeedMonitor'),
    'lr_monitor': _lazy('composer.callbacks.LRMonitor'),
    'memory_monitor': _lazy('composer.callbacks.MemoryMonitor'),
    'optimizer_monitor': _lazy('composer.callbacks.OptimizerMonitor'),
    'runtime_estimator': _lazy('composer.callbacks.RuntimeEstimator'),
    'nan_monitor': _lazy('composer.callbacks.NaNMonitor'),
    'resource_monitor': _lazy('t5composer.callbacks.resource_monitor.ResourceMonitor'),
    'loop_probe': _lazy('t5composer.callbacks.loop_probe.LoopProbe'),  # waits for the GPU and its idle time (bench/gpu_check.sh)
}

LOGGERS: dict[str, Callable[[], type]] = {
    'tensorboard': _lazy('composer.loggers.TensorboardLogger'),
    'wandb': _lazy('composer.loggers.WandBLogger'),
    'mlflow': _lazy('composer.loggers.MLFlowLogger'),
    'file': _lazy('composer.loggers.FileLogger'),
    'in_memory': _lazy('composer.loggers.InMemoryLogger'),
}

_KINDS = {'algorithms': ALGORITHMS, 'callbacks': CALLBACKS, 'loggers': LOGGERS}

# Packages that Composer imports only when it builds the logger. Checked by name (no import), so
# preflight names a missing one within seconds instead of failing after the model is built; the
# pip name equals the import name for all three.
REQUIRED_PACKAGES: dict[str, dict[str, str]] = {
    'loggers': {'tensorboard': 'tensorboard', 'wandb': 'wandb', 'mlflow': 'mlflow'},
}


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def register(kind: str, name: str) -> Callable[[type], type]:
    """Decorator: make a class available under ``name`` in ``kind`` (algorithms/callbacks/loggers)."""

    def wrap(cls: type) -> type:
        _KINDS[kind][name] = lambda: cls
        return cls

    return wrap


def check_component_kwargs(cls: type, kwargs: dict[str, Any], where: str) -> list[str]:
    """Problems with ``kwargs`` for ``cls``'s constructor (unknown keys, named with a hint)."""
    names, open_ended = builder_options(cls, skip_first=False)
    return [] if open_ended else check_keys(kwargs, names, where)


def _resolve(kind: str, section: dict[str, Optional[dict[str, Any]]], *, load: bool) -> tuple[list[str], list[tuple[str, type, dict]]]:
    registry = _KINDS[kind]
    problems: list[str] = []
    resolved = []
    for name, kwargs in section.items():
        kwargs = kwargs or {}
        if name not in registry:
            problems.append(f"Unknown {kind[:-1]} '{name}' in '{kind}'.{closest(name, registry)} Registered: {', '.join(sorted(registry))}.")
            continue
        package = REQUIRED_PACKAGES.get(kind, {}).get(name)
        if package is not None and not _installed(package):
            problems.append(f"'{kind}.{name}' needs the '{package}' package, which is not installed: pip install {package} "
                            f"(or remove '{name}' from '{kind}').")
            continue
        if not load:
            continue
        try:
            cls = registry[name]()
        except ImportError as e:
            problems.append(f"'{kind}.{name}' needs a package that is not installed ({e.name or e}); pip install it or remove '{name}' from '{kind}'.")
            continue
        problems += check_component_kwargs(cls, kwargs, f'{kind}.{name}.')
        resolved.append((name, cls, kwargs))
    return problems, resolved


def component_problems(kind: str, section: dict[str, Optional[dict[str, Any]]], *, load: bool = True) -> list[str]:
    """Problems with a YAML section, without building anything.

    Args:
        kind: ``algorithms``, ``callbacks`` or ``loggers``.
        section: the section's mapping of name -> options.
        load: also import each class (Composer: seconds) to check its options and packages;
            False checks the names only.
    """
    return _resolve(kind, section, load=load)[0]


def build_components(kind: str, section: dict[str, Optional[dict[str, Any]]]) -> list[Any]:
    """Instantiate every entry of a YAML section (``algorithms``, ``callbacks`` or ``loggers``)."""
    problems, resolved = _resolve(kind, section, load=True)
    if problems:
        raise ConfigError(problems)
    out = []
    for name, cls, kwargs in resolved:
        try:
            out.append(cls(**kwargs))
        except ImportError as e:
            raise ConfigError([f"'{kind}.{name}' needs a package that is not installed ({e}); pip install it or remove '{name}' from '{kind}'."]) from e
        except (TypeError, ValueError) as e:
            raise ConfigError([f"'{kind}.{name}': {e}"]) from e
    return out
