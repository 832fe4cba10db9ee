"""Is a converted split intact? Shard files, sizes, row counts, checksums and the rows themselves.

Three levels, from cheap to thorough:

- :func:`check_files` (every training start): each shard that ``index.json`` lists is present
  with the size it records, and the rows it lists add up to the ``rows`` of
  ``t5composer_meta.json`` (an index that lost shards would otherwise train on part of the data
  without a word). A stat per shard.
- :func:`check_hashes` (training with ``data.verify_hashes: true``, and :func:`verify_main`):
  each shard file's checksum against the one the converter recorded in ``index.json``
  (``xxh3_64``; reads every byte once). Splits converted before checksums were recorded have
  none; that is said, and the other checks still run.
- :func:`check_rows` (:func:`verify_main`): every row decoded: the shard's own row count and
  offsets, each row's length, and every token id below the vocabulary size. Catches damage to
  old splits without checksums, and data made with another tokenizer.

``python recipes/verify_data.py <split dir or data root>`` runs all three (:func:`verify_main`):
exit status 0 when every split is intact, 1 when something is damaged (each bad shard is named,
with the command that remakes the split), 2 when there is nothing to verify at that path.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from t5composer.redaction import print_error, scrub_this_process

__all__ = [
    'SHARD_HASH', 'SplitReport', 'check_files', 'check_hashes', 'check_rows', 'index_rows', 'read_index', 'repair_advice',
    'verify_command', 'verify_main', 'verify_split',
]

# The checksum the converter records for every shard file (raw and compressed) and that
# verification checks; Streaming's validate_hash accepts the same name.
SHARD_HASH = 'xxh3_64'
VERIFY_SCRIPT = 'recipes/verify_data.py'
_SHARD_RE = re.compile(r'^shard\.\d+\.mds(\.[a-z0-9]+)?$')
_MAX_LISTED = 5  # bad rows listed per shard


def verify_command(path: str) -> str:
    """The command that checks a split (or a data root) shard by shard."""
    return shlex.join(['python', VERIFY_SCRIPT, path])


def read_index(split_dir: str) -> dict[str, Any]:
    """``index.json`` of a local split.

    Raises:
        ValueError: it is missing, not JSON, or not a Streaming (MDS) index; the message names it.
    """
    path = os.path.join(split_dir, 'index.json')
    try:
        with open(path, encoding='utf-8') as f:
            index = json.load(f)
        shards = index['shards']
        for shard in shards:
            int(shard['samples']), shard['raw_data']['basename']  # noqa: B018  (the fields every check reads)
    except FileNotFoundError:
        raise ValueError(f'{path} does not exist: {split_dir} is not a converted split (or its conversion did not finish).') from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f'{path} is unreadable or not an MDS index ({type(e).__name__}: {e}).') from e
    return index


def index_rows(index: dict[str, Any]) -> int:
    """Rows (samples) that an ``index.json`` lists."""
    return sum(int(s['samples']) for s in index['shards'])


def _files(shard: dict[str, Any]) -> list[dict[str, Any]]:
    """The shard's file records: the compressed one first (what the converter writes), then the raw one."""
    return [info for info in (shard.get('zip_data'), shard.get('raw_data')) if info]


def check_files(split_dir: str, index: dict[str, Any], *, meta_rows: Optional[int] = None, cache: bool = False) -> list[str]:
    """Shards missing or of the wrong size, and a row count that disagrees with the metadata.

    A shard is usable when one of its files (compressed or, once Streaming unpacked it, raw) is
    present; every file that is present must have the size ``index.json`` records.

    Args:
        split_dir: the local split directory.
        index: its ``index.json`` (:func:`read_index`).
        meta_rows: ``rows`` of its ``t5composer_meta.json`` (None: not compared).
        cache: ``split_dir`` is the local cache of a remote split: shards not downloaded yet are
            fine, only the sizes of those present are checked.

    Returns:
        One line per problem, each naming the file.
    """
    problems = []
    listed = set()
    for shard in index['shards']:
        present = 0
        for info in _files(shard):
            listed.add(info['basename'])
            path = os.path.join(split_dir, info['basename'])
            try:
                size = os.path.getsize(path)
            except OSError:
                continue
            present += 1
            if size != int(info['bytes']):
                problems.append(f"{info['basename']} has {size:,} bytes, index.json records {int(info['bytes']):,}: "
                                'the file is truncated or was replaced.')
        if not present and not cache:
            names = ' or '.join(info['basename'] for info in _files(shard))
            problems.append(f'{names} (listed in index.json, {int(shard["samples"]):,} rows) is missing.')
    rows = index_rows(index)
    if meta_rows is not None and rows != int(meta_rows):
        try:
            unlisted = sorted(n for n in os.listdir(split_dir) if _SHARD_RE.match(n) and n not in listed)
        except OSError:
            unlisted = []
        extra = f' Shard files on disk that index.json does not list: {", ".join(unlisted)}.' if unlisted else ''
        problems.append(f'index.json lists {rows:,} rows in {len(index["shards"])} shard(s), but t5composer_meta.json records '
                        f'{int(meta_rows):,}: index.json is not the one the conversion wrote.{extra}')
    return problems


def _file_hash(path: str, algo: str) -> str:
    if algo == SHARD_HASH:
        import xxhash

        h = xxhash.xxh3_64()
        with open(path, 'rb') as f:
            for block in iter(lambda: f.read(1 << 22), b''):
                h.update(block)
        return h.hexdigest()
    from streaming.base.hashing import get_hash

    with open(path, 'rb') as f:
        return get_hash(algo, f.read())


def check_hashes(split_dir: str, index: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Shard files whose checksum differs from the one recorded in ``index.json``.

    Returns:
        ``(problems, notes)``: one problem per damaged file; a note when the index records no
        checksums at all (a split converted before they were recorded).
    """
    problems, checked = [], 0
    for shard in index['shards']:
        for info in _files(shard):
            hashes = info.get('hashes') or {}
            algo = SHARD_HASH if SHARD_HASH in hashes else next(iter(sorted(hashes)), None)
            path = os.path.join(split_dir, info['basename'])
            if algo is None or not os.path.isfile(path):
                continue
            checked += 1
            actual = _file_hash(path, algo)
            if actual != hashes[algo]:
                problems.append(f"{info['basename']}: its {algo} checksum is {actual}, index.json records {hashes[algo]}: "
                                'the file is damaged.')
    notes = []
    if not checked and index['shards']:
        notes.append('index.json records no shard checksums (the split was converted before t5composer recorded them), '
                     'so file contents could not be compared; sizes, row counts and every row were checked instead. '
                     'Reconverting the split adds checksums.')
    return problems, notes


def _row_header(row_length: int) -> bytes:
    """The bytes before each row's tokens in a shard: the column's size, then the ndarray header."""
    from streaming.base.format.mds.encodings import mds_encode

    from t5composer.data.c4_convert import ROW_ENCODING

    encoded = mds_encode(ROW_ENCODING, np.zeros(row_length, np.uint16))
    header = encoded[: len(encoded) - 2 * row_length]
    return np.uint32(len(encoded)).tobytes() + header


def _shard_bytes(split_dir: str, shard: dict[str, Any]) -> tuple[Optional[bytes], list[str]]:
    """The raw shard (the raw file training reads, else the compressed one unpacked), and problems found reading it."""
    from streaming.base.compression import decompress

    raw, zipped = shard.get('raw_data'), shard.get('zip_data')
    raw_path = os.path.join(split_dir, raw['basename'])
    zip_path = os.path.join(split_dir, zipped['basename']) if zipped else None
    unpacked, problems = None, []
    if zip_path and os.path.isfile(zip_path):
        try:
            with open(zip_path, 'rb') as f:
                unpacked = decompress(shard['compression'], f.read())
        except Exception as e:  # zstd and the other codecs raise their own error types
            problems.append(f"{zipped['basename']} cannot be decompressed ({type(e).__name__}: {e}): the file is damaged.")
    if os.path.isfile(raw_path):
        with open(raw_path, 'rb') as f:
            data = f.read()
        if unpacked is not None and unpacked != data:
            problems.append(f"{raw['basename']} (unpacked when the split was first read) differs from {zipped['basename']} "
                            f'unpacked: one of the two is damaged; delete {raw["basename"]} to have it unpacked again.')
        return data, problems
    return unpacked, problems


def check_rows(split_dir: str, index: dict[str, Any], *, row_length: int, vocab_size: Optional[int]) -> list[str]:
    """Decode every row: the shard's row count and offsets, each row's length and token ids.

    Args:
        split_dir: the local split directory.
        index: its ``index.json``.
        row_length: tokens per row (``expanded_length`` of the metadata).
        vocab_size: ids must be below this (None: not checked).
    """
    problems = []
    prefix = _row_header(row_length)
    width = len(prefix) + 2 * row_length
    first = 0
    for shard in index['shards']:
        samples = int(shard['samples'])
        name = (shard.get('zip_data') or shard['raw_data'])['basename']
        data, found = _shard_bytes(split_dir, shard)
        problems += found
        start, first = first, first + samples
        if data is None:
            continue
        n = int(np.frombuffer(data[:4], np.uint32)[0]) if len(data) >= 4 else -1
        if n != samples or len(data) < 8 + 4 * n:
            problems.append(f'{name} holds {n} rows by its own header, index.json says {samples}: the file is damaged.')
            continue
        offsets = np.frombuffer(data, np.uint32, count=n + 1, offset=4).astype(np.int64)
        sizes = np.diff(offsets)
        fits = (sizes == width) & (offsets[1:] <= len(data))
        wrong = np.nonzero(~fits)[0]
        if len(wrong) or offsets[-1] != len(data):
            what = ', '.join(f'sample {start + i} (row {i} of the shard: {sizes[i]} bytes)' for i in wrong[:_MAX_LISTED])
            problems.append(f'{name}: {len(wrong)} row(s) of the wrong length{": " + what if what else ""}'
                            f'{"" if offsets[-1] == len(data) else "; the file does not end where its last row does"}; every row '
                            f'must be {row_length} tokens ({width} bytes). The file is damaged.')
        good = np.nonzero(fits)[0]  # the other rows are still checked
        if len(good) == n:
            rows = np.frombuffer(data, np.uint8, count=n * width, offset=int(offsets[0])).reshape(n, width)
        else:
            rows = np.stack([np.frombuffer(data, np.uint8, count=width, offset=int(offsets[i])) for i in good]) if len(good) \
                else np.zeros((0, width), np.uint8)
        bad_header = good[np.any(rows[:, : len(prefix)] != np.frombuffer(prefix, np.uint8), axis=1)]
        if len(bad_header):
            listed = ', '.join(f'sample {start + i}' for i in bad_header[:_MAX_LISTED])
            problems.append(f'{name}: {len(bad_header)} row(s) with a damaged header ({listed}); every row must be an '
                            f'array of {row_length} uint16 tokens. The file is damaged.')
        if vocab_size is not None and len(good):
            top = np.ascontiguousarray(rows[:, len(prefix):]).view('<u2').max(axis=1)
            bad_ids = np.nonzero(top >= vocab_size)[0]
            if len(bad_ids):
                listed = ', '.join(f'sample {start + good[j]} (id {int(top[j])})' for j in bad_ids[:_MAX_LISTED])
                problems.append(f'{name}: {len(bad_ids)} row(s) hold token ids outside the vocabulary of {vocab_size} '
                                f'({listed}): the file is damaged, or the split was made with another tokenizer.')
    return problems


@dataclass
class SplitReport:
    """What :func:`verify_split` found.

    Attributes:
        split_dir: the split checked.
        problems: one line per damaged or missing file (empty: intact).
        notes: what could not be checked, and why.
        rows: rows listed by ``index.json`` (None if it is unreadable).
        shards: shards listed.
        checked: what was checked, in words.
        meta: the split's ``t5composer_meta.json`` (None if absent).
    """

    split_dir: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rows: Optional[int] = None
    shards: int = 0
    checked: list[str] = field(default_factory=list)
    meta: Optional[dict[str, Any]] = None

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_split(split_dir: str, *, hashes: bool = True, rows: bool = True) -> SplitReport:
    """Check a local split at every level (see the module docstring).

    Args:
        split_dir: the split directory (``index.json``, shards, ``t5composer_meta.json``).
        hashes: compare file checksums.
        rows: decode every row.
    """
    from t5composer.data.metadata import read_split_metadata

    report = SplitReport(split_dir=split_dir)
    try:
        report.meta = read_split_metadata(split_dir)
    except (OSError, ValueError) as e:
        report.notes.append(f'{e} Row counts and token ids were not compared with it.')
    try:
        index = read_index(split_dir)
    except ValueError as e:
        report.problems.append(str(e))
        return report
    report.rows, report.shards = index_rows(index), len(index['shards'])
    meta_rows = report.meta['rows'] if report.meta else None
    report.problems += check_files(split_dir, index, meta_rows=meta_rows)
    report.checked.append('every shard present with its recorded size' + (', row count as in t5composer_meta.json' if report.meta else ''))
    if hashes:
        found, notes = check_hashes(split_dir, index)
        report.problems += found
        report.notes += notes
        if not notes:
            report.checked.append(f'{SHARD_HASH} checksums')
    if rows:
        length = report.meta['expanded_length'] if report.meta else _first_row_length(split_dir, index)
        vocab = report.meta['vocab_size'] if report.meta else None
        if length is not None:
            report.problems += check_rows(split_dir, index, row_length=int(length), vocab_size=vocab)
            report.checked.append(f'every row {length} tokens' + (f', ids below {vocab}' if vocab else ''))
    return report


def _first_row_length(split_dir: str, index: dict[str, Any]) -> Optional[int]:
    """Without metadata: the row length of the first row, so the others can be compared with it."""
    for shard in index['shards']:
        data, _ = _shard_bytes(split_dir, shard)
        if data is not None and len(data) >= 12 and int(np.frombuffer(data[:4], np.uint32)[0]) > 0:
            begin, end = np.frombuffer(data, np.uint32, count=2, offset=4)
            for length in range(1, (int(end) - int(begin)) // 2 + 1):
                if len(_row_header(length)) + 2 * length == int(end) - int(begin):
                    return length
    return None


def repair_advice(split_dir: str, meta: Optional[dict[str, Any]]) -> str:
    """How to get an intact split back: restore the files, or the exact command that remakes it."""
    from t5composer.data import span_spec
    from t5composer.data.metadata import convert_command

    if '://' in split_dir:  # a data.remote split: its root is the URL above it
        root, name = split_dir.rstrip('/').rsplit('/', 1)
    else:
        root, name = os.path.split(os.path.abspath(split_dir).rstrip('/'))
    command = convert_command(meta, out_root=root) if meta else (
        span_spec.convert_command(out_root=root, splits=name, tokenizer='<tokenizer>', overwrite=True))
    return f'Restore the named files from the copy the split came from, or reconvert the split: {command}'


def _splits_at(path: str, names: Optional[Sequence[str]]) -> list[str]:
    if names:
        return [os.path.join(path, n) for n in names]
    if os.path.isfile(os.path.join(path, 'index.json')):
        return [path]
    try:
        subdirs = sorted(os.listdir(path))
    except OSError:
        return []
    return [os.path.join(path, n) for n in subdirs if not n.startswith('.') and os.path.isfile(os.path.join(path, n, 'index.json'))]


def verify_main(argv: Optional[Sequence[str]] = None) -> int:
    """``recipes/verify_data.py``: verify splits; exit 0 (intact), 1 (damaged), 2 (nothing to verify)."""
    p = argparse.ArgumentParser(
        prog='verify_data.py',
        description='Check converted splits: every shard present with its size, row counts, checksums, every row.')
    p.add_argument('path', help='a split directory (holding index.json) or a data root holding split directories')
    p.add_argument('--splits', nargs='+', default=None, help='split names under PATH (default: every split found there)')
    p.add_argument('--no_rows', action='store_true', help='skip decoding every row (sizes, counts and checksums only)')
    args = p.parse_args(argv)
    scrub_this_process()
    path = os.path.expanduser(args.path)
    if not os.path.isdir(path):
        print_error(f"'{path}' is not a directory. Pass a split directory (holding index.json) or the --out_root "
                    'that recipes/convert_c4.py wrote (e.g. data/c4).')
        return 2
    splits = _splits_at(path, args.splits)
    if not splits:
        print_error(f"no converted split under '{path}' (no index.json in it or in its folders). Pass a split directory "
                    'or the --out_root that recipes/convert_c4.py wrote.')
        return 2
    bad = 0
    for split_dir in splits:
        report = verify_split(split_dir, rows=not args.no_rows)
        if report.ok:
            print(f'{split_dir}: intact: {report.rows:,} rows in {report.shards} shard(s); checked {"; ".join(report.checked)}.')
        else:
            bad += 1
            print(f'{split_dir}: DAMAGED ({len(report.problems)} problem(s)):')
            for problem in report.problems:
                print(f'  - {problem}')
            print(f'  Fix: {repair_advice(split_dir, report.meta)}')
        for note in report.notes:
            print(f'  note: {note}')
    return 1 if bad else 0
