"""nanoT5's AdamW with RMS-scaled steps ("adamwscale"), as multi-tensor work that never waits for the device.

Adam's update is multiplied by ``max(1e-3, RMS(p))``, Adafactor's ``scale_parameter`` trick, so
the step is relative to the size of each weight tensor; this is what lets T5 pre-train with a
base learning rate of 2e-2.

A step is two functions over all the tensors of a parameter group: :func:`adamwscale_step_sizes`
(per-tensor scalars: step counts and step sizes) and :func:`adamwscale_apply` (the elementwise
update). Each is written once for the two ways it runs: eagerly (the ops of nanoT5's loop) or
through ``torch.compile`` (``compiled=True``), which turns the update of each tensor into one
pass over its memory. Python numbers in them are per-group constants; everything that changes
between steps (lr, step counts, the skip flag) is a tensor, so the compiled step never recompiles.
With ``fused=True`` the elementwise update is instead one Triton kernel over every tensor of the
group (:mod:`t5composer.optim.adamwscale_kernel`, CUDA): the same arithmetic, one launch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import Any, Optional

import torch
from torch.optim import Optimizer

from t5composer.learning_rate import check_learning_rate
from t5composer.triton_runtime import require_mode, triton_problem

__all__ = ['AdamWScale', 'adamwscale_apply', 'adamwscale_step_sizes']


def adamwscale_step_sizes(
    steps: list[torch.Tensor],
    rms: list[torch.Tensor],
    lr: torch.Tensor,
    found: Optional[torch.Tensor],
    *,
    beta1: float,
    beta2: float,
) -> torch.Tensor:
    """Advance each parameter's step count (unless ``found``) and return the step sizes, all on the device.

    ``step_size = lr * sqrt(1 - b2^t) / (1 - b1^t) * max(1e-3, RMS(p))``, the bias correction in
    float64 as the Python floats it replaces, then in the parameters' dtype. The scalars of all
    the tensors are one vector, so a step issues a handful of kernels here, not a dozen per tensor.

    Args:
        steps: per parameter, its step count (0-dim float32 tensor, updated in place).
        rms: per parameter, RMS(p) of the whole tensor before this step (0-dim).
        lr: the group's learning rate (0-dim float64 on the parameters' device).
        found: 0-dim bool tensor; where true the counts stay; None: always count.
        beta1, beta2: the group's betas.

    Returns:
        The step size of each parameter, one vector.
    """
    if found is None:
        torch._foreach_add_(steps, 1.0)
    else:  # a list of the one 0-dim flag: the list form traces under torch.compile
        torch._foreach_add_(steps, [(~found).to(steps[0].dtype)] * len(steps))
    t = torch.stack(steps).double()
    bias_corrected_lr = lr * torch.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
    r = torch.stack(rms)  # a group mixing dtypes gets the widest one's scalars
    return r.clamp_min(1e-3) * bias_corrected_lr.to(r.dtype)


def adamwscale_apply(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    step_sizes: list[torch.Tensor],
    decay: Optional[torch.Tensor],
    found: Optional[torch.Tensor],
    *,
    beta1: float,
    beta2: float,
    eps: float,
) -> None:
    """The elementwise part of the step, in place: moments, then weights (any slices of them).

    Multi-tensor (``torch._foreach_*``) ops over the lists: on a GPU each op is a few kernels for
    all the tensors; on a CPU PyTorch runs it as the same op tensor by tensor.

    Args:
        params, grads, exp_avgs, exp_avg_sqs: per tensor (or slice of one): the weights, their
            gradients and the two moments (updated in place).
        step_sizes: per tensor (0-dim), from :func:`adamwscale_step_sizes`.
        decay: ``-lr * weight_decay`` (0-dim, the parameters' dtype), or None without weight decay.
        found: 0-dim bool tensor: where true, weights and moments stay exactly as they are (the
            step is skipped on the device, as fused Adam does with GradScaler's ``found_inf``);
            None: always step.
        beta1, beta2, eps: the group's hyperparameters.
    """
    if found is None:
        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
        torch._foreach_sub_(params, _scaled_updates(exp_avgs, exp_avg_sqs, step_sizes, eps))
        if decay is not None:
            torch._foreach_add_(params, torch._foreach_mul(params, decay))  # decoupled, on the updated weights (nanoT5)
        return
    # A skipped step must leave every bit as it was, and the gradients may be NaN: select, don't scale.
    m_new = torch._foreach_mul(exp_avgs, beta1)
    torch._foreach_add_(m_new, grads, alpha=1.0 - beta1)
    v_new = torch._foreach_mul(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(v_new, grads, grads, value=1.0 - beta2)
    p_new = torch._foreach_sub(params, _scaled_updates(m_new, v_new, step_sizes, eps))
    if decay is not None:
        torch._foreach_add_(p_new, torch._foreach_mul(p_new, decay))
    for old, new in zip((*exp_avgs, *exp_avg_sqs, *params), (*m_new, *v_new, *p_new)):
        torch.where(found, old, new, out=old)


def _scaled_updates(exp_avgs: list[torch.Tensor], exp_avg_sqs: list[torch.Tensor], step_sizes: list[torch.Tensor],
                    eps: float) -> list[torch.Tensor]:
    """``step_size * m / (sqrt(v) + eps)`` per tensor, in nanoT5's order of operations."""
    denominators = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denominators, eps)
    updates = torch._foreach_div(exp_avgs, denominators)
    torch._foreach_mul_(updates, step_sizes)
    return updates


# Eagerly on a CPU, a tensor's update runs in slices of this many elements (1 MiB of fp32): the
# temporaries of a slice stay in the cache and are reused, where whole-tensor temporaries of a
# large weight (an embedding: 99 MB) are fresh memory, faulted in page by page, at every step.
_CPU_SLICE = 1 << 18
# On other devices the tensors step together in chunks of at most this many elements, which bounds
# the temporaries of a skippable step (four chunk-sized lists) at a few hundred MB for any model.
_DEVICE_CHUNK = 1 << 26


def _in_cpu_slices(device: torch.device) -> bool:
    return device.type == 'cpu'


def _apply_eagerly(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
                   exp_avg_sqs: list[torch.Tensor], step_sizes: list[torch.Tensor], decay: Optional[torch.Tensor],
                   found: Optional[torch.Tensor], *, beta1: float, beta2: float, eps: float) -> None:
    """:func:`adamwscale_apply` run eagerly: on a CPU slice by slice, elsewhere in multi-tensor chunks."""
    rows = list(zip(params, grads, exp_avgs, exp_avg_sqs, step_sizes))
    kwargs = {'beta1': beta1, 'beta2': beta2, 'eps': eps}
    if params and _in_cpu_slices(params[0].device):
        for tensors in rows:
            if tensors[0].numel() > _CPU_SLICE and all(t.is_contiguous() for t in tensors[:4]):
                slices = [t.view(-1).split(_CPU_SLICE) for t in tensors[:4]]
                for piece in zip(*slices):
                    adamwscale_apply(*([t] for t in piece), [tensors[4]], decay, found, **kwargs)
            else:
                adamwscale_apply(*([t] for t in tensors), decay, found, **kwargs)
        return
    chunk: list[tuple[torch.Tensor, ...]] = []
    size = 0
    for tensors in rows:
        if chunk and size + tensors[0].numel() > _DEVICE_CHUNK:
            adamwscale_apply(*map(list, zip(*chunk)), decay, found, **kwargs)
            chunk, size = [], 0
        chunk.append(tensors)
        size += tensors[0].numel()
    if chunk:
        adamwscale_apply(*map(list, zip(*chunk)), decay, found, **kwargs)


class AdamWScale(Optimizer):
    """AdamW whose step size is scaled by the parameter's RMS (nanoT5's ``adamwscale``).

    Per parameter tensor ``p`` with gradient ``g`` at step ``t``::

        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g^2
        step_size = lr * sqrt(1 - b2^t) / (1 - b1^t) * max(1e-3, RMS(p))   # RMS before the update
        p -= step_size * m / (sqrt(v) + eps)
        p -= lr * weight_decay * p                                          # if weight_decay > 0

    ``RMS(p) = ||p||_2 / sqrt(numel(p))`` of the whole tensor, for all tensors at once
    (``torch._foreach_norm``). Under FSDP each process holds a shard of every tensor, so with
    ``sharded_params`` the RMS sums the squares and the element counts of every process's shards
    (one all-reduce per step); a tensor held whole by several processes (DDP, or HYBRID_SHARD's
    replicas) counts once per copy in both sums, which leaves the ratio unchanged.

    Nothing in a step reads a tensor on the host: the step counts are 0-dim tensors on the
    parameters' device (``state['step']``, as in PyTorch's capturable Adam; an int from an older
    checkpoint is converted on load), and :meth:`skip_next_step_if` hands the next step a
    device-side flag that turns it into a no-op (the non-finite guard uses it). With ``compiled``
    the step runs through ``torch.compile`` (the first step compiles it: seconds on a GPU, up to
    minutes for T5-base on a CPU, then cached); otherwise eagerly, on a CPU in cache-sized slices.

    Args:
        params: parameters or parameter groups.
        lr: learning rate (finite, >= 0).
        betas: coefficients of the running averages of the gradient and its square, each in [0, 1).
        eps: added to the denominator (>= 0).
        weight_decay: decoupled weight decay coefficient (>= 0), applied after the Adam step.
        sharded_params: the parameters are this process's shards of the model's tensors (FSDP):
            take each RMS over the whole tensor across processes. Every process must call
            ``step`` (it is a collective when ``torch.distributed`` runs more than one process).
        compiled: run the update through ``torch.compile`` (one fused pass per tensor).
        fused: run the elementwise update as one Triton kernel over all of a group's tensors
            (CUDA, fp32 parameters; one launch per group instead of one or more per tensor);
            takes precedence over ``compiled``.
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
        compiled: bool = False,
        fused: bool = False,
    ) -> None:
        _validate(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        defaults = {'lr': lr, 'betas': tuple(betas), 'eps': eps, 'weight_decay': weight_decay}
        super().__init__(params, defaults)
        self.sharded_params = bool(sharded_params)
        self.compiled = bool(compiled)
        self.fused = bool(fused)
        for group in self.param_groups:
            # Groups may override defaults; check them too.
            _validate(lr=group['lr'], betas=group['betas'], eps=group['eps'], weight_decay=group['weight_decay'])
        self._found: Optional[torch.Tensor] = None
        self._lr: dict[int, torch.Tensor] = {}  # per group: its lr as a device tensor, refilled every step
        self._numels: dict[tuple, torch.Tensor] = {}  # element counts as device vectors, per list of tensors
        self._fused_tables: dict[int, dict[str, Any]] = {}  # per group: the fused kernel's tables
        # Compiled, the step sizes (per-tensor scalars) and the elementwise update are two graphs:
        # in one, inductor would recompute the scalars inside every tensor's loop.
        fuse = functools.partial(torch.compile, fullgraph=True, dynamic=False)
        compiled = self.compiled and not self.fused
        self._step_sizes = fuse(adamwscale_step_sizes) if compiled else adamwscale_step_sizes
        self._apply = fuse(adamwscale_apply) if compiled else _apply_eagerly

    def skip_next_step_if(self, found: torch.Tensor) -> None:
        """Make the next :meth:`step` leave weights, moments and step counts unchanged if ``found`` is true.

        The flag is applied on the device (no host sync), like ``found_inf`` in PyTorch's fused
        Adam; it is consumed by that one step.

        Args:
            found: a bool tensor with one element, on the parameters' device.
        """
        self._found = found.reshape(()).bool()

    def _whole_tensor_rms(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """RMS of each of ``params`` before the update; with ``sharded_params`` over the whole tensor across processes."""
        import torch.distributed as dist

        norms = torch._foreach_norm([p.detach() for p in params], 2.0)
        sharded = self.sharded_params and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        numels = self._numels_on_device(params, norms[0].device, torch.float32 if sharded else norms[0].dtype, root=not sharded)
        if not sharded:
            return list((torch.stack(norms) / numels).unbind())
        totals = torch.stack([torch.stack([n.float().square() for n in norms]), numels])
        dist.all_reduce(totals)
        return list((totals[0] / totals[1].clamp_min(1.0)).sqrt().unbind())

    def _numels_on_device(self, params: list[torch.Tensor], device: torch.device, dtype: torch.dtype, *, root: bool) -> torch.Tensor:
        """The element counts of ``params`` (their square roots with ``root``) as a device vector, made once per list.

        A tensor built from host numbers at every step would wait for the device (a pageable copy).
        """
        key = (tuple(p.numel() for p in params), device, dtype, root)
        vector = self._numels.get(key)
        if vector is None:
            vector = self._numels[key] = torch.tensor([math.sqrt(k) if root else float(k) for k in key[0]], dtype=dtype, device=device)
        return vector

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
        found, self._found = self._found, None

        stepped = [[p for p in group['params'] if p.grad is not None] for group in self.param_groups]
        # Sharded, the all-reduce needs every rank to list the same tensors in the same order, with
        # or without a gradient of its own; unsharded, only the tensors that step need an RMS.
        listed = [p for group in self.param_groups for p in group['params']] if self.sharded_params else [p for ps in stepped for p in ps]
        if not listed:
            return loss
        rms = dict(zip(map(id, listed), self._whole_tensor_rms(listed)))
        for index, (group, params) in enumerate(zip(self.param_groups, stepped)):
            if not params:
                continue
            states = []
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError('AdamWScale does not support sparse gradients')
                state = self.state[p]
                if len(state) == 0:
                    state['step'] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state['exp_avg'] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state['exp_avg_sq'] = torch.zeros_like(p, memory_format=torch.preserve_format)
                states.append(state)
            lr = self._lr.get(index)
            if lr is None or lr.device != params[0].device:
                lr = self._lr[index] = torch.zeros((), dtype=torch.float64, device=params[0].device)
            lr.fill_(group['lr'])  # the value travels as a kernel argument, not as a copy the host waits for
            beta1, beta2 = group['betas']
            sizes = self._step_sizes([s['step'] for s in states], [rms[id(p)] for p in params], lr, found, beta1=beta1, beta2=beta2)
            decay = (-lr * group['weight_decay']).to(params[0].dtype) if group['weight_decay'] > 0.0 else None
            moments = ([s['exp_avg'] for s in states], [s['exp_avg_sq'] for s in states])
            if self.fused:  # the kernel takes addresses: no detached views needed
                self._apply_fused(index, (params, [p.grad for p in params], *moments), sizes, decay, found,
                                  beta1=beta1, beta2=beta2, eps=group['eps'])
            else:
                self._apply([p.detach() for p in params], [p.grad for p in params], *moments, list(sizes.unbind()), decay, found,
                            beta1=beta1, beta2=beta2, eps=group['eps'])
        return loss

    def _apply_fused(self, index: int, tensors: tuple[list[torch.Tensor], ...], step_sizes: torch.Tensor,
                     decay: Optional[torch.Tensor], found: Optional[torch.Tensor], *, beta1: float, beta2: float, eps: float) -> None:
        """The elementwise update of group ``index`` as one kernel launch (see :mod:`t5composer.optim.adamwscale_kernel`).

        Its tables (the tensors' addresses, their tiles and sizes) are built when the group's
        tensors change, which with gradients set to None between steps is whenever the allocator
        hands out different memory; the addresses travel in a pinned, non-blocking copy.
        """
        problem = fused_step_problem(tensors)
        if problem:
            raise RuntimeError(f'AdamWScale(fused=True) cannot step: {problem}; set optimizer.fused=false.')
        from t5composer.optim import adamwscale_kernel as kernel

        require_mode(kernel.INTERPRET, 'The adamwscale kernels')
        device = tensors[0][0].device
        numels = tuple(p.numel() for p in tensors[0])
        cached = self._fused_tables.get(index)
        if cached is None or cached['numels_key'] != (numels, device):
            cached = self._fused_tables[index] = {
                'numels_key': (numels, device), 'tiles': kernel.tiles(list(numels), device),
                'numels': torch.tensor(numels, dtype=torch.int64).to(device), 'addresses_key': None,
            }
        addresses_key = tuple(t.data_ptr() for row in tensors for t in row)
        if cached['addresses_key'] != addresses_key:
            cached['addresses'], cached['addresses_key'] = kernel.addresses(list(tensors), device), addresses_key
            cached['aligned'] = all(address % 16 == 0 for address in addresses_key)
        kernel.launch(cached['addresses'], cached['tiles'], cached['numels'], step_sizes, decay, found,
                      aligned=cached['aligned'], beta1=beta1, beta2=beta2, eps=eps)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load optimizer state; ``step`` becomes a 0-dim float32 tensor on its parameter's device.

        Args:
            state_dict: as returned by :meth:`state_dict` (an int ``step``, which older
                checkpoints hold, is accepted).
        """
        super().load_state_dict(state_dict)
        for p, state in self.state.items():
            if 'step' in state:
                step = state['step']
                step = step.detach().reshape(()) if torch.is_tensor(step) else torch.tensor(float(step))
                state['step'] = step.to(device=p.device, dtype=torch.float32)


def fused_step_problem(tensors: tuple[list[torch.Tensor], ...]) -> Optional[str]:
    """Why the fused kernel cannot update ``tensors`` (weights, gradients, both moments), or None."""
    device = tensors[0][0].device
    problem = triton_problem(device)
    if problem:
        return problem
    for row, what in zip(tensors, ('weight', 'gradient', 'exp_avg', 'exp_avg_sq')):
        for t in row:
            if t.dtype != torch.float32 or not t.is_contiguous() or t.device != device:
                return (f'it takes contiguous fp32 tensors on one device, and a {what} is {t.dtype}, '
                        f'{"contiguous" if t.is_contiguous() else "strided"}, on {t.device}')
    return None


def _validate(*, lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    check_learning_rate(lr)
    if len(betas) != 2:
        raise ValueError(f'betas must be a pair (beta1, beta2), got {betas!r}')
    for i, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f'betas[{i}] must be in [0, 1), got {beta}')
    if not eps >= 0.0:
        raise ValueError(f'eps must be >= 0, got {eps}')
    if not weight_decay >= 0.0:
        raise ValueError(f'weight_decay must be >= 0, got {weight_decay}')
