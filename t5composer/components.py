"""Build the Composer algorithms, callbacks and loggers a YAML recipe names.

``callbacks: {speed_monitor: {window_size: 10}}`` builds ``SpeedMonitor(window_size=10)``. Keys
are checked against the constructor's signature so a typo is an error, not a silent default.
The names live in :mod:`t5composer.registry`; add your own with :func:`register`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from t5composer import registry
from t5composer.config.validation import ConfigError
from t5composer.registry import Registry

__all__ = ['ALGORITHMS', 'CALLBACKS', 'LOGGERS', 'KINDS', 'register', 'build_components', 'component_problems']

ALGORITHMS = registry.algorithms
CALLBACKS = registry.callbacks
LOGGERS = registry.loggers
KINDS: dict[str, Registry] = {'algorithms': ALGORITHMS, 'callbacks': CALLBACKS, 'loggers': LOGGERS}


def register(kind: str, name: str) -> Callable[[type], type]:
    """Decorator: make a class available under ``name`` in ``kind`` (algorithms/callbacks/loggers)."""
    return KINDS[kind].register(name)


def _resolve(kind: str, section: dict[str, Optional[dict[str, Any]]], *, load: bool) -> tuple[list[str], list[tuple[str, type, dict]]]:
    entries = KINDS[kind]
    problems: list[str] = []
    resolved = []
    for name, kwargs in section.items():
        kwargs = kwargs or {}
        found = entries.name_problems(name)
        problems += found
        if found or not load:
            continue
        unknown = entries.option_problems(name, kwargs)
        problems += unknown
        if not unknown:
            resolved.append((name, entries[name], kwargs))
    return problems, resolved


def component_problems(kind: str, section: dict[str, Optional[dict[str, Any]]], *, load: bool = True) -> list[str]:
    """Problems with a YAML section, without building anything.

    Args:
        kind: ``algorithms``, ``callbacks`` or ``loggers``.
        section: the section's mapping of name -> options.
        load: also import each class (Composer: seconds) to check its options and packages;
            False checks the names (and the packages, by name) only.
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
