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
import logging
import os
import re
import tempfile

log = logging.getLogger(__name__)

__all__ = [
    'clean_stale_streaming_state', 'live_prefixes', 'remove_lock_files_at_exit', 'remove_orphan_lock_files', 'streaming_leftovers',
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


def live_prefixes() -> set[str]:
    """Prefixes whose shared memory some running process has mapped (as far as we can see)."""
    live: set[str] = set()
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open(f'/proc/{pid}/maps') as f:
                live.update(_MAPS_RE.findall(f.read()))
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


def streaming_leftovers(tmp_dir: str | None = None) -> set[str]:
    """Every streaming segment and lock file that exists now (for before/after comparisons)."""
    tmp_dir = tmp_dir or tempfile.gettempdir()
    shm = {os.path.join(SHM_DIR, n) for names in _shm_prefixes().values() for n in names}
    locks = {p for paths in _lock_files(tmp_dir).values() for p in paths}
    return shm | locks


_registered = False


def remove_lock_files_at_exit() -> None:
    """Register (once) an exit handler that removes our lock files after Streaming's own cleanup.

    Exit handlers run last-registered-first; Streaming registers its shared-memory cleanup when a
    dataset is built, so registering this before any dataset makes it run after them.
    """
    global _registered
    if not _registered:
        atexit.register(remove_orphan_lock_files)
        _registered = True
