"""One run, one owner: a lock on the save folder while a run trains into it.

Two processes training into the same ``save_folder`` interleave checkpoints and ``metrics.jsonl``,
and one of them dies in checkpoint rotation. The first one to start holds a POSIX record lock
(``fcntl.lockf``) on ``<save_folder>/.t5composer-run.lock``; a second one is refused, naming the
holder (process, host, start time). The kernel drops the lock when the holder exits or is killed,
so a lock is never stale on a local filesystem (a killed holder leaves the file, which the next
run takes over); a clean release removes the file. Record locks belong to the process: dataloader
workers forked from it do not hold it, so a killed run's orphaned worker cannot block the resume. On a filesystem without locks (``lockf``
fails with ENOLCK/EOPNOTSUPP) the file's pid is checked instead: alive on this host means taken.

Within one process the same folder may be locked more than once (tests build several trainers
in turn): the lock is counted and released with the last :meth:`RunLock.release`. (A record lock
also ends when its process closes *any* descriptor of the file, so nothing else in the process
may open the lock file.)
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
from dataclasses import dataclass

__all__ = ['LOCKS_UNSUPPORTED', 'LOCK_FILENAME', 'RunLock', 'RunLockedError', 'acquire_run_lock', 'still_at']

LOCK_FILENAME = '.t5composer-run.lock'
# What fcntl.lockf raises on a filesystem without record locks (some NFS mounts, FUSE).
LOCKS_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)


class RunLockedError(RuntimeError):
    """Another live process trains into the same save folder (the message names it and the fix)."""


@dataclass
class _Held:
    fd: int
    count: int


_HELD: dict[str, _Held] = {}


@dataclass
class RunLock:
    """A held lock on a save folder; :meth:`release` once (further calls do nothing)."""

    folder: str
    path: str
    _released: bool = False

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        held = _HELD.get(self.path)
        if held is None:
            return
        held.count -= 1
        if held.count <= 0:
            del _HELD[self.path]
            # A clean exit leaves no file behind: unlink while still holding the lock (a process that
            # opened the old file and locks it after us sees it was unlinked and retries), then close,
            # which drops the record lock.
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.close(held.fd)


def _holder_text(path: str) -> str:
    try:
        with open(path, encoding='utf-8') as f:
            info = json.load(f)
        return f"process {info['pid']} on host {info['host']} (started {info['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return 'another process'


def _refusal(folder: str, path: str) -> RunLockedError:
    return RunLockedError(
        f"Another run is training into '{folder}': {_holder_text(path)} holds {path}. Two runs in one save_folder "
        'would interleave their checkpoints and metrics.jsonl. Wait for that run to finish (or stop it), or give this '
        'run another run_name / save_folder.',
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _claimed_by_live_process(path: str) -> bool:
    """Without kernel locks: does the file name a live process of this host (other than us)?"""
    try:
        with open(path, encoding='utf-8') as f:
            info = json.load(f)
        pid, host = int(info['pid']), str(info['host'])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return host == socket.gethostname() and pid != os.getpid() and _pid_alive(pid)


def acquire_run_lock(folder: str) -> RunLock:
    """Lock ``folder`` (created if needed) for this process, or refuse.

    Raises:
        RunLockedError: a live process holds the lock; the message names it.
        OSError: the folder cannot be created or written (callers check writability first).
    """
    os.makedirs(folder, exist_ok=True)
    path = os.path.realpath(os.path.join(folder, LOCK_FILENAME))
    held = _HELD.get(path)
    if held is not None:
        held.count += 1
        return RunLock(folder=folder, path=path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EACCES, errno.EAGAIN):
                    raise _refusal(folder, path) from None
                if e.errno not in LOCKS_UNSUPPORTED:
                    raise
                if _claimed_by_live_process(path):  # no kernel locks here: trust a live pid of this host
                    raise _refusal(folder, path) from None
            if not still_at(fd, path):
                os.close(fd)  # the holder unlinked it as we opened it: lock the new file instead
                continue
            info = {'pid': os.getpid(), 'host': socket.gethostname(),
                    'started': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}
            data = (json.dumps(info) + '\n').encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        except BaseException:
            os.close(fd)
            raise
        _HELD[path] = _Held(fd=fd, count=1)
        return RunLock(folder=folder, path=path)


def still_at(fd: int, path: str) -> bool:
    """Is the file open as ``fd`` still the one at ``path``? (A lock taken on a file that was just
    unlinked or renamed aside protects nothing: the caller opens the new one and locks again.)"""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False
