"""Turn a plain dict into typed, validated dataclasses, with errors that say how to fix them.

Every key is checked at every level: an unknown key names the closest valid one, a wrong type
names the expected type, a missing required key is reported. All problems are collected and
raised together so a user fixes a YAML file in one pass.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union

from t5composer.errors import ConfigError, closest  # noqa: F401  (ConfigError re-exported: its old home)
from t5composer.registry import check_keys

__all__ = ['ConfigError', 'closest', 'from_dict', 'check_keys', 'required']


def required() -> Any:
    """A dataclass field the user must set (dataclasses need a default after other defaults)."""
    return dataclasses.field(default=None, metadata={'required': True})


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return ' | '.join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return ' | '.join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return 'null'
    if origin is list:
        return f'list of {_type_name(typing.get_args(tp)[0])}'
    if origin is dict:
        return 'mapping'
    if dataclasses.is_dataclass(tp):
        return 'mapping'
    return getattr(tp, '__name__', str(tp))


def _bracket_hint(value: Any, where: str) -> str:
    """Why a string setting got a list: ``[S2S]`` unquoted, in YAML or on a command line, is a one-item list."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        text = f'[{value[0]}]'
        return (f" Unquoted, {text} is a list; quote it to mean the text: {where.split('.')[-1]}: '{text}' in YAML, "
                f"\"{where}='{text}'\" on a shell command line.")
    return ''


def _convert(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """Check ``value`` against type ``tp``; return the converted value (problems appended)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        tagged = [a for a in args if dataclasses.is_dataclass(a)]
        if len(tagged) > 1 and isinstance(value, dict):
            return _convert_tagged(value, tagged, where, problems)
        if len(tagged) > 1 and value is not None:
            # Otherwise the union below would read 'must be mapping | mapping'.
            names = [f.default for cls in tagged for f in dataclasses.fields(cls) if f.name == 'name']
            problems.append(f"'{where}' must be a mapping of keys whose 'name' picks its kind ({', '.join(repr(n) for n in names)}), "
                            f"e.g. '{where}: {{name: {names[0]}, ...}}', got {type(value).__name__} {value!r}.")
            return value
        # Try each member quietly; report once with the whole union if none fits.
        for arg in args:
            trial: list[str] = []
            out = _convert(value, arg, where, trial)
            if not trial:
                return out
        if len(args) == 2 and type(None) in args:
            inner = next(a for a in args if a is not type(None))
            if dataclasses.is_dataclass(inner) and isinstance(value, dict):
                return _convert(value, inner, where, problems)
        hint = _bracket_hint(value, where) if str in args else ''
        problems.append(f"'{where}' must be {_type_name(tp)}, got {type(value).__name__} {value!r}.{hint}")
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            hint = closest(str(value), [str(c) for c in choices]) if isinstance(value, str) else ''
            problems.append(f"'{where}' must be one of {', '.join(repr(c) for c in choices)}, got {value!r}.{hint}")
        return value
    if tp is type(None):
        if value is not None:
            problems.append(f"'{where}' must be null, got {value!r}.")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"'{where}' must be a mapping of keys ({', '.join(f.name for f in dataclasses.fields(tp))}), got {type(value).__name__} {value!r}.")
            return tp()
        return _from_dict(tp, value, where + '.', problems)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            problems.append(f"'{where}' must be a list, got {type(value).__name__} {value!r}.")
            return value
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f'{where}[{i}]', problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"'{where}' must be a mapping (write 'name: value' entries indented under '{where}:'), got {type(value).__name__} {value!r}.")
            return {}
        _, val_tp = typing.get_args(tp)
        return {k: _convert(v, val_tp, f'{where}.{k}', problems) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"'{where}' must be true or false, got {value!r}.")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"'{where}' must be an integer, got {type(value).__name__} {value!r}.")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"'{where}' must be a number, got {type(value).__name__} {value!r}.")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"'{where}' must be a string, got {type(value).__name__} {value!r}.{_bracket_hint(value, where)}")
        return value
    raise TypeError(f'unsupported schema type {tp!r} at {where}')


def _convert_tagged(value: dict, classes: list[type], where: str, problems: list[str]) -> Any:
    """A mapping whose ``name`` key picks one of several dataclasses (e.g. data: {name: sni})."""
    by_name = {f.default: cls for cls in classes for f in dataclasses.fields(cls) if f.name == 'name'}
    default = dataclasses.fields(classes[0])  # the first listed class is the default
    name = value.get('name', next(f.default for f in default if f.name == 'name'))
    if name not in by_name:
        hint = closest(str(name), [str(n) for n in by_name])
        problems.append(f"'{where}.name' must be one of {', '.join(repr(n) for n in by_name)}, got {name!r}.{hint}")
        return None
    return _from_dict(by_name[name], value, where + '.', problems)


def _from_dict(cls: type, data: dict, prefix: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    extra_field = getattr(cls, '__extra_keys__', None)  # open sections collect unknown keys here
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            problems.append(f"Key {key!r} under '{prefix[:-1] or '<top level>'}' must be a string.")
            continue
        if key in fields and key != extra_field:
            kwargs[key] = _convert(value, hints[key], prefix + key, problems)
        elif extra_field is not None:
            extra[key] = value
        else:
            problems.extend(check_keys([key], [k for k in fields if k != extra_field], prefix))
    for name, f in fields.items():
        if f.metadata.get('required') and kwargs.get(name) is None:
            problems.append(f"Missing required key '{prefix}{name}' ({_type_name(hints[name])}).")
    if extra_field is not None:
        kwargs[extra_field] = extra
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # only reached with problems already recorded
        problems.append(f"'{prefix[:-1]}': {e}")
        return None


def from_dict(cls: type, data: dict) -> Any:
    """Build dataclass ``cls`` from ``data``, raising :class:`ConfigError` listing every problem."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError([f'The config must be a mapping at the top level, got {type(data).__name__}.'])
    out = _from_dict(cls, data, '', problems)
    if problems:
        raise ConfigError(problems)
    return out
