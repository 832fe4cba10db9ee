"""Read C4 json lines from a local copy of the hub's ``en/`` folder or from the hub itself.

One code path for both: a source is resolved to an fsspec filesystem and a root folder, the
split's files are found with ``fs.glob`` and each is opened with ``fs.open`` (+ gzip). For the
hub, that filesystem is huggingface_hub's ``HfFileSystem`` (``hf://datasets/allenai/c4/en``),
which is what ``datasets`` streaming uses underneath; reading it directly keeps the raw bytes
(so bad lines can be counted instead of failing inside ``datasets``) and lets tests exercise
exactly the code that reads the hub, on a local directory.

Raw lines are yielded as bytes; :func:`parse_c4_line` turns one into text or a skip reason.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from typing import Any, Iterator, NamedTuple, Optional

__all__ = [
    'HUB_DATASET',
    'SKIP_REASONS',
    'RawLine',
    'iter_c4_lines',
    'iter_file_lines',
    'list_split_files',
    'parse_c4_line',
    'resolve_source',
    'split_file_prefix',
]

HUB_DATASET = 'allenai/c4'

# Our split names -> C4 file name prefixes.
_SPLIT_PREFIXES = {'train': 'c4-train', 'val': 'c4-validation', 'validation': 'c4-validation'}
_SUFFIXES = ('.json.gz', '.json', '.jsonl.gz', '.jsonl')

SKIP_REASONS = {
    'invalid_utf8': 'line is not valid UTF-8',
    'empty_line': 'blank line',
    'invalid_json': 'line is not valid JSON',
    'not_an_object': 'JSON value is not an object',
    'missing_text': 'no "text" field',
    'non_string_text': '"text" is not a string',
    'empty_text': '"text" is empty or whitespace',
    'invalid_unicode': '"text" has lone surrogates (\\ud800-style escapes)',
    'unreadable_file': 'the file could not be read (corrupt gzip, I/O error); rest of file skipped (re-download it)',
}


class RawLine(NamedTuple):
    """One line of a C4 file, or a read error.

    Attributes:
        file: the file's path or URL.
        lineno: 1-based line number (for errors: the line at which reading failed).
        data: the raw bytes of the line, or None on a read error.
        error: None, or ``unreadable_file`` when the rest of the file could not be read.
        detail: the exception text for read errors.
    """

    file: str
    lineno: int
    data: Optional[bytes]
    error: Optional[str] = None
    detail: str = ''


def split_file_prefix(split: str) -> str:
    """C4 file name prefix of a split: ``train -> c4-train``, ``val -> c4-validation``.

    Args:
        split: ``train`` or ``val`` (``validation`` is accepted too).
    """
    try:
        return _SPLIT_PREFIXES[split]
    except KeyError:
        raise ValueError(f"Unknown split {split!r}; use 'train' or 'val'.") from None


def resolve_source(source: str, *, subset: str = 'en') -> tuple[Any, str]:
    """An fsspec filesystem and the folder that holds the ``c4-*.json.gz`` files.

    Args:
        source: a local directory laid out like the hub's ``en/`` folder, an fsspec URL of such
            a folder (``hf://datasets/allenai/c4/en``, ``s3://...``), or a hub dataset name
            (``allenai/c4``; the ``subset`` folder is used).
        subset: folder of the hub dataset (C4: ``en``, ``en.noblocklist``, ...).

    Returns:
        ``(filesystem, root)``.
    """
    import fsspec

    local = os.path.expanduser(source)
    if os.path.isdir(local):
        url = os.path.abspath(local)
    elif '://' in source:
        url = source
    elif source.count('/') == 1 and not source.startswith(('.', '/', '~')):
        url = f'hf://datasets/{source}/{subset}'
    else:
        raise FileNotFoundError(
            f'C4 source {source!r} is not a local directory, a URL or a hub dataset name '
            f"like '{HUB_DATASET}'; pass --source {HUB_DATASET}, or a folder laid out like the hub's en/ "
            '(c4-train.*.json.gz, c4-validation.*.json.gz).'
        )
    fs, root = fsspec.core.url_to_fs(url)
    return fs, root.rstrip('/')


def list_split_files(*, source: str, split: str, subset: str = 'en') -> list[str]:
    """Sorted files of a split (``c4-train.*.json.gz`` ...), as paths of the source's filesystem.

    Args:
        source: see :func:`resolve_source`.
        split: ``train`` or ``val``.
        subset: hub folder (see :func:`resolve_source`).

    Raises:
        FileNotFoundError: no file of the split; the message lists what the folder holds.
    """
    fs, root = resolve_source(source, subset=subset)
    prefix = split_file_prefix(split)
    files: set[str] = set()
    try:
        for suffix in _SUFFIXES:
            files.update(fs.glob(f'{root}/{prefix}.*{suffix}'))
    except OSError as e:  # requests' ConnectionError is an OSError too
        raise OSError(
            f'Could not list the files of {source} ({type(fs).__name__} {root}): {e}. If the hub is '
            'unreachable, pass a local directory laid out like the hub en/ folder as the source.'
        ) from e
    if not files:
        try:
            found = sorted(os.path.basename(p) for p in fs.ls(root, detail=False))
        except (OSError, ValueError):
            found = []
        shown = ', '.join(found[:10]) + (f', ... ({len(found)} in all)' if len(found) > 10 else '')
        raise FileNotFoundError(
            f"No files for split '{split}' ({prefix}.*.json[.gz]) in {source} ({root}); "
            f'found: {shown or "nothing"}. Point --source at a folder laid out like the hub\'s en/ '
            '(c4-train.*.json.gz, c4-validation.*.json.gz).'
        )
    return sorted(files)


def iter_file_lines(path: str, *, fs: Any) -> Iterator[RawLine]:
    """Raw lines of one file (gunzipped when the name ends in ``.gz``); never raises on bad data.

    A read error (not gzip, truncated, I/O) ends the file with one ``RawLine`` whose ``error``
    is ``unreadable_file``.

    Args:
        path: a path of ``fs``.
        fs: the fsspec filesystem (see :func:`resolve_source`).
    """
    lineno = 0
    try:
        with fs.open(path, 'rb') as raw:
            stream = gzip.GzipFile(fileobj=raw, mode='rb') if path.endswith('.gz') else raw
            for lineno, line in enumerate(stream, 1):
                yield RawLine(path, lineno, line)
    except (OSError, EOFError, zlib.error) as e:
        yield RawLine(path, lineno + 1, None, 'unreadable_file', f'{type(e).__name__}: {e}')


def iter_c4_lines(
    *, source: str, split: str, subset: str = 'en', files: Optional[list[str]] = None
) -> Iterator[RawLine]:
    """Raw lines of every file of a split, in file-name order.

    Args:
        source: see :func:`resolve_source`.
        split: ``train`` or ``val``.
        subset: hub folder (see :func:`resolve_source`).
        files: the files to read (default: :func:`list_split_files`).
    """
    fs, _ = resolve_source(source, subset=subset)
    if files is None:
        files = list_split_files(source=source, split=split, subset=subset)
    for path in files:
        yield from iter_file_lines(path, fs=fs)


def parse_c4_line(raw: bytes) -> tuple[Optional[str], Optional[str]]:
    """Text of one C4 json line, or why it is skipped.

    Args:
        raw: the line's bytes (trailing newline allowed).

    Returns:
        ``(text, None)`` for a good line, ``(None, reason)`` otherwise, where reason is a key
        of :data:`SKIP_REASONS`.
    """
    try:
        line = raw.decode('utf-8')
    except UnicodeDecodeError:
        return None, 'invalid_utf8'
    if not line.strip():
        return None, 'empty_line'
    try:
        obj = json.loads(line)
    except ValueError:
        return None, 'invalid_json'
    if not isinstance(obj, dict):
        return None, 'not_an_object'
    if 'text' not in obj:
        return None, 'missing_text'
    text = obj['text']
    if not isinstance(text, str):
        return None, 'non_string_text'
    if not text.strip():
        return None, 'empty_text'
    try:
        # JSON escapes can produce lone surrogates, which tokenizers cannot encode.
        text.encode('utf-8')
    except UnicodeEncodeError:
        return None, 'invalid_unicode'
    return text, None
