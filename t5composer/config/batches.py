"""The batch sizes a config means on a given number of processes, and the ones that cannot work."""

from __future__ import annotations

import logging
from typing import NamedTuple, Union

from t5composer.config.schema import TrainConfig

__all__ = ['BatchSizes', 'batch_size_problems', 'batch_sizes']

log = logging.getLogger(__name__)


class BatchSizes(NamedTuple):
    """Rows per process of one run (a tuple: ``device, micro, eval = batch_sizes(cfg, n)``).

    Args:
        device: the per-device (per-process) training batch.
        micro: its microbatch (``'auto'``: Composer searches on the GPU).
        eval: the per-device eval batch.
    """

    device: int
    micro: Union[int, str]
    eval: int


def batch_size_problems(cfg: TrainConfig, world_size: int, *, on_gpu: bool) -> list[str]:
    """A global batch that does not divide over ``world_size`` processes, or a microbatch that does not divide the device batch.

    Args:
        cfg: the config.
        world_size: processes of the run.
        on_gpu: the run has GPUs (``'auto'`` microbatches need one).
    """
    g = cfg.global_train_batch_size
    if g % world_size:
        return [
            f"global_train_batch_size {g} is not divisible by the number of processes ({world_size}); "
            f'use a multiple of {world_size} or launch with a number of processes that divides {g}.',
        ]
    device_batch = g // world_size
    mb = cfg.device_train_microbatch_size
    if mb == 'auto' and not on_gpu:
        return ["device_train_microbatch_size 'auto' needs a GPU; on CPU set an integer that divides the per-device batch."]
    # Larger than the per-device batch is fine: the device batch is then one microbatch (as in
    # llm-foundry), so pt_base's 128 also runs as written on 8 GPUs (16 rows each).
    if isinstance(mb, int) and 0 < mb < device_batch and device_batch % mb:
        return [
            f'device_train_microbatch_size {mb} must divide the per-device batch {device_batch} '
            f'(global_train_batch_size {g} / {world_size} process(es)); pick a divisor of {device_batch}.',
        ]
    return []


def batch_sizes(cfg: TrainConfig, world_size: int, *, announce: bool = True) -> BatchSizes:
    """The per-device batch, microbatch and eval batch on ``world_size`` processes.

    A microbatch above the device batch becomes the device batch (said in the log when ``announce``).

    Args:
        cfg: the config.
        world_size: processes of the run.
        announce: log a microbatch that was lowered to the device batch.
    """
    device_batch = cfg.global_train_batch_size // world_size
    micro = cfg.device_train_microbatch_size or device_batch
    if isinstance(micro, int) and micro > device_batch:
        if announce:
            log.info('device_train_microbatch_size %d is more than the per-device batch %d (%d / %d processes): '
                     'each device runs its batch as one microbatch of %d.', micro, device_batch,
                     cfg.global_train_batch_size, world_size, device_batch)
        micro = device_batch
    eval_batch = cfg.device_eval_batch_size or (micro if isinstance(micro, int) else device_batch)
    return BatchSizes(device=device_batch, micro=micro, eval=eval_batch)
