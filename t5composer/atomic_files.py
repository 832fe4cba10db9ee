"""Files and directories that appear whole or not at all: write beside the target, then rename.

A reader (or a resumed run) never sees half a checkpoint, half an export or half a split: the
content is written under a hidden temporary name in the same directory (same filesystem, so the
rename is atomic), fsynced, and only then given its real name. On any error the temporary is
removed and the target is left as it was. This module imports nothing from the project.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from pathlib import Path
from typing import Callable

__all__ = ['PARTIAL_PREFIX', 'fsync_dir', 'install_directory', 'moved_aside_name', 'replace_directory', 'write_atomically']

# Hidden temporaries start with this; checkpoint recovery removes leftovers of killed writers.
PARTIAL_PREFIX = '.partial-'


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable (best effort: some filesystems cannot fsync a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomically(filename: str | os.PathLike, write: Callable[[str], None], *, durable: bool = True) -> None:
    """Call ``write(tmp_path)`` and move the result to ``filename`` only once it is complete.

    The temporary file sits beside the target under a hidden name of this process and thread
    that no checkpoint pattern matches. On any error it is removed and the error re-raised, so a
    full disk leaves neither a half file nor a valid-looking name behind. Writers racing to put
    the same content at ``filename`` are safe: the last rename wins, every reader sees a whole file.

    Args:
        filename: the target.
        write: writes the content to the path it is given.
        durable: fsync the file and the directory (off for caches that can be made again).
    """
    folder, base = os.path.split(os.path.abspath(filename))
    tmp = os.path.join(folder, f'{PARTIAL_PREFIX}{os.getpid()}-{threading.get_ident()}-{base}')
    try:
        write(tmp)
        if durable:
            with open(tmp, 'rb+') as f:
                os.fsync(f.fileno())
        os.replace(tmp, filename)
    except BaseException:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        fsync_dir(folder)


def replace_directory(dest: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Build a directory with ``fill(tmp_dir)`` and put it at ``dest``, replacing what was there.

    ``dest`` shows either its old content or the complete new one: the new directory is filled
    beside it, the old one is renamed aside, the new one renamed in, the old one deleted. (A kill
    between the two renames leaves the old content under ``.partial-<pid>-old-<name>``, never a
    half-written ``dest``.) Callers decide beforehand whether ``dest`` may be replaced.

    Returns:
        ``dest`` as a Path.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f'{PARTIAL_PREFIX}{os.getpid()}-{dest.name}'
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        fill(tmp)
        install_directory(tmp, dest, replace=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def moved_aside_name(dest: str | os.PathLike) -> Path:
    """Where :func:`install_directory` keeps ``dest``'s old content between its two renames."""
    dest = Path(dest)
    return dest.parent / f'{PARTIAL_PREFIX}{os.getpid()}-old-{dest.name}'


def install_directory(tmp: str | os.PathLike, dest: str | os.PathLike, *, replace: bool) -> bool:
    """Give a complete directory ``tmp`` (beside ``dest``) the name ``dest``, atomically.

    Args:
        tmp: the finished directory, on ``dest``'s filesystem.
        dest: its name from now on.
        replace: an existing ``dest`` is replaced (its old content moved aside, then deleted; put
            back if the second rename fails). Without it an existing ``dest`` is kept.

    Returns:
        True when ``tmp`` is now ``dest``; False when ``dest`` existed (or another process put it
        there first) and ``replace`` is off: ``tmp`` is left to the caller.
    """
    tmp, dest = Path(tmp), Path(dest)
    if dest.exists() and not replace:
        return False
    old = moved_aside_name(dest)
    moved_aside = False
    try:
        if dest.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.rename(dest, old)
            moved_aside = True
        os.rename(tmp, dest)
    except OSError as e:
        if moved_aside and not dest.exists():
            os.rename(old, dest)  # put the old content back
        if not replace and e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False  # another process installed it first
        raise
    shutil.rmtree(old, ignore_errors=True)
    fsync_dir(dest.parent)
    return True
