"""Durations in recipes (``max_duration: 65536ba``, ``eval_interval: 1ep``, ``t_warmup: 0.1dur``): one parser.

Every duration a recipe sets goes through :func:`parse_duration`, so they all follow the same rules:

* a duration is a number with a unit: ``ba`` (batches, i.e. optimizer steps), ``ep`` (epochs),
  ``sp`` (samples), ``tok`` (tokens), or ``dur`` (a fraction of ``max_duration``); each key
  accepts the units that make sense for it;
* a bare number is refused, because Composer reads a bare ``20`` as 20 *epochs* for
  ``max_duration`` while a step count is what nanoT5 users mean; the message offers both spellings;
* counts are whole and positive (``1.5ba``, ``0ba`` and ``-3ba`` are refused); only ``dur`` is a
  fraction, in (0, 1]; a key may allow zero (``t_warmup: 0ba`` turns warmup off).

This module imports nothing from the project (and not Composer either), so config validation can use
it within a second of start-up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

__all__ = ['UNIT_NAMES', 'Duration', 'DurationError', 'parse_duration', 'duration_problems', 'batches_of']

UNIT_NAMES = {'ba': 'batches', 'ep': 'epochs', 'sp': 'samples', 'tok': 'tokens', 'dur': 'a fraction of max_duration'}
_FORM = re.compile(r'^\s*(?P<sign>[-+]?)(?P<value>\d+(?:\.\d*)?|\.\d+)(?:e(?P<exp>[-+]?\d+))?\s*(?P<unit>[a-z]{0,3})\s*$', re.IGNORECASE)


class DurationError(ValueError):
    """A duration that cannot be used; the message names the key, the value and a correct spelling."""


@dataclass(frozen=True)
class Duration:
    """A parsed duration: ``value`` is an int for every unit but ``dur`` (a float in (0, 1])."""

    value: int | float
    unit: str

    def __str__(self) -> str:
        return f'{self.value:g}{self.unit}' if self.unit == 'dur' else f'{self.value}{self.unit}'


def _spellings(number: str, units: Iterable[str]) -> str:
    return ' or '.join(f'{number}{u} ({UNIT_NAMES[u]})' for u in units if u != 'dur')


def parse_duration(value: Any, *, key: str, units: tuple[str, ...], allow_zero: bool = False) -> Duration:
    """Parse ``value`` (the YAML value of ``key``) as a duration in one of ``units``.

    Args:
        value: what the recipe holds (a string such as ``'1000ba'``; numbers are refused).
        key: the key's dotted name, for the message.
        units: the units this key accepts, e.g. ``('ba', 'ep')``.
        allow_zero: accept a zero duration (``t_warmup: 0ba``).

    Raises:
        DurationError: the message says what is wrong with ``value`` and how to write it.
    """
    allowed = ', '.join(f'{u} ({UNIT_NAMES[u]})' for u in units)
    if isinstance(value, bool) or value is None or not isinstance(value, (str, int, float)):
        raise DurationError(f"'{key}' must be a duration like '1000{units[0]}' (units: {allowed}), got {value!r}.")
    match = _FORM.match(str(value))
    if match is None:
        raise DurationError(f"'{key}' must be a duration like '1000{units[0]}' (units: {allowed}), got {value!r}.")
    number, unit = match['value'] + (f"e{match['exp']}" if match['exp'] else ''), match['unit'].lower()
    if not unit:
        raise DurationError(
            f"'{key}' is {value!r}, a number without a unit, which Composer and the schedules would read differently "
            f"(epochs or steps); write it with its unit, e.g. {_spellings(_plain(number), units)}.",
        )
    if unit not in units:
        raise DurationError(f"'{key}' must be in one of the units {allowed}; got {value!r}.")
    amount = float(number)
    if match['sign'] == '-' or (amount == 0 and not allow_zero):
        raise DurationError(f"'{key}' must be {'zero or more' if allow_zero else 'positive'}, got {value!r}.")
    if unit == 'dur':
        if amount > 1:
            raise DurationError(f"'{key}' is {value!r}: a 'dur' duration is a fraction of max_duration, at most 1dur.")
        return Duration(amount, unit)
    if amount != int(amount):
        raise DurationError(
            f"'{key}' is {value!r}: {UNIT_NAMES[unit]} are counted whole; write a whole number such as {_whole(amount, unit)}"
            + (' (or a fraction of the run in dur, e.g. 0.1dur)' if 'dur' in units else '') + '.',
        )
    return Duration(int(amount), unit)


def _whole(amount: float, unit: str) -> str:
    low = int(amount)
    return f'{low}{unit} or {low + 1}{unit}' if low >= 1 else f'1{unit}'


def _plain(number: str) -> str:
    amount = float(number)
    return str(int(amount)) if amount == int(amount) else str(max(1, round(amount)))


def duration_problems(value: Any, *, key: str, units: tuple[str, ...], allow_zero: bool = False) -> list[str]:
    """:func:`parse_duration`'s message as a list of problems (empty when ``value`` is fine)."""
    try:
        parse_duration(value, key=key, units=units, allow_zero=allow_zero)
    except DurationError as e:
        return [str(e)]
    return []


def batches_of(value: Any) -> int | None:
    """The number of batches a valid duration stands for, when its unit is ``ba`` (else None)."""
    try:
        d = parse_duration(value, key='', units=tuple(UNIT_NAMES), allow_zero=True)
    except DurationError:
        return None
    return int(d.value) if d.unit == 'ba' else None
