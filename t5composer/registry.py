"""Named builders (optimizers, schedulers) that configs refer to by string.

A :class:`Registry` is a dict of name -> builder with a ``register`` decorator and errors that
name the closest registered entry. :func:`builder_options` reads which keyword options a builder
takes from its signature, so a typo in a YAML fails at build time with the list of valid keys.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from t5composer.errors import closest

__all__ = ['Registry', 'builder_options', 'check_options']


class Registry(dict):
    """A dict of builders with a ``register`` decorator.

    Args:
        kind: what the entries are (``optimizer``, ``scheduler``), used in messages.
    """

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

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
            if name in self and not overwrite and self[name] is not builder:
                raise ValueError(f'{self.kind} {name!r} is already registered; pass overwrite=True to replace it')
            self[name] = builder
            return builder

        return decorator

    def lookup(self, name: str) -> Callable:
        """The builder registered as ``name``; a ValueError naming the closest one otherwise."""
        if name not in self:
            raise ValueError(f'unknown {self.kind} {name!r}.{closest(name, self)} Registered: {", ".join(sorted(self))}.')
        return self[name]


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


def section_name_and_key_problems(section: str, name: str, registry: Any, *, options: list[str], open_ended: bool,
                                  given: dict[str, Any], what: str) -> list[str]:
    """Config problems shared by registry-backed YAML sections (``optimizer:``, ``scheduler:``).

    Args:
        section: the YAML section (``optimizer``).
        name: its ``name`` value.
        registry: the registry ``name`` must be in.
        options: the keys the section accepts besides ``name`` (empty when ``name`` is unknown).
        open_ended: the builder takes ``**kwargs``, so any key is accepted.
        given: the section's keys besides ``name``.
        what: what a registry entry is called in the message (``optimizer``, ``schedule``).

    Returns:
        A message for an unknown name (with the closest registered one), or one per unknown key,
        each naming the entry whose options it is not among; empty if neither.
    """
    from t5composer.config.validation import check_keys

    if name not in registry:
        return [f"'{section}.name' {name!r} is not a registered {what}.{closest(name, registry)} "
                f"Registered: {', '.join(sorted(registry))}."]
    if open_ended:
        return []
    unknown = check_keys(given, ['name'] + options, f'{section}.')
    return [f'{u[:-1]} (options of {name!r}).' if u.endswith('.') else u for u in unknown]

