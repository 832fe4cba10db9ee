"""Who reads a converted split, and who may replace it; one Streaming registration at a time.

**Readers and the converter.** Every process that reads a local split (each rank of a training
run) holds a shared POSIX record lock (``fcntl.lockf``, F_RDLCK) on ``<split>/.t5composer-readers.lock``
from the moment it checks the split until it exits. ``convert_c4.py --overwrite`` takes the
exclusive lock (F_WRLCK) before it converts and keeps it until the new split is in place, so it
refuses to replace data a running job reads (naming the processes), and no job starts on a split
that is being replaced. Record locks belong to a process: dataloader workers forked from it hold
none, and the kernel drops them when the process dies, so a killed run leaves no stale lock. A
process drops *all* its record locks on a file when it closes *any* descriptor of that file, so
the descriptors are kept here, one per file, for the life of the process. A read-only split
whose lock file cannot be created is read without a lock (nobody can replace it there either).

**Streaming's shared-memory names.** Each StreamingDataset registers a numeric prefix for its
shared memory by looking for the first free one and then creating it, with nothing in between
to stop another process doing the same: two jobs that build their datasets in the same instant
pick the same prefix and one dies with ``FileExistsError: '/000000_locals'``.
:func:`streaming_registration` serialises that step across the processes of this machine (an
``flock`` on a file in the temp directory Streaming itself uses); the ranks of one job go through
together, since Streaming's registration has barriers inside.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import tempfile
import time
from typing import Callable, Iterator, Optional

from t5composer.run_lock import LOCKS_UNSUPPORTED, still_at

log = logging.getLogger(__name__)

__all__ = [
    'READER_LOCK_FILENAME', 'SplitInUseError', 'hold_reader_lock', 'lock_holders', 'replacing_split', 'streaming_registration',
    'machine_lock',
]

READER_LOCK_FILENAME = '.t5composer-readers.lock'
_MACHINE_LOCK_FILENAME = 't5composer-streaming-registration.lock'
_BUSY = (errno.EACCES, errno.EAGAIN)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)

# Lock file (real path) -> the descriptor holding this process's shared lock on it, until exit.
_READERS: dict[str, int] = {}


class SplitInUseError(OSError):
    """A split is being read by running jobs (for the converter), or replaced (for a reader)."""


def _describe(pid: int) -> str:
    try:
        with open(f'/proc/{pid}/cmdline', 'rb') as f:
            command = ' '.join(f.read().replace(b'\0', b' ').decode('utf-8', 'replace').split())
    except OSError:
        command = ''
    if len(command) > 120:
        command = command[:117] + '...'
    return f'{pid} ({command})' if command else str(pid)


def lock_holders(path: str) -> list[int]:
    """Processes of this machine holding a record lock on ``path`` (from /proc/locks; [] if unknown)."""
    try:
        st = os.stat(path)
        with open('/proc/locks', encoding='ascii', errors='replace') as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    device = f'{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}'
    pids = []
    for line in lines:
        fields = line.split()
        if '->' in fields or len(fields) < 6 or fields[1] != 'POSIX':
            continue  # a waiter, or a lock of another kind
        if fields[5] == device and fields[4].isdigit():
            pids.append(int(fields[4]))
    return sorted(set(pids))


def _held_by(path: str, fd: int | None = None) -> str:
    pids = [p for p in lock_holders(path) if p != os.getpid()]
    if not pids and fd is not None:
        try:  # /proc/locks unreadable (another namespace): ask the kernel for one conflicting holder
            import struct

            layout = 'hhqqi'  # struct flock: l_type, l_whence, l_start, l_len, l_pid (native alignment)
            query = struct.pack(layout, fcntl.F_WRLCK, 0, 0, 0, 0)
            pid = struct.unpack(layout, fcntl.fcntl(fd, fcntl.F_GETLK, query))[4]
            pids = [pid] if pid > 0 else []
        except (OSError, struct.error):
            pids = []
    return ', '.join(_describe(p) for p in pids) if pids else 'another process'


def hold_reader_lock(split_dir: str) -> bool:
    """Hold a shared lock on ``split_dir`` for the rest of this process's life (idempotent).

    Args:
        split_dir: a local split directory (it exists).

    Returns:
        False when no lock can be taken (a read-only split without a lock file, or a filesystem
        without record locks); the split is then read unprotected.

    Raises:
        SplitInUseError: ``convert_c4.py --overwrite`` is replacing the split right now.
    """
    path = os.path.join(split_dir, READER_LOCK_FILENAME)
    for _ in range(5):  # the split may be swapped for a new one between open and lock: retry on the new one
        key = os.path.realpath(path)
        if key in _READERS:
            return True
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError as e:
            if e.errno in _NOT_WRITABLE + (errno.ENOENT,):
                log.debug('No reader lock for %s (%s); reading it without one.', split_dir, e)
                return False
            raise
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            holder = _held_by(path, fd) if e.errno in _BUSY else ''
            os.close(fd)
            if e.errno in _BUSY:
                raise SplitInUseError(
                    f"The split {split_dir} is being replaced by a conversion (recipes/convert_c4.py --overwrite, process "
                    f'{holder}): reading it now would mix old and new data. Wait for the conversion to finish and start '
                    'again, or point data.local at another copy of the data.',
                ) from None
            if e.errno in LOCKS_UNSUPPORTED:
                log.debug('The filesystem of %s has no record locks; reading it without one.', split_dir)
                return False
            raise
        if still_at(fd, path):
            _READERS[key] = fd
            return True
        os.close(fd)  # locked a split that was just moved aside; lock the one now in its place
        time.sleep(0.05)
    raise SplitInUseError(f'The split {split_dir} keeps being replaced while this run tries to read it; '
                          'wait for the conversion writing it to finish and start again.')


@contextlib.contextmanager
def replacing_split(split_dir: str) -> Iterator[None]:
    """Hold the exclusive lock on an existing split while it is converted anew and replaced.

    Raises:
        SplitInUseError: running processes read the split; the message names them.
    """
    path = os.path.join(split_dir, READER_LOCK_FILENAME)

    def refusal(holder: str) -> SplitInUseError:
        return SplitInUseError(
            f'{split_dir} is being read by running process(es) {holder}; replacing it now would change the data under '
            'them. Wait for them to finish (or stop them), or convert into another --out_root and point data.local at it.',
        )

    if os.path.realpath(path) in _READERS:
        raise refusal(f'{os.getpid()} (this process)')
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        if e.errno not in _NOT_WRITABLE:
            raise
        # No write access to the lock file: no lock to take, but /proc/locks still shows readers.
        holders = [p for p in lock_holders(path) if p != os.getpid()] if os.path.exists(path) else []
        if holders:
            raise refusal(', '.join(_describe(p) for p in holders)) from None
        yield
        return
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in _BUSY:
                raise refusal(_held_by(path, fd)) from None
            if e.errno not in LOCKS_UNSUPPORTED:
                raise
            log.warning('The filesystem of %s has no record locks: cannot tell whether a running job reads it.', split_dir)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def machine_lock(timeout: float = 300.0) -> Iterator[None]:
    """An exclusive lock shared by every t5composer process of this machine (for Streaming's shared state).

    After ``timeout`` seconds (a holder stuck, e.g. in a barrier whose peer died) it goes on
    without the lock, with a warning, rather than wait forever.
    """
    path = os.path.join(tempfile.gettempdir(), _MACHINE_LOCK_FILENAME)
    fd = None
    for flags in (os.O_RDONLY, os.O_RDONLY | os.O_CREAT):  # another user's file in a sticky /tmp opens without O_CREAT only
        try:
            fd = os.open(path, flags, 0o644)
            break
        except OSError:
            continue
    if fd is None:
        yield
        return
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    log.warning('Could not take %s within %.0f s (%s); building the datasets without it.', path, timeout, e)
                    break
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # releases the flock


@contextlib.contextmanager
def streaming_registration(check: Optional[Callable[[], Optional[str]]] = None) -> Iterator[None]:
    """Build StreamingDatasets inside this: one job of this machine at a time registers its shared memory.

    The local leader (LOCAL_RANK 0) takes :func:`machine_lock`; the job's other ranks wait for it
    (a collective), build their datasets together with it (Streaming's registration has barriers
    of its own), and it lets go once every rank is through.

    Args:
        check: run by every rank first (the leader under the lock); a message refuses the build on
            every rank alike (:class:`SplitInUseError`), so none is left waiting for the others.
    """
    import torch.distributed as tdist

    together = tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1
    leader = int(os.environ.get('LOCAL_RANK', '0')) == 0
    with machine_lock() if leader else contextlib.nullcontext():
        problem = check() if check is not None else None
        if together:
            found: list[Optional[str]] = [None] * tdist.get_world_size()
            tdist.all_gather_object(found, problem)  # also the barrier: the leader holds the lock by now
            problem = next((p for p in found if p), None)
        if problem:
            raise SplitInUseError(problem)
        yield
        if together:
            tdist.barrier()
