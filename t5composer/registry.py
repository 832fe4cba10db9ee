"""The registries of everything a YAML recipe names: optimizers, schedulers, algorithms, callbacks, loggers.

One :class:`Registry` type serves all five (llm-foundry's registries are the model): a mapping of
name -> builder (a class or a function) with a ``register`` decorator, entries that import their
module only when first looked up (so checking a config's names costs no Composer import), and the
checks a config section needs: an unknown name with the closest registered one, a package that
is not installed, and options the builder's signature does not take.

Add your own with ``optimizers.register('name')`` (or ``t5composer.components.register``).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable, Iterable
from typing import Any, Optional

from t5composer.errors import closest

__all__ = ['LazyEntry', 'Registry', 'algorithms', 'builder_options', 'callbacks', 'check_keys', 'check_options', 'installed',
           'loggers', 'optimizers', 'schedulers']


class LazyEntry:
    """A registry entry that imports ``module:attribute`` when it is first looked up.

    Args:
        path: ``'package.module:Attribute'``.
        requires: a package the entry needs beyond the project's own dependencies; checked by
            name (no import) so a missing one is named within seconds.
    """

    def __init__(self, path: str, *, requires: Optional[str] = None):
        self.path = path
        self.requires = requires

    def load(self) -> Any:
        module, _, attribute = self.path.partition(':')
        return getattr(importlib.import_module(module), attribute)

    def __repr__(self) -> str:
        return f'LazyEntry({self.path!r})'


def installed(package: str) -> bool:
    """Whether ``package`` can be imported, found without importing it."""
    return importlib.util.find_spec(package) is not None


def check_keys(given: Iterable[str], valid: Iterable[str], where: str) -> list[str]:
    """Problems for keys in ``given`` that are not in ``valid``, each with the closest valid key."""
    valid = list(valid)
    return [
        f"Unknown key '{where}{key}'.{closest(key, valid)} Valid keys here: {', '.join(sorted(valid))}."
        for key in given
        if key not in valid
    ]


class Registry(dict):
    """A mapping of name -> builder; looking an entry up imports it if it was registered lazily.

    Args:
        kind: what one entry is (``optimizer``, ``scheduler``, ``callback``...), used in messages.
        section: the YAML key of the section that names the entries (``optimizer``, ``callbacks``).
        entries: built-in entries, ``name -> 'module:attribute'`` or ``name -> (path, required package)``.
        reserved: options the pipeline passes itself (an optimizer's ``lr``), not counted as the
            builder's own options.
        skip_first: the builder's first positional parameter is not an option (an optimizer's params).
        single: the section builds one entry, picked by its ``name:`` key (``optimizer``); else
            the section maps each entry's name to its options (``callbacks``).
        noun: what an entry is called in messages about a config (default: ``kind``).
    """

    def __init__(self, kind: str, *, section: str, entries: Optional[dict[str, Any]] = None, reserved: tuple[str, ...] = (),
                 skip_first: bool = False, single: bool = False, noun: Optional[str] = None):
        super().__init__()
        self.kind = kind
        self.noun = noun or kind
        self.section = section
        self.single = single
        self.reserved = reserved
        self.skip_first = skip_first
        for name, spec in (entries or {}).items():
            path, requires = spec if isinstance(spec, tuple) else (spec, None)
            self[name] = LazyEntry(path, requires=requires)

    def __getitem__(self, name: str) -> Any:
        entry = super().__getitem__(name)
        if isinstance(entry, LazyEntry):
            entry = entry.load()
            self[name] = entry  # imported once
        return entry

    def register(self, name: str, *, overwrite: bool = False) -> Callable[[Callable], Callable]:
        """Decorator that registers a builder under ``name``.

        Args:
            name: registry key used in configs.
            overwrite: replace an existing entry instead of raising.

        Returns:
            The decorator; it returns the builder unchanged.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f'{self.kind} name must be a non-empty string, got {name!r}')

        def decorator(builder: Callable) -> Callable:
            if not callable(builder):
                raise TypeError(f'{self.kind} builder for {name!r} must be callable, got {builder!r}')
            if name in self and not overwrite and dict.__getitem__(self, name) is not builder:
                raise ValueError(f'{self.kind} {name!r} is already registered; pass overwrite=True to replace it')
            self[name] = builder
            return builder

        return decorator

    def lookup(self, name: str) -> Callable:
        """The builder registered as ``name``; a ValueError naming the closest one otherwise."""
        if name not in self:
            raise ValueError(f'unknown {self.kind} {name!r}.{closest(name, self)} Registered: {", ".join(sorted(self))}.')
        return self[name]

    def requires(self, name: str) -> Optional[str]:
        """The package entry ``name`` needs beyond the project's dependencies (None: none)."""
        entry = dict.get(self, name)
        return entry.requires if isinstance(entry, LazyEntry) else None

    def options(self, name: str) -> tuple[list[str], bool]:
        """The options entry ``name`` takes (its reserved ones left out), and whether it takes any (``**kwargs``)."""
        names, open_ended = builder_options(self[name], skip_first=self.skip_first)
        return [n for n in names if n not in self.reserved], open_ended

    def name_problems(self, name: str) -> list[str]:
        """A message for a name that is not registered (with the closest registered one) or whose
        package is not installed; empty otherwise."""
        if name not in self:
            where = f"'{self.section}.name' {name!r} is not a registered {self.noun}." if self.single else \
                f"Unknown {self.noun} '{name}' in '{self.section}'."
            return [f"{where}{closest(name, self)} Registered: {', '.join(sorted(self))}."]
        package = self.requires(name)
        if package is not None and not installed(package):
            return [f"'{self.section}.{name}' needs the '{package}' package, which is not installed: pip install {package} "
                    f"(or remove '{name}' from '{self.section}')."]
        return []

    def option_problems(self, name: str, given: Iterable[str], *, also: tuple[str, ...] = ()) -> list[str]:
        """One message per key of ``given`` that entry ``name`` does not take (it is imported to read its signature).

        Args:
            name: a registered name.
            given: the keys the config gives it.
            also: keys the section itself holds besides the builder's options (``name``, ``lr``).
        """
        where = f'{self.section}.' if self.single else f'{self.section}.{name}.'
        try:
            options, open_ended = self.options(name)
        except ImportError as e:
            return [f"'{self.section}.{name}' needs a package that is not installed ({e.name or e}); pip install it or remove "
                    f"'{name}' from '{self.section}'."]
        if open_ended:
            return []
        unknown = check_keys(given, list(also) + options, where)
        return [f'{u[:-1]} (options of {name!r}).' if self.single and u.endswith('.') else u for u in unknown]


def builder_options(builder: Callable[..., Any], *, skip_first: bool) -> tuple[list[str], bool]:
    """Keyword options a builder accepts, and whether it takes arbitrary ``**kwargs``.

    Args:
        builder: function or class.
        skip_first: skip the first positional parameter (an optimizer's params).
    """
    names: list[str] = []
    var_kwargs = False
    first_positional_seen = not skip_first
    for param in inspect.signature(builder).parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            var_kwargs = True
        elif param.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        elif param.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) and not first_positional_seen:
            first_positional_seen = True
        elif param.kind is not inspect.Parameter.POSITIONAL_ONLY:
            names.append(param.name)
    return names, var_kwargs


def check_options(valid: list[str], given: Any, *, what: str) -> None:
    """Raise a ValueError for the first key of ``given`` not in ``valid`` (with a hint)."""
    for key in given:
        if key not in valid:
            raise ValueError(f'unknown option {key!r} for {what}.{closest(key, valid)} Valid options: {", ".join(valid) or "none"}.')


# The built-in entries. Paths, not imports: a config's names are checked without importing
# Composer (~3 s) or a logger's package; an entry is imported when a run (or a check of its
# options) first needs it.
optimizers = Registry('optimizer', section='optimizer', reserved=('lr', 'weight_decay'), skip_first=True, single=True, entries={
    'adamwscale': 't5composer.optim.adamwscale:AdamWScale',
    'adafactor': 't5composer.optim.registry:build_adafactor',
    'adamw': 'torch.optim:AdamW',
})

schedulers = Registry('scheduler', section='scheduler', reserved=('base_lr',), single=True, noun='schedule', entries={
    'cosine': 't5composer.optim.schedulers:NanoT5CosineScheduler',
    'inverse_sqrt': 't5composer.optim.schedulers:InverseSqrtScheduler',
    'legacy': 't5composer.optim.schedulers:InverseSqrtScheduler',  # nanoT5's name for the same schedule
    'constant': 't5composer.optim.schedulers:ConstantScheduler',
})

algorithms = Registry('algorithm', section='algorithms', entries={
    # Composer's GradientClipping, clipping by norm with the step's one shared gradient norm.
    'gradient_clipping': 't5composer.optim.clipping:GradientClipping',
    'low_precision_layernorm': 'composer.algorithms:LowPrecisionLayerNorm',
})

callbacks = Registry('callback', section='callbacks', entries={
    'nanot5_log': 't5composer.callbacks.nanot5_log:NanoT5Log',
    'hf_export': 't5composer.callbacks.hf_export:HFExport',
    'speed_monitor': 'composer.callbacks:SpeedMonitor',
    'lr_monitor': 'composer.callbacks:LRMonitor',
    'memory_monitor': 'composer.callbacks:MemoryMonitor',
    'optimizer_monitor': 'composer.callbacks:OptimizerMonitor',
    'runtime_estimator': 'composer.callbacks:RuntimeEstimator',
    'nan_monitor': 'composer.callbacks:NaNMonitor',
    'resource_monitor': 't5composer.callbacks.resource_monitor:ResourceMonitor',
    'loop_probe': 't5composer.callbacks.loop_probe:LoopProbe',  # bench/gpu_check.sh: sync waits and GPU idle time
})

# Composer imports these loggers' packages only when it builds them; the pip name equals the
# import name for all three.
loggers = Registry('logger', section='loggers', entries={
    'tensorboard': ('composer.loggers:TensorboardLogger', 'tensorboard'),
    'wandb': ('composer.loggers:WandBLogger', 'wandb'),
    'mlflow': ('composer.loggers:MLFlowLogger', 'mlflow'),
    'file': 'composer.loggers:FileLogger',
    'in_memory': 'composer.loggers:InMemoryLogger',
})
