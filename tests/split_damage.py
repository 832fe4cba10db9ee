"""Ways to damage a converted split, and other processes that lock one, for the data-integrity tests
(tests/test_data_integrity.py and the catalogue in tests/test_bad_inputs.py)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import numpy as np


def index(split: Path) -> dict:
    return json.loads((split / 'index.json').read_text())


def shard_names(split: Path) -> list[str]:
    """The compressed shard files, in index order."""
    return [s['zip_data']['basename'] for s in index(split)['shards']]


def drop_unpacked(split: Path) -> None:
    """Remove the raw shards Streaming unpacked beside the compressed ones, so reading starts from those."""
    for s in index(split)['shards']:
        (split / s['raw_data']['basename']).unlink(missing_ok=True)


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Flip the bits of one byte (by default the middle one), keeping the file's size."""
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def read_rows(split: Path) -> list[np.ndarray]:
    """Every row of a split, decoded from its compressed shards."""
    from streaming.base.compression import decompress
    from streaming.base.format.mds.encodings import mds_decode

    rows = []
    for s in index(split)['shards']:
        data = decompress(s['compression'], (split / s['zip_data']['basename']).read_bytes())
        n = int(np.frombuffer(data[:4], np.uint32)[0])
        offsets = np.frombuffer(data, np.uint32, count=n + 1, offset=4)
        for begin, end in zip(offsets[:-1], offsets[1:]):
            rows.append(mds_decode('ndarray:uint16', data[begin + 4:end]))  # skip the column's size
    return rows


def rewrite_rows(split: Path, change: Callable[[list[np.ndarray]], list[np.ndarray]]) -> None:
    """Write the split's rows again through Streaming's own writer (checksums and sizes consistent),
    after ``change``: what a buggy converter or another tokenizer would have produced."""
    from streaming import MDSWriter

    rows = change(read_rows(split))
    for s in index(split)['shards']:
        for info in (s['zip_data'], s['raw_data']):
            (split / info['basename']).unlink(missing_ok=True)
    (split / 'index.json').unlink()
    fresh = split.parent / f'{split.name}.rewritten'  # the writer empties its folder: not the split's metadata
    with MDSWriter(out=str(fresh), columns={'tokens': 'ndarray:uint16'}, compression='zstd', hashes=['xxh3_64']) as w:
        for row in rows:
            w.write({'tokens': np.asarray(row, np.uint16)})
    for path in fresh.iterdir():
        path.rename(split / path.name)
    fresh.rmdir()


_HOLDER = '''
import time
from t5composer.data.split_lock import hold_reader_lock, replacing_split
if {kind!r} == 'reader':
    hold_reader_lock({split!r})
    print('locked', flush=True)
    time.sleep(120)
else:
    with replacing_split({split!r}):
        print('locked', flush=True)
        time.sleep(120)
'''


@contextlib.contextmanager
def locked_by_another_process(split: Path, kind: str) -> Iterator[subprocess.Popen]:
    """Another process holds the split's ``reader`` lock (a training run) or its ``exclusive`` one (a conversion)."""
    proc = subprocess.Popen([sys.executable, '-c', _HOLDER.format(kind=kind, split=str(split))],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == 'locked'
        yield proc
    finally:
        proc.kill()
        proc.wait()


def hold_in_another_process(split: Path, kind: str) -> Callable[[], None]:
    """:func:`locked_by_another_process`, entered now; returns the function that ends it."""
    stack = contextlib.ExitStack()
    stack.enter_context(locked_by_another_process(split, kind))
    return stack.close


_STREAMER = '''
import time
from streaming import StreamingDataset
dataset = StreamingDataset(local={local!r}, remote={remote!r}, batch_size=4, shuffle=False)
print('streaming', flush=True)
time.sleep(120)
'''


def stream_in_another_process(local: Path, remote: Path) -> Callable[[], None]:
    """Another process (a job) streams ``remote`` into the cache ``local``; returns the function that ends it."""
    proc = subprocess.Popen([sys.executable, '-c', _STREAMER.format(local=str(local), remote=str(remote))],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == 'streaming'

    def end() -> None:
        proc.kill()
        proc.wait()

    return end
