"""Clean up what MosaicML Streaming leaves behind: shared memory of killed runs and lock files.

Each StreamingDataset registers a numeric prefix and creates ``/dev/shm/<prefix>_*`` segments
and ``<tmp>/<prefix>_{barrier,cache}_filelock`` files. Streaming unlinks the segments at a normal
exit but never removes the lock files, and a killed run leaves both (and later datasets skip every
prefix whose lock file exists). Streaming's own ``clean_stale_shared_memory`` frees *every*
streaming segment on the machine, including those of other jobs that are running.

Here a prefix is stale when no process maps any of its segments (``/proc/<pid>/maps``), so
cleaning is safe while other jobs run. Segments of other users cannot be read or removed and are
left alone.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import tempfile
from typing import Any, Iterator

log = logging.getLogger(__name__)

__all__ = [
    'clean_stale_streaming_state', 'closing_prefix_probes', 'live_prefixes', 'processes_reading', 'release_shared_memory',
    'remove_lock_files_at_exit', 'remove_orphan_lock_files', 'streaming_leftovers',
]

SHM_DIR = '/dev/shm'
_SHM_RE = re.compile(r'^(\d{6})_[a-z_]+$')
_LOCK_RE = re.compile(r'^(\d{6})_(barrier|cache)_filelock$')
_MAPS_RE = re.compile(r'/dev/shm/(\d{6})_')


def _shm_prefixes() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return found
    for name in names:
        m = _SHM_RE.match(name)
        if m:
            found.setdefault(m.group(1), []).append(name)
    return found


def _mapped_prefixes(pid: str) -> set[str]:
    """Prefixes of the segments process ``pid`` maps now; OSError if it is gone or not ours to read.

    A mapping of a segment that was unlinked since ('... (deleted)') does not count: the name may
    belong to a new segment of another dataset by now (a forked process, such as a dataloader
    worker, keeps its parent's old mappings).
    """
    with open(f'/proc/{pid}/maps') as f:
        return {m for line in f if not line.rstrip().endswith('(deleted)') for m in _MAPS_RE.findall(line)}


def live_prefixes() -> set[str]:
    """Prefixes whose shared memory some running process has mapped (as far as we can see)."""
    live: set[str] = set()
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            live |= _mapped_prefixes(pid)
        except OSError:
            continue  # gone, or another user's process (whose segments we cannot remove anyway)
    return live


def _lock_files(tmp_dir: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    try:
        names = os.listdir(tmp_dir)
    except OSError:
        return found
    for name in names:
        m = _LOCK_RE.match(name)
        if m:
            found.setdefault(m.group(1), []).append(os.path.join(tmp_dir, name))
    return found


def remove_orphan_lock_files(tmp_dir: str | None = None) -> list[str]:
    """Remove streaming lock files whose prefix has no shared memory left (nobody can hold them)."""
    tmp_dir = tmp_dir or tempfile.gettempdir()
    with_shm = set(_shm_prefixes())
    removed = []
    for prefix, paths in _lock_files(tmp_dir).items():
        if prefix in with_shm:
            continue
        for path in paths:
            try:
                os.remove(path)
                removed.append(path)
            except OSError:
                pass
    return removed


def clean_stale_streaming_state(tmp_dir: str | None = None) -> tuple[list[str], list[str]]:
    """Unlink streaming shared memory no process maps, then the lock files left without memory.

    Returns:
        The removed segment names and lock file paths.
    """
    from t5composer.data.split_lock import machine_lock

    # Under the lock datasets are built with: a segment that another job has just created and not
    # mapped yet would look stale here.
    with machine_lock():
        live = live_prefixes()
        removed_shm = []
        for prefix, names in _shm_prefixes().items():
            if prefix in live:
                continue
            for name in names:
                try:
                    os.unlink(os.path.join(SHM_DIR, name))
                    removed_shm.append(name)
                except OSError:
                    pass
        removed_locks = remove_orphan_lock_files(tmp_dir)
    if removed_shm:
        log.info('Removed %d shared-memory segments left by killed streaming runs.', len(removed_shm))
    return removed_shm, removed_locks


def processes_reading(split_dir: str) -> list[int]:
    """Other processes whose live StreamingDataset uses ``split_dir`` as its local directory.

    Every dataset records its local directories in ``/dev/shm/<prefix>_locals``. Streaming's own
    check ("Reused local directory") stops at the first free prefix, so it misses datasets
    registered above a gap that another job left; this reads every prefix.
    """
    import numpy as np

    target = os.path.abspath(split_dir)
    prefixes = []
    for prefix, names in _shm_prefixes().items():
        if f'{prefix}_locals' not in names:
            continue
        try:
            with open(os.path.join(SHM_DIR, f'{prefix}_locals'), 'rb') as f:
                data = f.read()
            size = int(np.frombuffer(data[:4], np.int32)[0])
            locals_ = data[4:size].decode('utf-8').split('\0')[:-1]  # the dirs, then the prefix (Streaming's layout)
        except (OSError, ValueError, UnicodeDecodeError, IndexError):
            continue
        if target in locals_:
            prefixes.append(prefix)
    if not prefixes:
        return []
    pids = set()
    for pid in os.listdir('/proc'):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            if _mapped_prefixes(pid) & set(prefixes):
                pids.add(int(pid))
        except OSError:
            continue
    return sorted(pids)


def streaming_leftovers(tmp_dir: str | None = None) -> set[str]:
    """Every streaming segment and lock file that exists now (for before/after comparisons)."""
    tmp_dir = tmp_dir or tempfile.gettempdir()
    shm = {os.path.join(SHM_DIR, n) for names in _shm_prefixes().values() for n in names}
    locks = {p for paths in _lock_files(tmp_dir).values() for p in paths}
    return shm | locks


_registered = False


def _segments(dataset: Any) -> dict[int, Any]:
    """The Streaming ``SharedMemory`` objects a dataset holds (some one level down, in its shared arrays and barrier)."""
    from streaming.base.shared.memory import SharedMemory

    found: dict[int, Any] = {}

    def visit(obj: Any, depth: int) -> None:
        for value in vars(obj).values():
            if isinstance(value, SharedMemory):
                found[id(value)] = value
            elif depth < 2 and type(value).__module__.startswith('streaming.base.shared') and hasattr(value, '__dict__'):
                visit(value, depth + 1)

    visit(dataset, 0)
    return found


def _release(shm: Any) -> None:
    atexit.unregister(shm.cleanup)
    shm.cleanup()  # unmaps; unlinks only a segment this object created


def release_shared_memory(dataset: Any) -> int:
    """Unmap a StreamingDataset's shared-memory segments now (and unlink those it created), not at exit.

    Streaming keeps every segment of every dataset mapped, with an open file descriptor, until the
    process exits (an ``atexit`` handler per segment). A process that builds many Trainers (a
    notebook, a sweep, the test suite) runs out of file descriptors; ``Trainer.close()`` calls this
    for the datasets of its dataloaders. The dataset cannot be iterated afterwards.

    Returns:
        The number of segments released.
    """
    found = _segments(dataset)
    for shm in found.values():
        _release(shm)
    return len(found)


@contextlib.contextmanager
def closing_prefix_probes(dataset: Any) -> Iterator[None]:
    """Build ``dataset`` (a StreamingDataset whose ``__init__`` runs inside) without Streaming's probe leak.

    To pick its prefix, Streaming opens a segment of every prefix other datasets registered and
    keeps each one open (and referenced by an ``atexit`` handler) until exit: every dataset built
    in a process leaks one descriptor per existing prefix, so a process that builds many leaks
    quadratically. The probes that are not the dataset's own are closed here once it is built.
    """
    import streaming.base.shared.prefix as prefix

    opened: list[Any] = []
    original = prefix.SharedMemory

    class Recorded(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            opened.append(self)

    prefix.SharedMemory = Recorded
    try:
        yield
    finally:
        prefix.SharedMemory = original
        own = _segments(dataset)
        for shm in opened:
            if id(shm) not in own:
                _release(shm)


def remove_lock_files_at_exit() -> None:
    """Register (once) an exit handler that removes our lock files after Streaming's own cleanup.

    Exit handlers run last-registered-first; Streaming registers its shared-memory cleanup when a
    dataset is built, so registering this before any dataset makes it run after them.
    """
    global _registered
    if not _registered:
        atexit.register(remove_orphan_lock_files)
        _registered = True
