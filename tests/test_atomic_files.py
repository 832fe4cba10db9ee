"""write_atomically and install_directory: whole or nothing, and the race between two writers."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from t5composer import atomic_files
from t5composer.atomic_files import PARTIAL_PREFIX, install_directory, moved_aside_name, replace_directory, write_atomically


def _dir(path: Path, **files: str) -> Path:
    path.mkdir()
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_threads_writing_one_file_at_once_leave_it_whole(tmp_path):
    """Two dataloader threads unpacking the same shard: each writes its own temporary, the last rename wins."""
    target = tmp_path / 'shard.mds'
    barrier = threading.Barrier(8)

    def write(tmp: str) -> None:
        barrier.wait()  # every thread has its temporary open at the same moment
        Path(tmp).write_bytes(b'x' * 100_000)

    errors: list[BaseException] = []

    def writer() -> None:
        try:
            write_atomically(target, write, durable=False)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors  # with one temporary per process, one thread renamed it from under the others
    assert target.read_bytes() == b'x' * 100_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ['shard.mds']


def test_install_directory_keeps_or_replaces_what_is_there(tmp_path):
    dest = _dir(tmp_path / 'train', a='old')
    new = _dir(tmp_path / f'{PARTIAL_PREFIX}1-train', a='new')
    assert install_directory(new, dest, replace=False) is False  # kept; the new one is the caller's
    assert (dest / 'a').read_text() == 'old' and new.exists()
    assert install_directory(new, dest, replace=True) is True
    assert (dest / 'a').read_text() == 'new' and not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['train']  # the old content moved aside is gone
    assert install_directory(_dir(tmp_path / 'fresh'), tmp_path / 'val', replace=False) is True


def test_install_directory_loses_a_race_without_replace(tmp_path, monkeypatch):
    """Another process renames its copy into place between our check and our rename."""
    dest = tmp_path / 'tok'
    mine = _dir(tmp_path / 'mine', a='mine')
    real_rename = os.rename

    def theirs_first(src, dst):
        if Path(dst) == dest and not dest.exists():
            _dir(dest, a='theirs')
            raise OSError(errno.ENOTEMPTY, 'Directory not empty', str(dst))
        return real_rename(src, dst)

    monkeypatch.setattr(atomic_files.os, 'rename', theirs_first)
    assert install_directory(mine, dest, replace=False) is False
    assert (dest / 'a').read_text() == 'theirs'


def test_a_failed_replace_puts_the_old_directory_back(tmp_path, monkeypatch):
    dest = _dir(tmp_path / 'hf', a='old')
    real_rename = os.rename

    def second_fails(src, dst):  # the new directory's rename into place; putting the old one back works
        if Path(dst) == dest and Path(src) != moved_aside_name(dest):
            raise OSError(errno.EIO, 'Input/output error', str(dst))
        return real_rename(src, dst)

    monkeypatch.setattr(atomic_files.os, 'rename', second_fails)
    with pytest.raises(OSError, match='Input/output error'):
        replace_directory(dest, lambda tmp: (tmp / 'a').write_text('new'))
    assert (dest / 'a').read_text() == 'old'
    assert not moved_aside_name(dest).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['hf']
