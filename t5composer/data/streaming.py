"""Stream converted C4 (MDS) splits into span-corrupted batches.

Each sample carries its global index and epoch so the collator can derive its noise mask from
(seed, epoch, index) alone: a resumed run sees exactly the masks an uninterrupted one would, and
the eval set (fixed epoch 0, no shuffle) is masked identically at every evaluation.

Reading is checked: a row of the wrong length or with a token id outside the vocabulary stops the
run in the data path (naming the split, the sample and the shard), never as an IndexError deep in
the embedding, and any error Streaming raises while unpacking or reading a shard (a zstd error, a
short read) is raised again naming the shard file. See docs/reliability.md, "Data integrity".
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
from streaming import Stream, StreamingDataset
from streaming.base.stream import streams_registry
from torch.utils.data import DataLoader

from t5composer.atomic_files import write_atomically
from t5composer.data.locations import is_remote, split_location
from t5composer.data.span_corruption import SpanCorruptionCollator
from t5composer.data.verify import verify_command
from t5composer.errors import ConfigError

__all__ = ['C4SpanDataset', 'CheckedStream', 'CorruptDataError', 'DataReadError', 'build_span_dataloader', 'open_error_advice']


def _open_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, ValueError, RuntimeError, KeyError]
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        errors += [BotoCoreError, ClientError]
    except ImportError:  # boto3 is only needed for s3:// remotes
        pass
    return tuple(errors)


_OPEN_ERRORS = _open_errors()


class DataReadError(RuntimeError):
    """Reading a split failed (a shard that cannot be unpacked or fetched); the message says where and what to do.

    One string argument, so a DataLoader worker's error is re-raised in the main process as this
    type: torch rebuilds it from the worker's traceback followed by the message, and the message
    alone is kept (the traceback in ``worker_traceback``).
    """

    def __init__(self, message: str) -> None:
        marker = f'{type(self).__name__}: '
        self.worker_traceback = None
        if 'Original Traceback' in message and marker in message:
            self.worker_traceback = message
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


class CorruptDataError(DataReadError):
    """A shard or a row of a converted split is damaged; the message names the file and the verify command."""


def _damaged(what: str, split_dir: str, error: Optional[BaseException] = None) -> CorruptDataError:
    cause = f' ({type(error).__name__}: {error})' if error is not None else ''
    return CorruptDataError(
        f'{what}{cause}. The split is damaged, or was changed while this run read it. Check every shard with: '
        f'{verify_command(split_dir)}; it names the damaged files and the command that remakes the split.',
    )


class CheckedStream(Stream):
    """Streaming's Stream, with every failure to unpack or fetch a shard naming the shard file.

    Two more changes to how a shard is unpacked (Streaming 0.13's ``_decompress_shard_part``):
    into a temporary file of this process and thread, renamed into place, so two jobs that first
    read the same local split at the same time do not write into one ``shard.N.mds.tmp`` (one of
    them died with FileNotFoundError; the other could read a half-written shard); and the
    unpacked size is compared with the one ``index.json`` records.

    Args: as :class:`streaming.Stream`.
    """

    last_error: Optional[DataReadError] = None  # for the main thread when a prefetch thread failed

    def _decompress_shard_part(self, zip_info: Any, zip_filename: str, raw_filename: str, compression: Optional[str]) -> None:
        from streaming.base.compression import decompress
        from streaming.base.hashing import get_hash

        split_dir = os.path.dirname(raw_filename)
        with open(zip_filename, 'rb') as f:
            data = f.read()
        expected = zip_info.hashes.get(self.validate_hash) if self.validate_hash else None
        if expected is not None and get_hash(self.validate_hash, data) != expected:
            raise _damaged(f'Shard {zip_filename} fails its {self.validate_hash} checksum', split_dir)
        try:
            data = decompress(compression, data)
        except Exception as e:  # zstd.Error and the other codecs' own types
            raise _damaged(f'Shard {zip_filename} cannot be decompressed', split_dir, e) from e
        try:
            # Atomic (another job may put the same bytes there at the same moment); not fsynced: a cache.
            write_atomically(raw_filename, lambda tmp: Path(tmp).write_bytes(data), durable=False)
        except OSError as e:
            raise DataReadError(
                f'Cannot unpack shard {zip_filename} beside it ({type(e).__name__}: {e}). Streaming unpacks each '
                f'compressed shard into the split directory the first time it is read, so {split_dir} must be writable '
                'then (and have room for the unpacked shards, about twice the compressed size); once every shard has '
                'been unpacked the directory may be read-only.',
            ) from e
        if not self.safe_keep_zip:
            os.remove(zip_filename)

    def prepare_shard(self, shard: Any) -> int:
        try:
            delta = super().prepare_shard(shard)
            for raw_info, _ in shard.file_pairs:
                raw_filename = os.path.join(self.local, self.split, raw_info.basename)
                size = os.path.getsize(raw_filename)
                if size != raw_info.bytes:
                    raise _damaged(f'Shard {raw_filename} has {size:,} bytes, index.json records {raw_info.bytes:,}',
                                   os.path.normpath(os.path.join(self.local, self.split)))
            return delta
        except DataReadError as e:
            self.last_error = e
            raise
        except Exception as e:  # downloads (any store's errors), a missing local file, ...
            names = ', '.join((z or r).basename for r, z in shard.file_pairs)
            split_dir = os.path.normpath(os.path.join(self.local, self.split))
            if self.remote is None and not any(os.path.exists(os.path.join(split_dir, (z or r).basename)) for r, z in shard.file_pairs):
                error = _damaged(f'Shard {names} of {split_dir} is missing (it is listed in index.json)', split_dir)
            elif self.remote is not None:
                error = DataReadError(
                    f'Fetching shard {names} from {os.path.join(self.remote, self.split)} into {split_dir} failed '
                    f'({type(e).__name__}: {e}). Check the network, the endpoint and the credentials, then run the same '
                    'command again (the run resumes from its last checkpoint).',
                )
            else:
                error = _damaged(f'Preparing shard {names} of {split_dir} failed', split_dir, e)
            self.last_error = error
            raise error from e


streams_registry.register('t5composer_checked', func=CheckedStream)


class C4SpanDataset(StreamingDataset):
    """A StreamingDataset of fixed-length token rows (``tokens: uint16[L]``), checked as they are read.

    Args:
        fixed_epoch: report this epoch for every sample instead of the real one (eval sets use
            0, so their masks never change between evaluations).
        row_length: tokens every row must have (None: not checked).
        vocab_size: token ids must be below this (None: not checked).
        **kwargs: passed to :class:`streaming.StreamingDataset`.
    """

    def __init__(self, *, fixed_epoch: Optional[int] = None, row_length: Optional[int] = None, vocab_size: Optional[int] = None,
                 **kwargs: Any):
        from t5composer.data.shared_memory import closing_prefix_probes

        with closing_prefix_probes(self):
            super().__init__(stream_name='t5composer_checked', **kwargs)
        self._fixed_epoch = fixed_epoch
        self._row_length = row_length
        self._vocab_size = vocab_size
        self._epoch_in_iteration = 0

    def _resume_incr_epoch(self, *args: Any, **kwargs: Any) -> tuple[int, int]:
        # The base class decides the epoch here at the start of each __iter__; remember it so
        # every sample of this pass can report it (this worker process only).
        epoch, sample_in_epoch = super()._resume_incr_epoch(*args, **kwargs)
        self._epoch_in_iteration = epoch
        return epoch, sample_in_epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        yield from super().__iter__()
        # When its prefetch thread fails (a damaged shard), Streaming ends the epoch early without a
        # word: a run would train on part of the data, or loop over empty epochs. Say why instead.
        stream, failed = self.streams[0], getattr(self, '_event', None)
        if stream.last_error is not None:
            raise type(stream.last_error)(str(stream.last_error))
        if failed is not None and failed.is_set():
            split_dir = self._split_dir()
            raise _damaged(f'Streaming stopped reading {split_dir} early: a thread preparing its shards failed (its error is '
                           'logged above)', split_dir)

    def _split_dir(self) -> str:
        stream = self.streams[0]
        return os.path.normpath(os.path.join(stream.local, stream.split))

    def _where(self, sample_id: int) -> tuple[str, str]:
        """``(split directory, 'sample N (row i of shard <file>)')`` for messages."""
        shard_id, index = self.spanner[sample_id]
        raw, zipped = self.shards[shard_id].file_pairs[0]
        return self._split_dir(), f'sample {sample_id} (row {index} of shard {(zipped or raw).basename})'

    def prepare_shard(self, shard_id: int, blocking: bool = True) -> None:
        if not blocking:
            return super().prepare_shard(shard_id, False)
        # Streaming's own blocking wait for a shard another thread or worker is preparing never
        # ends when that one failed (the shard stays 'preparing'): wait here, and give up with the
        # failure when it is known in this process, or after the longest a fetch may take.
        from streaming.base.dataset import _ShardState

        super().prepare_shard(shard_id, False)
        stream = self.streams[0]
        patience = (stream.download_retry + 1) * stream.download_timeout + 60.0
        deadline = time.monotonic() + patience
        while self._shard_states[shard_id] == _ShardState.PREPARING:
            if stream.last_error is not None:
                raise type(stream.last_error)(str(stream.last_error))
            if time.monotonic() > deadline:
                raise DataReadError(
                    f'Shard {shard_id} of {self._split_dir()} has been in preparation by '
                    f'another dataloader worker for {patience:.0f} s; it most likely failed (see its error above).',
                )
            time.sleep(0.01)

    def get_item(self, sample_id: int, retry: int = 7) -> dict[str, Any]:
        try:
            sample = super().get_item(sample_id, retry)
            tokens = sample['tokens']
        except DataReadError:
            raise
        except Exception as e:
            stored = self.streams[0].last_error  # a prefetch thread's error; Streaming only says 'Background thread failed'
            if stored is not None:
                raise type(stored)(str(stored)) from e
            split_dir, where = self._where(sample_id)
            raise _damaged(f'Reading {where} of {split_dir} failed', split_dir, e) from e
        if self._row_length is not None and tokens.shape != (self._row_length,):
            split_dir, where = self._where(sample_id)
            raise _damaged(f'{where[0].upper()}{where[1:]} of {split_dir} holds {tokens.size} tokens, not the {self._row_length} of every row',
                           split_dir)
        if self._vocab_size is not None and tokens.size and int(tokens.max()) >= self._vocab_size:
            split_dir, where = self._where(sample_id)
            raise _damaged(f'{where[0].upper()}{where[1:]} of {split_dir} holds token id {int(tokens.max())}, outside the vocabulary '
                           f'of {self._vocab_size} ids (damaged, or converted with another tokenizer)', split_dir)
        epoch = self._fixed_epoch if self._fixed_epoch is not None else self._epoch_in_iteration
        # MDS arrays are read-only uint16; the collator needs signed ints anyway.
        return {'tokens': np.asarray(tokens, dtype=np.int64), 'sample_idx': int(sample_id), 'epoch': int(epoch)}


def open_error_advice(error: BaseException, *, local: Optional[str], remote: Optional[str], split_dir: Optional[str] = None) -> str:
    """What to do about an error Streaming raised while opening a split, by its kind.

    Shared-memory and lock clashes with another job say to run again (the data is fine); a
    directory another job streams into says so; a damaged index says to verify and reconvert; a
    store that fails says to check the network.

    Args:
        error: what Streaming raised.
        local: ``data.local`` (the splits' directory, or the cache of ``remote``).
        remote: ``data.remote`` (None for local data).
        split_dir: the split's local directory.
    """
    text = f'{type(error).__name__}: {error}'
    if 'Reused local directory' in text:
        return (f"Another running job streams data.remote into the same local cache ('{split_dir or local}'); Streaming "
                'allows one job per cache directory (the data is fine). Give this run its own cache, e.g. '
                f"data.local={(local or 'cache').rstrip('/')}-<run_name>, or wait for the other job to finish.")
    if re.search(r'/?\d{6}_[a-z_]+', str(getattr(error, 'filename', None) or '')) or 'shared memory' in text.lower():
        return ('Streaming could not register its shared memory: another job on this machine built its datasets in the '
                'same instant, or a killed one left it behind (the data is fine). Run the same command again.')
    if remote is not None and not isinstance(error, (ValueError, KeyError)):
        return ('Check data.remote, the network, the endpoint (S3_ENDPOINT_URL for s3:// stores that are not AWS) and '
                'the credentials, then run the same command again.')
    return (f'Its index.json is damaged or not an MDS index. Check the split with: {verify_command(split_dir or local or "<split dir>")}; '
            'then reconvert it with recipes/convert_c4.py (--overwrite).')


def build_span_dataloader(
    *,
    local: Optional[str],
    remote: Optional[str],
    split: str,
    device_batch_size: int,
    collator: SpanCorruptionCollator,
    shuffle: bool,
    shuffle_seed: int,
    train: bool,
    shuffle_algo: str = 'py1e',
    num_canonical_nodes: Optional[int] = None,
    predownload: Optional[int] = None,
    download_timeout: float = 60.0,
    num_workers: int = 2,
    prefetch_factor: Optional[int] = 2,
    pin_memory: bool = True,
    persistent_workers: bool = True,
    drop_last: Optional[bool] = None,
    row_length: Optional[int] = None,
    vocab_size: Optional[int] = None,
    validate_hash: Optional[str] = None,
) -> DataLoader:
    """A DataLoader of span-corrupted batches from one MDS split.

    Args:
        local: local directory of the splits, or the local cache when ``remote`` is set.
        remote: remote root of the splits (None to read ``local`` only).
        split: split name under the roots.
        device_batch_size: samples per device per batch; also passed to the dataset so that a
            resumed run continues from the exact sample.
        collator: turns rows into input_ids / labels / decoder_input_ids.
        shuffle: shuffle the training order (eval sets are read in order).
        shuffle_seed: seed of the shuffle.
        train: training split (eval splits get a fixed epoch so their masks never change).
        drop_last: drop a final partial batch (default: for training only). A compiled model
            recompiles for a new batch shape, so compiled runs drop it in eval too.
        row_length: tokens every row must have; a row of another length stops the run naming it.
        vocab_size: token ids must be below this; a row with another id stops the run naming it.
        validate_hash: check each shard file against this checksum of its ``index.json`` when
            Streaming fetches or unpacks it (None: not checked).
    """
    from t5composer.data.shared_memory import processes_reading
    from t5composer.data.split_lock import SplitInUseError, hold_reader_lock, streaming_registration

    split_dir = split_location(local, split)
    if not is_remote(remote) and split_dir is not None and os.path.isdir(split_dir):
        hold_reader_lock(split_dir)  # for the life of this process: convert_c4.py --overwrite waits for it

    def shared_cache() -> Optional[str]:
        # Streaming allows one job per cache directory of a remote, but its own check misses some.
        users = processes_reading(split_dir) if remote is not None and split_dir is not None else []
        if not users:
            return None
        return (f"Process(es) {', '.join(map(str, users))} already stream {split_location(remote, split)} into the local cache "
                f"'{split_dir}', and Streaming allows one job per cache directory (the data is fine). Give this run its own "
                f"cache, e.g. data.local={(local or 'cache').rstrip('/')}-<run_name>, or wait for that job to finish.")

    try:
        with streaming_registration(shared_cache):  # one job of this machine at a time picks its shared-memory names
            dataset = C4SpanDataset(
                local=split_dir,
                remote=split_location(remote, split),
                batch_size=device_batch_size,
                shuffle=shuffle and train,
                shuffle_seed=shuffle_seed,
                shuffle_algo=shuffle_algo,
                num_canonical_nodes=num_canonical_nodes,
                predownload=predownload,
                download_timeout=download_timeout,
                validate_hash=validate_hash,
                fixed_epoch=None if train else 0,
                row_length=row_length,
                vocab_size=vocab_size,
            )
    except SplitInUseError as e:
        raise ConfigError([str(e)]) from e
    except _OPEN_ERRORS as e:
        # Streaming's own errors come from deep inside it; say which split, and what to do for this kind of error.
        where = ' and '.join(f"{k} '{v}'" for k, v in (('local', split_dir), ('remote', split_location(remote, split))) if v)
        # Its first sentence: the rest of some of Streaming's messages advises what would harm other jobs.
        said = str(e).split('. ', 1)[0].rstrip('.')
        raise ConfigError([
            f"Could not open split '{split}' ({where}): {type(e).__name__}: {said}. "
            + open_error_advice(e, local=local, remote=remote, split_dir=split_dir),
        ]) from e
    workers = num_workers
    return DataLoader(
        dataset,
        batch_size=device_batch_size,
        collate_fn=collator,
        num_workers=workers,
        pin_memory=pin_memory and _has_accelerator(),
        prefetch_factor=prefetch_factor if workers > 0 else None,
        persistent_workers=persistent_workers and workers > 0,
        drop_last=train if drop_last is None else drop_last,
    )


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() and os.environ.get('CUDA_VISIBLE_DEVICES', None) != ''
