"""Stream converted C4 (MDS) splits into span-corrupted batches.

Each sample carries its global index and epoch so the collator can derive its noise mask from
(seed, epoch, index) alone: a resumed run sees exactly the masks an uninterrupted one would, and
the eval set (fixed epoch 0, no shuffle) is masked identically at every evaluation.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np
from streaming import StreamingDataset
from torch.utils.data import DataLoader

from t5composer.config.validation import ConfigError
from t5composer.data.locations import split_location
from t5composer.data.span_corruption import SpanCorruptionCollator

__all__ = ['C4SpanDataset', 'build_span_dataloader']


def _open_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, ValueError, RuntimeError, KeyError]
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        errors += [BotoCoreError, ClientError]
    except ImportError:  # boto3 is only needed for s3:// remotes
        pass
    return tuple(errors)


_OPEN_ERRORS = _open_errors()


class C4SpanDataset(StreamingDataset):
    """A StreamingDataset of fixed-length token rows (``tokens: uint16[L]``).

    Args:
        fixed_epoch: report this epoch for every sample instead of the real one (eval sets use
            0, so their masks never change between evaluations).
        **kwargs: passed to :class:`streaming.StreamingDataset`.
    """

    def __init__(self, *, fixed_epoch: Optional[int] = None, **kwargs: Any):
        super().__init__(**kwargs)
        self._fixed_epoch = fixed_epoch
        self._epoch_in_iteration = 0

    def _resume_incr_epoch(self, *args: Any, **kwargs: Any) -> tuple[int, int]:
        # The base class decides the epoch here at the start of each __iter__; remember it so
        # every sample of this pass can report it (this worker process only).
        epoch, sample_in_epoch = super()._resume_incr_epoch(*args, **kwargs)
        self._epoch_in_iteration = epoch
        return epoch, sample_in_epoch

    def get_item(self, sample_id: int, retry: int = 7) -> dict[str, Any]:
        sample = super().get_item(sample_id, retry)
        epoch = self._fixed_epoch if self._fixed_epoch is not None else self._epoch_in_iteration
        # MDS arrays are read-only uint16; the collator needs signed ints anyway.
        return {'tokens': np.asarray(sample['tokens'], dtype=np.int64), 'sample_idx': int(sample_id), 'epoch': int(epoch)}


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
    """
    try:
        dataset = C4SpanDataset(
            local=split_location(local, split),
            remote=split_location(remote, split),
            batch_size=device_batch_size,
            shuffle=shuffle and train,
            shuffle_seed=shuffle_seed,
            shuffle_algo=shuffle_algo,
            num_canonical_nodes=num_canonical_nodes,
            predownload=predownload,
            download_timeout=download_timeout,
            fixed_epoch=None if train else 0,
        )
    except _OPEN_ERRORS as e:
        # streaming's own errors (a corrupt index.json, a store that fails mid-way) come from deep
        # inside it; say which split and what to do instead of a traceback.
        where = ' and '.join(f"{k} '{v}'" for k, v in (('local', split_location(local, split)), ('remote', split_location(remote, split))) if v)
        raise ConfigError([
            f"Could not open split '{split}' ({where}): {type(e).__name__}: {e}. "
            'Reconvert the split with recipes/convert_c4.py (--overwrite), or check data.remote, the network and the credentials.',
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
