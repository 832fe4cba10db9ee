"""Composer's Trainer without its waits for the device in the middle and at the end of every step.

Composer 0.32's training loop makes the host wait for the GPU several times per batch, and each
wait drains the queue of kernels, so the GPU then idles while the host issues the next ones:

1. For every precision but fp16 it runs the forward and backward passes as a closure inside
   ``optimizer.step(closure=lambda: ....item())`` (``Trainer._use_closures``): the ``.item()``
   waits for the backward pass to finish before the optimizer issues a single kernel.
2. After the step it all-reduces the loss and copies it to the host (``loss.cpu().item()``) to
   log it and keep it in ``state.total_loss_dict``.
3. It sums the samples and tokens of the batch and broadcasts its duration through device
   tensors (``_accumulate_time_across_ranks``), three more copies to the host.

:class:`NonBlockingTrainer` changes exactly these, through the hooks Composer itself has:

1. ``_use_closures`` returns False: Composer's own non-closure path (the one it uses for XLA and
   fp16) runs the microbatches, ``Event.AFTER_TRAIN_BATCH`` (clipping, the non-finite guard),
   then ``optimizer.step()``, in the same order.
2. ``_train_batch`` all-reduces the losses on the device and logs them as device tensors (the
   same value Composer logs, ``loss / world_size`` in float64); it returns None, Composer's
   "no loss this batch" (what it returns when fp16 loss scaling skips a step), so Composer does
   not copy them. Logger destinations read them when they write: ``metrics.jsonl`` and the
   console at their intervals; a TensorBoard, W&B or MLflow logger reads them every batch.
   ``state.total_loss_dict`` is no longer filled (nothing in this project reads it).
3. ``_accumulate_time_across_ranks`` keeps the numbers on the host: nothing to sum with one
   process, a host-side (gloo) all-reduce with several.

What is left per batch, all after the optimizer step has been issued: Composer's "has any rank's
dataloader run out" flag when it fetches the next batch (``_iter_dataloader``), its sum of the
batch size across ranks at the start of ``_train_microbatches`` (before the forward pass) and,
when configured, SpeedMonitor's sum of FLOPs at ``BATCH_END`` (one ``.item()`` each). The first
of them lets the GPU finish the step and then idle until the host has issued the next one's first
kernel. tests/test_syncs.py counts them on CPU; bench/gpu_check.sh reports them on a GPU with
``torch.cuda.set_sync_debug_mode`` and the GPU's idle time with the profiler.
"""

from __future__ import annotations

import datetime
from typing import Any, Optional, Union

import torch
from composer import Trainer
from composer.utils import dist

__all__ = ['NonBlockingTrainer']


class NonBlockingTrainer(Trainer):
    """Composer's ``Trainer`` (same arguments) whose steady-state step waits for the device less (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._host_group: Optional[Any] = None  # gloo group for host-side collectives under NCCL

    def _use_closures(self) -> bool:
        # Composer's non-closure path: the optimizer is issued without waiting for the backward pass.
        return False

    def _train_batch(self, use_grad_scaling: bool) -> Optional[dict[str, torch.Tensor]]:  # type: ignore[override]
        losses = super()._train_batch(use_grad_scaling)
        if losses is None:
            return None
        world = dist.get_world_size()
        for loss in losses.values():
            dist.all_reduce(loss)  # on the device; Composer does this too, then copies to the host
        # float64, so that the logged number is Composer's loss.item() / world_size exactly.
        self.logger.log_metrics({key: loss.detach().double() / world for key, loss in losses.items()})
        return None

    def _accumulate_time_across_ranks(
        self,
        num_samples: Union[int, float],
        num_tokens: int,
        batch_time: datetime.timedelta,
    ) -> tuple[int, int, datetime.timedelta]:
        if isinstance(num_samples, float):  # sequence parallelism: Composer's checks of fractional samples
            return super()._accumulate_time_across_ranks(num_samples, num_tokens, batch_time)
        if dist.get_world_size() == 1:
            return int(num_samples), int(num_tokens), batch_time
        group = self._host_collectives()
        counts = torch.tensor([num_samples, num_tokens], dtype=torch.int64)
        torch.distributed.all_reduce(counts, group=group)
        seconds = torch.tensor([batch_time.total_seconds()], dtype=torch.float64)
        torch.distributed.broadcast(seconds, src=0, group=group)  # the batch time is rank 0's, as in Composer
        samples, tokens = counts.tolist()
        return samples, tokens, datetime.timedelta(seconds=seconds.item())

    def _host_collectives(self) -> Any:
        """A process group for host tensors: the default one under gloo, else a gloo group made once (every rank at its first batch)."""
        if torch.distributed.get_backend() == 'gloo':
            return None
        if self._host_group is None:
            self._host_group = torch.distributed.new_group(backend='gloo')
        return self._host_group
