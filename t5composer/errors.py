"""Errors a user can fix, said as such: what failed, on which path, and what to do.

The entry points print these after ``error:`` instead of a traceback. Imports nothing from the project.
"""

from __future__ import annotations

import difflib
import errno
from typing import Iterable

__all__ = ['ConfigError', 'closest', 'describe_os_error', 'format_bytes', 'os_error_advice']

class ConfigError(ValueError):
    """A config (or the data and files it names) that cannot be used; the message lists every problem found.

    Args:
        problems: one message per problem, each saying what is wrong, where, and how to fix it.
    """

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = '\n'.join(f'  - {p}' for p in self.problems)
        super().__init__(f'Invalid config ({len(self.problems)} problem(s)):\n{lines}')


_ADVICE = {
    errno.EACCES: 'check its permissions, or choose a location you can write to',
    errno.EPERM: 'check its permissions, or choose a location you can write to',
    errno.EROFS: 'it is on a read-only filesystem; choose a location on a writable disk',
    errno.ENOSPC: 'the disk is full; free space there or choose a location on a disk with room',
    errno.EDQUOT: 'the disk quota is exhausted; free space or choose another location',
    errno.ENOTDIR: 'a part of the path is a file, not a folder; fix the path',
    errno.EISDIR: 'it is a folder where a file was expected; fix the path',
    errno.ENOENT: 'it (or a folder above it) does not exist; fix the path',
    errno.EEXIST: 'something of that name already exists; remove it or choose another name',
    errno.ENAMETOOLONG: 'the path is too long; choose a shorter one',
    errno.EMFILE: 'too many files are open; raise the limit (ulimit -n) or use fewer dataloader workers',
}


def closest(key: str, valid: Iterable[str]) -> str:
    """The "did you mean" hint of every message that names an unknown key or name: ``" Did you mean 'x'?"``,
    or ``''`` when nothing in ``valid`` is close to ``key``."""
    match = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ''


def os_error_advice(error: OSError) -> str:
    """What to do about an ``OSError``, by its errno (``'the disk is full; free space there ...'``)."""
    return _ADVICE.get(error.errno or -1, 'check the path and its disk')


def describe_os_error(error: OSError, *, what: str = '') -> str:
    """``"<what> '<path>': <reason>; <what to do>."`` for an ``OSError`` raised on a user's path."""
    path = error.filename if error.filename is not None else ''
    reason = error.strerror or str(error)
    advice = os_error_advice(error)
    if what:
        where = f"{what} '{path}'" if path else what
    else:
        where = f"'{path}'" if path else 'a file operation'
    return f'{where}: {reason}; {advice}.'


def format_bytes(n: float) -> str:
    """Sizes as the dry run prints checkpoints: ``34.2 GB``, ``420 MB`` (decimal units, as ``df -H``)."""
    return f'{n / 1e9:.1f} GB' if n >= 1e9 else f'{n / 1e6:.0f} MB'
