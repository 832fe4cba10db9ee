"""Convert C4 (hub or local json.gz) to MDS rows of T5 tokens, ready for span corruption.

Per split: raw lines are read in file order (:mod:`t5composer.data.c4_source`), parsed and
tokenized in chunks of lines (``num_workers=1``: on a tokenizer thread beside the reader and
writer; more: in that many processes), results consumed in submission order, so the output does
not depend on ``num_workers``; each document gets one EOS, the token stream
is concatenated across documents and cut into rows of exactly the *expanded* length
(:attr:`SpanCorruptionSpec.expanded_length`: 568 for T5's settings); the final incomplete row is dropped.

Rows go to ``{out_root}/.{split}.tmp-<pid>`` (``MDSWriter``, column ``tokens: ndarray:uint16``,
an ``xxh3_64`` checksum of every shard file in ``index.json``), then ``t5composer_meta.json`` is
written and the directory is renamed to ``{out_root}/{split}``; a failed conversion leaves nothing
behind, and a split that a running job reads is never replaced (its reader lock is taken first).
Bad lines are counted by reason, the first few are logged with file and line, and conversion goes
on; a file with no usable line is named in a warning, and a split with no usable document (or too
few tokens for one row) is an error.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from t5composer.data.c4_source import (
    SKIP_REASONS,
    RawLine,
    iter_file_lines,
    list_split_files,
    parse_c4_line,
    resolve_source,
)
from t5composer.data.span_spec import SpanCorruptionSpec

__all__ = ['MAX_UINT16_VOCAB', 'convert_c4']

log = logging.getLogger(__name__)

MAX_UINT16_VOCAB = 65536  # ids 0..65535 fit the uint16 column
ROW_ENCODING = 'ndarray:uint16'  # MDS encoding of the 'tokens' column
_MAX_EXAMPLES = 5  # bad lines reported individually per split
_VALID_SPLITS = ('train', 'val')

# Set in each pool worker by _init_worker (num_workers >= 2).
_ENCODER: Any = None
_EOS: int = 1


def _init_worker(encoder: Any, eos_id: int) -> None:
    """Install the worker's encoder (a :class:`BatchEncoder`, unpickled once per worker)."""
    global _ENCODER, _EOS
    _ENCODER = encoder
    _EOS = int(eos_id)


def _parse_chunk(lines: list[tuple[int, bytes]]) -> tuple[list[str], list[int], list[tuple[int, str]]]:
    """``(texts, linenos, bad)``: the usable lines' texts and line numbers, ``(lineno, reason)`` of the rest."""
    texts, linenos, bad = [], [], []
    for lineno, raw in lines:
        text, reason = parse_c4_line(raw)
        if text is None:
            bad.append((lineno, reason))
        else:
            texts.append(text)
            linenos.append(lineno)
    return texts, linenos, bad


def _pack(ids: Sequence[Sequence[int]], linenos: list[int], bad: list[tuple[int, str]], eos_id: int) -> tuple:
    """The documents' ids, each followed by EOS, as one uint16 array, with their lengths; see :func:`_encode_chunk`."""
    lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
    tokens = np.empty(int(lengths.sum()), dtype=np.uint16)
    pos = 0
    for x in ids:
        tokens[pos:pos + len(x)] = x
        tokens[pos + len(x)] = eos_id
        pos += len(x) + 1
    return tokens, lengths, np.asarray(linenos, dtype=np.int64), bad


def _encode_chunk(lines: list[tuple[int, bytes]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Parse and tokenize a chunk of raw lines (in a pool worker).

    Returns:
        ``(tokens, doc_lengths, doc_linenos, bad)``: the documents' tokens (each followed by
        EOS) concatenated as uint16, each document's length (EOS included), each document's
        line number, and ``(lineno, reason)`` of skipped lines.
    """
    texts, linenos, bad = _parse_chunk(lines)
    return _pack(_ENCODER(texts) if texts else [], linenos, bad, _EOS)


def _chunks(files: Sequence[str], fs: Any, chunk_docs: int) -> Iterator[tuple[str, Any]]:
    """``(file, [(lineno, raw), ...])`` chunks in file order, never spanning files.

    A read error comes as ``(file, RawLine)`` in its place in the order, so skip counts do not
    depend on how far workers read ahead.
    """
    for path in files:
        chunk: list[tuple[int, bytes]] = []
        for raw in iter_file_lines(path, fs=fs):
            if raw.data is None:
                if chunk:
                    yield path, chunk
                    chunk = []
                yield path, raw
                continue
            chunk.append((raw.lineno, raw.data))
            if len(chunk) >= chunk_docs:
                yield path, chunk
                chunk = []
        if chunk:
            yield path, chunk


class _SplitWriter:
    """Consumes encoded chunks in order: counts, truncates at max_docs, cuts and writes rows."""

    def __init__(self, *, writer: Any, length: int, max_docs: Optional[int], split: str, pbar: Any) -> None:
        self.writer, self.length, self.max_docs, self.split, self.pbar = writer, length, max_docs, split, pbar
        self.carry = np.empty(0, dtype=np.uint16)
        self.docs = self.tokens = self.rows = 0
        self.skipped: Counter = Counter()
        self.examples = 0
        self.per_file: dict[str, list[int]] = {}  # file -> [good documents, skipped lines]
        self.row_encoder: Optional[Callable[[np.ndarray], Iterator[bytes]]] = None

    def _make_row_encoder(self, first_row: np.ndarray) -> Callable[[np.ndarray], Iterator[bytes]]:
        """Rows as the bytes MDS's ``ndarray:uint16`` encoding makes of them, without its per-row work.

        Every row has the same shape, so its encoding is a fixed header (ndim, shape) then the
        values; the header is taken from Streaming's own encoder once. MDSWriter stores bytes
        values as they are, so the shards are byte-identical; the per-row encoding took more time
        than the rest of writing (incl. zstd), so this halves it.
        """
        from streaming.base.format.mds.encodings import mds_encode

        full = mds_encode(ROW_ENCODING, first_row)
        header, step = full[: len(full) - first_row.nbytes], first_row.nbytes

        def encode(rows: np.ndarray) -> Iterator[bytes]:
            blob = np.ascontiguousarray(rows, dtype='<u2').tobytes()
            return (header + blob[i:i + step] for i in range(0, len(blob), step))

        self.row_encoder = encode
        return encode

    @property
    def done(self) -> bool:
        return self.max_docs is not None and self.docs >= self.max_docs

    def skip(self, file: str, lineno: int, reason: str, detail: str = '') -> None:
        self.skipped[reason] += 1
        self.per_file.setdefault(file, [0, 0])[1] += 1
        if self.examples < _MAX_EXAMPLES:
            self.examples += 1
            more = f' ({detail})' if detail else ''
            log.warning('%s: skipped %s:%d: %s: %s%s', self.split, file, lineno, reason, SKIP_REASONS.get(reason, ''), more)

    def add(self, file: str, result: tuple) -> None:
        tokens, lengths, linenos, bad = result
        if self.max_docs is not None and self.docs + len(lengths) >= self.max_docs:
            keep = self.max_docs - self.docs
            last_line = int(linenos[keep - 1]) if keep > 0 else -1
            bad = [b for b in bad if b[0] < last_line]  # only lines before the last kept doc
            tokens, lengths = tokens[: int(lengths[:keep].sum())], lengths[:keep]
        for lineno, reason in bad:
            self.skip(file, lineno, reason)
        self.per_file.setdefault(file, [0, 0])[0] += len(lengths)
        self.docs += len(lengths)
        self.tokens += len(tokens)
        buf = np.concatenate([self.carry, tokens]) if len(self.carry) else tokens
        n = len(buf) // self.length
        if n:
            encode = self.row_encoder or self._make_row_encoder(buf[: self.length])
            for row in encode(buf[: n * self.length]):
                self.writer.write({'tokens': row})
        self.rows += n
        self.carry = buf[n * self.length:].copy()
        self.pbar.update(len(lengths))
        self.pbar.set_postfix(tokens=f'{self.tokens:,}', rows=self.rows, skipped=sum(self.skipped.values()), refresh=False)


def _check_vocab(tokenizer: Any, name: str) -> int:
    size = len(tokenizer)
    top = max(tokenizer.get_vocab().values()) + 1
    if max(size, top) > MAX_UINT16_VOCAB:
        raise ValueError(
            f'The tokenizer {name!r} (--tokenizer) has {max(size, top)} ids, more than the {MAX_UINT16_VOCAB} '
            'that the uint16 token column can hold; use a tokenizer with at most 65536 ids '
            '(python recipes/train_tokenizer.py --vocab_size 32000 trains one).'
        )
    return size


def convert_c4(
    *,
    out_root: str | os.PathLike,
    source: str = 'allenai/c4',
    splits: Sequence[str] = ('train', 'val'),
    tokenizer: str = 'google/t5-v1_1-base',
    spec: SpanCorruptionSpec = SpanCorruptionSpec(),
    max_docs: Optional[int] = None,
    num_workers: int = 1,
    overwrite: bool = False,
    compression: Optional[str] = 'zstd',
    size_limit: int | str = '64mb',
    progress: bool = True,
    subset: str = 'en',
    encoder: str = 'auto',
    chunk_docs: int = 256,
    local: Optional[str | os.PathLike] = None,
) -> dict[str, dict[str, Any]]:
    """Convert C4 splits to MDS token rows under ``out_root/{split}``.

    Args:
        out_root: output directory, or an object-store URL (``s3://bucket/c4``, any scheme
            streaming uploads to); each split goes to ``out_root/{split}``. Remote shards are
            uploaded as they are finished, then ``index.json``, then ``t5composer_meta.json``
            (so a split is complete once its metadata exists).
        source: ``allenai/c4`` (the hub, subset ``subset``), an fsspec URL, or a local directory
            laid out like the hub's ``en/`` folder (``c4-train.*.json.gz``,
            ``c4-validation.*.json.gz``).
        splits: any of ``train``, ``val``.
        tokenizer: hub name, local tokenizer directory or spiece.model path.
        spec: the span corruption the rows are made for (T5's by default); rows have its
            ``expanded_length``. Its problems are named by the converter's flags (``--input_length``).
        max_docs: stop each split after this many good documents.
        num_workers: tokenizers: 1 tokenizes on a thread of this process, overlapped with
            reading and writing; N >= 2 starts N worker processes that parse and tokenize.
        overwrite: replace existing split directories (refused while a running job reads one; see
            :mod:`t5composer.data.split_lock`).
        compression: MDS shard compression (``zstd``; None for none).
        size_limit: MDS shard size limit.
        progress: show a tqdm bar per split.
        subset: hub folder of the dataset (C4: ``en``).
        encoder: tokenization backend: ``auto``, ``sentencepiece`` or ``tokenizers`` (see
            :class:`t5composer.tokenization.BatchEncoder`; both give the same ids).
        chunk_docs: lines per work item.
        local: with a remote ``out_root``, where shards are staged before upload (a temporary
            directory by default; each shard is deleted once uploaded).

    Returns:
        ``{split: metadata}`` (the contents of each split's ``t5composer_meta.json``).

    Raises:
        FileExistsError: a split directory exists and ``overwrite`` is False.
        SplitInUseError: ``overwrite`` would replace a split that running processes read (named).
        FileNotFoundError: a split has no files in ``source``.
        ValueError: bad arguments, a vocabulary too large for uint16, or a split with no usable
            document or no complete row (nothing is written for it).
    """
    import streaming  # noqa: F401  (imported here, ~3 s, so it does not count in the split's time)

    from t5composer.data.metadata import META_FILENAME, make_split_metadata, write_split_metadata
    from t5composer.tokenization import load_tokenizer, tokenizer_fingerprint

    splits = [splits] if isinstance(splits, str) else list(splits)
    bad_splits = [s for s in splits if s not in _VALID_SPLITS]
    if bad_splits or not splits:
        raise ValueError(f'splits must be among {_VALID_SPLITS}, got {splits}')
    if num_workers < 1:
        raise ValueError(f'num_workers must be >= 1, got {num_workers}')
    if max_docs is not None and max_docs < 1:
        raise ValueError(f'max_docs must be >= 1 or None, got {max_docs}')
    spec.check(key='--{}')  # the training config's checks, named by the converter's flags
    length = spec.expanded_length

    from t5composer.data.locations import is_remote, remote_file_exists, split_location

    remote = str(out_root).rstrip('/') if is_remote(str(out_root)) else None
    if remote is not None:
        # Shards are staged here and deleted once uploaded; split folders live in the store.
        out = Path(os.path.expanduser(str(local))) if local is not None else Path(tempfile.mkdtemp(prefix='t5composer-convert-'))
        existing_names = [split_location(remote, s) for s in splits if remote_file_exists(split_location(remote, s) + '/index.json')]
    else:
        out = Path(os.path.expanduser(str(out_root)))
        existing_names = [str(out / s) for s in splits if (out / s).exists()]
    if existing_names and not overwrite:
        raise FileExistsError(
            f'{", ".join(existing_names)} already exist(s); pass --overwrite '
            '(overwrite=True) to replace, or choose another --out_root.'
        )
    with ExitStack() as replacing:
        if remote is None:
            from t5composer.data.split_lock import replacing_split

            # Refuse now, not after hours of converting, to replace a split a running job reads; and
            # keep jobs from starting on it until the new split is in place.
            for name in existing_names:
                replacing.enter_context(replacing_split(name))
        try:
            tok = load_tokenizer(tokenizer)
        except (OSError, ValueError) as e:
            kind = FileNotFoundError if isinstance(e, FileNotFoundError) else OSError if isinstance(e, OSError) else ValueError
            raise kind(f'--tokenizer {tokenizer}: {e} Pass a hub name (google/t5-v1_1-base), a tokenizer directory '
                       'or the path of a spiece.model.') from e
        vocab = _check_vocab(tok, tokenizer)
        fingerprint = tokenizer_fingerprint(tok)
        fs, _ = resolve_source(source, subset=subset)
        files = {s: list_split_files(source=source, split=s, subset=subset) for s in splits}
        out.mkdir(parents=True, exist_ok=True)
        _remove_dead_conversions(out)

        results = {}
        for split in splits:
            t0 = time.perf_counter()
            tmp = out / f'.{split}.tmp-{os.getpid()}'
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                remote_split = split_location(remote, split) if remote is not None else None
                if remote_split is not None and split_location(remote, split) in existing_names:
                    from t5composer.data.locations import delete_remote_prefix

                    delete_remote_prefix(remote_split)  # --overwrite: no old shard or index may survive
                stats, backend = _convert_split(
                    files=files[split], fs=fs, tmp=tmp, split=split, tokenizer=tok, length=length,
                    max_docs=max_docs, num_workers=num_workers, compression=compression,
                    size_limit=size_limit, progress=progress, encoder=encoder, chunk_docs=chunk_docs,
                    remote=remote_split,
                )
                _check_usable(stats, split=split, source=source, files=files[split], length=length)
                meta = make_split_metadata(
                    source=source, split=split, tokenizer=str(tokenizer), tokenizer_fingerprint=fingerprint,
                    vocab_size=vocab, spec=spec,
                    docs=stats.docs, tokens=stats.tokens, rows=stats.rows, dropped_tokens=len(stats.carry),
                    skipped_lines=stats.skipped, encoder=backend, seconds=time.perf_counter() - t0,
                )
                tmp.mkdir(parents=True, exist_ok=True)  # a remote writer removes its staging folder when done
                if remote_split is None:
                    from t5composer.data.split_lock import READER_LOCK_FILENAME

                    # Readers of a split made read-only later can still lock this file (they open it read-only).
                    (tmp / READER_LOCK_FILENAME).touch()
                write_split_metadata(tmp, meta)  # last: its presence marks a complete split
                if remote_split is not None:
                    from t5composer.data.locations import upload_file

                    upload_file(str(tmp), remote_split, META_FILENAME)  # after the shards and index.json
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    _move_into_place(tmp, out / split, overwrite=overwrite)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            if stats.skipped:
                log.warning('%s: skipped %d line(s): %s; the first %d are listed above with file:line, the other documents '
                            'were converted. If many lines were skipped, check --source.',
                            split, sum(stats.skipped.values()), dict(stats.skipped), min(_MAX_EXAMPLES, sum(stats.skipped.values())))
            results[split] = meta
        if remote is not None and local is None:
            shutil.rmtree(out, ignore_errors=True)  # the temporary staging directory
        return results


def _remove_dead_conversions(out: Path) -> None:
    """Remove ``.{split}.tmp-<pid>`` folders (and old splits moved aside, ``.partial-<pid>-old-<split>``)
    of conversions that were killed (their process is gone)."""
    from t5composer.atomic_files import PARTIAL_PREFIX

    leftovers = [(p, p.name.rsplit('-', 1)[-1]) for p in out.glob('.*.tmp-*')]
    leftovers += [(p, p.name[len(PARTIAL_PREFIX):].split('-', 1)[0]) for p in out.glob(f'{PARTIAL_PREFIX}*-old-*')]
    for path, pid in leftovers:
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # that conversion is still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, another user's
        log.warning('Removing %s, left by a conversion that was killed.', path)
        shutil.rmtree(path, ignore_errors=True)


def _convert_split(
    *, files: list[str], fs: Any, tmp: Path, split: str, tokenizer: Any, length: int,
    max_docs: Optional[int], num_workers: int, compression: Optional[str], size_limit: int | str,
    progress: bool, encoder: str, chunk_docs: int, remote: Optional[str] = None,
) -> tuple[_SplitWriter, str]:
    """Write one split's rows into ``tmp``; return the counts and the encoder backend used."""
    from streaming import MDSWriter
    from tqdm.auto import tqdm

    from t5composer.data.verify import SHARD_HASH
    from t5composer.tokenization import BatchEncoder

    batch_encoder = BatchEncoder(tokenizer, backend=encoder)  # built once: checking the vocabulary takes ~0.1 s
    backend, eos_id = batch_encoder.backend, int(tokenizer.eos_token_id)
    with ExitStack() as stack:
        pool = stack.enter_context(_worker_pool(num_workers, batch_encoder, eos_id)) if num_workers > 1 else None
        writer = stack.enter_context(
            # Remote: each finished shard is uploaded (and deleted locally) while the next one fills;
            # exist_ok lets a rerun write over the shards of a killed conversion (no index.json).
            MDSWriter(out=(str(tmp), remote) if remote else str(tmp), columns={'tokens': ROW_ENCODING},
                      compression=compression, size_limit=size_limit, keep_local=remote is None, exist_ok=remote is not None,
                      hashes=[SHARD_HASH])  # checked by training (data.verify_hashes) and recipes/verify_data.py
        )
        pbar = stack.enter_context(tqdm(total=max_docs, unit='doc', desc=split, disable=not progress, dynamic_ncols=True))
        stats = _SplitWriter(writer=writer, length=length, max_docs=max_docs, split=split, pbar=pbar)

        chunks = _chunks(files, fs, chunk_docs)
        if pool is None:
            _convert_with_tokenizer_thread(chunks, batch_encoder, eos_id, stats)
        else:
            _consume_in_order(chunks, stats, submit=lambda chunk: pool.apply_async(_encode_chunk, (chunk,)),
                              result=lambda pending: pending.get(), read_ahead=2 * num_workers - 1)
            pool.terminate()  # drop read-ahead work after max_docs
    return stats, backend


def _consume_in_order(chunks: Iterator[tuple[str, Any]], stats: _SplitWriter, *, submit: Callable[[Any], Any],
                      result: Callable[[Any], tuple], read_ahead: int) -> None:
    """Submit each chunk of lines as it is read; hand the results to ``stats`` in submission order.

    Args:
        chunks: :func:`_chunks` (a read error comes as a ``RawLine`` in its place in the order).
        stats: the split's writer; reading stops once it has ``max_docs`` documents.
        submit: starts the work on a chunk and returns a handle to it.
        result: waits for a handle and returns :func:`_encode_chunk`'s tuple.
        read_ahead: chunks in flight beyond the one being consumed (bounds memory).
    """
    pending: deque = deque()

    def consume_oldest() -> None:
        file, item = pending.popleft()
        if isinstance(item, RawLine):  # a read error, in stream order
            stats.skip(file, item.lineno, item.error, item.detail)
        else:
            stats.add(file, result(item))

    for file, chunk in chunks:
        pending.append((file, chunk if isinstance(chunk, RawLine) else submit(chunk)))
        while len(pending) > read_ahead and not stats.done:
            consume_oldest()
        if stats.done:
            break
    while pending and not stats.done:
        consume_oldest()


def _convert_with_tokenizer_thread(chunks: Iterator[tuple[str, Any]], encoder: Any, eos_id: int, stats: _SplitWriter) -> None:
    """``num_workers=1``: tokenize on one thread while this one reads, parses, packs and writes.

    SentencePiece (and HF tokenizers) release the GIL while they encode, so the tokenizer thread
    runs at its raw speed and the rest (gzip, JSON, packing ids, MDS and zstd; ~30% of the
    tokenizer's time) overlaps it instead of adding to it. Chunks are consumed in order, so the
    output is the same as with any number of workers.
    """
    with ThreadPoolExecutor(1, thread_name_prefix='t5composer-tokenizer') as thread:

        def submit(chunk: list[tuple[int, bytes]]) -> tuple:
            texts, linenos, bad = _parse_chunk(chunk)
            return thread.submit(encoder, texts) if texts else None, linenos, bad

        def result(item: tuple) -> tuple:
            ids, linenos, bad = item
            return _pack(ids.result() if ids is not None else [], linenos, bad, eos_id)

        try:
            # Two chunks queued: the thread never waits for the main one, and memory stays bounded.
            _consume_in_order(chunks, stats, submit=submit, result=result, read_ahead=2)
        finally:
            thread.shutdown(wait=True, cancel_futures=True)  # drop read-ahead after max_docs or an error


def _check_usable(stats: _SplitWriter, *, split: str, source: str, files: list[str], length: int) -> None:
    """Warn about files none of whose lines were usable; refuse a split with no row at all.

    An empty split would only fail later, at training, far from its cause; nothing is written.
    """
    for file, (good, bad) in stats.per_file.items():
        if good == 0 and bad > 0:
            log.warning('%s: no usable line in %s (%d line(s) skipped), so the whole file was left out; re-download '
                        'or remove it (C4 files hold one {"text": ...} JSON object per line, optionally gzipped).', split, file, bad)
    if stats.docs == 0:
        skipped = dict(stats.skipped) or 'none'
        raise ValueError(
            f"No usable document in the {len(files)} file(s) of split '{split}' in {source} (skipped lines: {skipped}); "
            'nothing was written. The files must hold C4 json lines, one {"text": ...} object per line, optionally '
            'gzipped; check --source.'
        )
    if stats.rows == 0:
        raise ValueError(
            f"Split '{split}': its {stats.docs} document(s) hold {stats.tokens} tokens, fewer than one row of {length}; "
            'nothing was written. Convert more documents (a larger --max_docs) or lower --input_length.'
        )


def _worker_pool(num_workers: int, encoder: Any, eos_id: int) -> Any:
    """A process pool whose workers each hold the encoder (pickled to them once).

    The encoder, not the transformers tokenizer, travels: unpickling a tokenizer imports
    transformers in every worker, seconds of start-up per split.

    Not 'fork': forking a process that already runs threads (torch, tokenizers, streaming) can
    copy a held lock into the child and hang it; that was seen here, in a pytest run. forkserver
    forks from a clean single-threaded server instead.
    """
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context('forkserver' if 'forkserver' in methods else 'spawn')
    # Workers are single-threaded tokenizers.
    old = os.environ.get('TOKENIZERS_PARALLELISM')
    os.environ['TOKENIZERS_PARALLELISM'] = 'false'
    try:
        return ctx.Pool(num_workers, initializer=_init_worker, initargs=(encoder, eos_id))
    finally:
        if old is None:
            os.environ.pop('TOKENIZERS_PARALLELISM', None)
        else:
            os.environ['TOKENIZERS_PARALLELISM'] = old


def _move_into_place(tmp: Path, dest: Path, *, overwrite: bool) -> None:
    """Rename the finished temp dir to ``dest``, replacing an old ``dest`` only if allowed."""
    from t5composer.atomic_files import install_directory

    if not install_directory(tmp, dest, replace=overwrite):
        raise FileExistsError(f'{dest} appeared during conversion; pass --overwrite to replace it.')
