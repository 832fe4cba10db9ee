"""The gradient norm of a step: computed once on the device, shared by clipping, the non-finite check and the log.

Gradient clipping (:class:`t5composer.optim.clipping.GradientClipping`), the non-finite guard
and ``nanot5_log``'s ``Grad_l2`` all need the total L2 norm of the batch's gradients before
clipping. :func:`step_grad_norm` computes it the first time one of them asks at
``Event.AFTER_TRAIN_BATCH`` (clipping, an algorithm, runs before the callbacks) and hands the
same 0-dim device tensor to the others: one pass over the gradients per step, no host sync.

The norm is ``torch.nn.utils.clip_grad_norm_``'s (the L2 norm of the per-tensor norms), so
clipping with it is bit-identical to Composer's ``GradientClipping``. Under FSDP each process
holds shards of the gradients: the squared local norms are summed over every process and divided
by the number of copies of each element (1 for FULL_SHARD, the replica count for HYBRID_SHARD),
as FSDP's own ``clip_grad_norm_`` does.
"""

from __future__ import annotations

import weakref
from typing import Any, Optional

import torch

__all__ = ['fsdp_copies', 'global_l2', 'step_grad_norm']


def global_l2(tensors: list[torch.Tensor], *, copies: Optional[int] = None, device: Optional[torch.device] = None) -> torch.Tensor:
    """L2 norm of all ``tensors`` together, as a 0-dim tensor on their device (no host sync).

    Args:
        tensors: this process's tensors.
        copies: None when the tensors are whole (the norm is local); else the tensors are shards
            (FSDP): the squares are summed over every process (a collective) and divided by how
            many processes hold each element.
        device: where the result is kept when this process holds no tensor (a collective still needs one).
    """
    if copies is None:
        # The norm clip_grad_norm_ clips with.
        return torch.nn.utils.get_total_norm(tensors, 2.0) if tensors else torch.zeros((), device=device)
    # Shards: FSDP's clip_grad_norm_ formula (per-tensor norms in float32, their norm, squared and summed).
    squares = (torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors, 2.0, dtype=torch.float32))).square()
               if tensors else torch.zeros((), device=device))
    torch.distributed.all_reduce(squares)
    return (squares / copies).sqrt()


def fsdp_copies(model: torch.nn.Module) -> Optional[int]:
    """How many processes hold each element of an FSDP-sharded ``model``; None without FSDP."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    unit = next((m for m in model.modules() if isinstance(m, FSDP)), None)
    if unit is None:
        return None
    return max(1, torch.distributed.get_world_size() // unit.process_group.size())


# Per Composer State: (batch it was computed for, the norm), and the model's FSDP copies.
_NORMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def step_grad_norm(state: Any) -> torch.Tensor:
    """The total L2 norm of this batch's gradients before clipping, computed once per batch.

    Call it at ``Event.AFTER_TRAIN_BATCH`` (the gradients of every microbatch are in, the optimizer
    has not stepped); the first caller of a batch computes it, later callers of the same batch get
    the same tensor, even after clipping has scaled the gradients.

    Args:
        state: Composer's training ``State``.

    Returns:
        A 0-dim float tensor on the gradients' device (NaN or inf when a gradient is not finite).
    """
    batch = int(state.timestamp.batch)
    cached = _NORMS.get(state)
    if cached is not None and cached[0] == batch:
        return cached[1]
    model = state.model
    if model not in _COPIES:
        _COPIES[model] = (fsdp_copies(model),)
    params = list(model.parameters())
    norm = global_l2([p.grad for p in params if p.grad is not None], copies=_COPIES[model][0],
                     device=params[0].device if params else None)
    _NORMS[state] = (batch, norm)
    return norm
