"""nanoT5's AdamW with RMS-scaled steps ("adamwscale").

Adam's update is multiplied by ``max(1e-3, RMS(p))``, Adafactor's ``scale_parameter`` trick, so
the step is relative to the size of each weight tensor; this is what lets T5 pre-train with a
base learning rate of 2e-2.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

__all__ = ['AdamWScale']


class AdamWScale(Optimizer):
    """AdamW whose step size is scaled by the parameter's RMS (nanoT5's ``adamwscale``).

    Per parameter tensor ``p`` with gradient ``g`` at step ``t``::

        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g^2
        step_size = lr * sqrt(1 - b2^t) / (1 - b1^t) * max(1e-3, RMS(p))   # RMS before the update
        p -= step_size * m / (sqrt(v) + eps)
        p -= lr * weight_decay * p                                          # if weight_decay > 0

    ``RMS(p) = ||p||_2 / sqrt(numel(p))`` of the whole tensor. Under FSDP each process holds a
    shard of every tensor, so with ``sharded_params`` the RMS sums the squares and the element
    counts of every process's shards (one all-reduce of two numbers per tensor and step); a
    tensor held whole by several processes (DDP, or HYBRID_SHARD's replicas) counts once per
    copy in both sums, which leaves the ratio unchanged. The step count is stored per parameter
    as a Python int, so ``state_dict()`` / ``load_state_dict()`` round trips are exact (a tensor
    ``step`` from another optimizer's state is accepted on load).

    Args:
        params: parameters or parameter groups.
        lr: learning rate (>= 0).
        betas: coefficients of the running averages of the gradient and its square, each in [0, 1).
        eps: added to the denominator (>= 0).
        weight_decay: decoupled weight decay coefficient (>= 0), applied after the Adam step.
        sharded_params: the parameters are this process's shards of the model's tensors (FSDP):
            take each RMS over the whole tensor across processes. Every process must call
            ``step`` (it is a collective when ``torch.distributed`` runs more than one process).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        *,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        sharded_params: bool = False,
    ) -> None:
        _validate(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        defaults = {'lr': lr, 'betas': tuple(betas), 'eps': eps, 'weight_decay': weight_decay}
        super().__init__(params, defaults)
        self.sharded_params = bool(sharded_params)
        for group in self.param_groups:
            # Groups may override defaults; check them too.
            _validate(lr=group['lr'], betas=group['betas'], eps=group['eps'], weight_decay=group['weight_decay'])

    @staticmethod
    def _rms(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.norm(2) / math.sqrt(tensor.numel())

    def _whole_tensor_rms(self) -> dict[int, torch.Tensor] | None:
        """``{id(p): RMS of p's whole tensor}`` across processes, or None when nothing is sharded."""
        import torch.distributed as dist

        if not (self.sharded_params and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return None
        params = [p for group in self.param_groups for p in group['params']]  # every rank: the same order
        if not params:
            return None
        squares = torch.stack([n.float().square() for n in torch._foreach_norm([p.detach() for p in params], 2.0)])
        counts = torch.tensor([float(p.numel()) for p in params], device=squares.device)
        totals = torch.stack([squares, counts])
        dist.all_reduce(totals)
        rms = (totals[0] / totals[1].clamp_min(1.0)).sqrt()
        return {id(p): rms[i] for i, p in enumerate(params)}

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one optimisation step.

        Args:
            closure: optional callable that re-evaluates the model and returns the loss.

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        whole_rms = self._whole_tensor_rms()  # before any update: RMS(p) of the step's start
        for group in self.param_groups:
            lr = group['lr']
            beta1, beta2 = group['betas']
            eps = group['eps']
            weight_decay = group['weight_decay']
            for p in group['params']:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError('AdamWScale does not support sparse gradients')
                state = self.state[p]
                if len(state) == 0:
                    state['step'] = 0
                    state['exp_avg'] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state['exp_avg_sq'] = torch.zeros_like(p, memory_format=torch.preserve_format)
                step = int(state['step']) + 1
                state['step'] = step
                exp_avg, exp_avg_sq = state['exp_avg'], state['exp_avg_sq']

                exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                denom = exp_avg_sq.sqrt().add_(eps)

                bias_corrected_lr = lr * math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)
                # A 0-dim tensor, not .item(): no host-device sync per parameter on GPU.
                rms = whole_rms[id(p)] if whole_rms is not None else self._rms(p)
                step_size = rms.clamp_min(1e-3).mul_(bias_corrected_lr)
                p.sub_(exp_avg.div(denom).mul_(step_size))

                if weight_decay > 0.0:
                    # Decoupled decay on the already-updated weights, as in nanoT5.
                    p.add_(p, alpha=-lr * weight_decay)
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load optimizer state; ``step`` entries are normalised to Python ints.

        Args:
            state_dict: as returned by :meth:`state_dict`.
        """
        super().load_state_dict(state_dict)
        for state in self.state.values():
            if 'step' in state and isinstance(state['step'], torch.Tensor):
                state['step'] = int(state['step'].item())


def _validate(*, lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    if not isinstance(lr, (int, float)) or isinstance(lr, bool):
        raise TypeError(f'lr must be a number, got {type(lr).__name__}')
    if not lr >= 0.0:
        raise ValueError(f'lr must be >= 0, got {lr}')
    if len(betas) != 2:
        raise ValueError(f'betas must be a pair (beta1, beta2), got {betas!r}')
    for i, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f'betas[{i}] must be in [0, 1), got {beta}')
    if not eps >= 0.0:
        raise ValueError(f'eps must be >= 0, got {eps}')
    if not weight_decay >= 0.0:
        raise ValueError(f'weight_decay must be >= 0, got {weight_decay}')
