"""Fused attention with an additive bias that is shared by the batch and learns: our Triton kernels.

T5's self-attention adds one position bias ``[H, Lq, Lk]`` to the scores of every row of the
batch, and the bias needs a gradient (the bucket table learns). PyTorch's fused kernels handle
that badly on a GPU: FlashAttention takes no bias, cuDNN refuses one that needs a gradient, and
the memory-efficient kernel (CUTLASS, written for sm80) writes the bias gradient as ``[B, H, Lq,
Lk]`` and leaves the sum over the batch to a second pass; it was the largest kernel of the
pt_base step on an H200 (docs/performance.md). Here the bias gradient is a kernel of its own
that owns one ``[H, block, block]`` tile and loops over the batch, so it is summed in registers,
written once, with no atomics (the gradients are deterministic).

Kernels (FlashAttention-2's algorithm; softmax in base 2, fp32 accumulation):

- forward: one program per (query block, batch x head); the output and each row's log-sum-exp.
- backward, three kernels reading the log-sum-exp instead of keeping the probabilities: dQ per
  (query block, batch x head), which also writes each row's ``dO . O`` for the others; dK and dV
  per (key block, batch x head); and the bias gradient per (query block, key block, head),
  summed over the batch.

Scores are ``q k^T + bias`` with no scaling (T5's convention; scale q beforehand otherwise).
Masks travel in the bias as a large negative value (the causal mask of T5's decoder does); a
query row must keep at least one key. ``q``, ``k``, ``v`` may be strided views ``[B, H, L, D]``
(the head split of a projection), and the output comes back as the same kind of view, so the
head merge after it copies nothing.

The public entry point is :func:`bias_attention`, a ``torch.library`` custom op with its own
autograd formula, so ``torch.compile`` keeps it whole inside a compiled graph. It runs on CUDA;
on a CPU only under ``TRITON_INTERPRET=1`` (Triton's interpreter: for tests, slow).
"""

from __future__ import annotations

import torch

from t5composer.triton_runtime import on_device_of, require_mode, triton_problem

__all__ = ['BIAS_ATTENTION_MAX_HEAD_DIM', 'bias_attention', 'bias_attention_problem']

# Tiles span the head dimension padded to a power of two (at least 16, what tl.dot takes); past
# 128 a tile of fp32 partial sums no longer fits the registers.
BIAS_ATTENTION_MAX_HEAD_DIM = 128


def bias_attention_problem(device: torch.device | str, head_dim: int) -> str | None:
    """Why :func:`bias_attention` cannot run on ``device`` with ``head_dim``, or None if it can.

    Args:
        device: where the tensors live.
        head_dim: ``d_kv``, the size of one head.
    """
    if head_dim > BIAS_ATTENTION_MAX_HEAD_DIM:
        return f'its kernels take heads of at most {BIAS_ATTENTION_MAX_HEAD_DIM} (d_kv), got {head_dim}'
    return triton_problem(device)


def _kernel(name: str) -> tuple:
    """A kernel and its fixed tile sizes, imported on first use (needs triton)."""
    from t5composer.models import bias_attention_kernels

    require_mode(bias_attention_kernels.INTERPRET, 'The bias_attention kernels')
    return bias_attention_kernels.launchable(name)


def tile_dim(head_dim: int) -> int:
    """The kernels' tile width along the head dimension: ``head_dim`` up to a power of two, at least 16."""
    return max(16, 1 << (head_dim - 1).bit_length())


def _precision(dtype: torch.dtype) -> str | None:
    # fp32 inputs get fp32 products (the tests compare with fp32 SDPA); bf16/fp16 take tl.dot's default.
    return 'ieee' if dtype == torch.float32 else None


def _head_view(batch: int, length: int, heads: int, head_dim: int, like: torch.Tensor) -> torch.Tensor:
    """An empty ``[B, H, L, D]`` view of a ``[B, L, H, D]`` buffer (what the head merge wants)."""
    return torch.empty(batch, length, heads, head_dim, dtype=like.dtype, device=like.device).transpose(1, 2)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> None:
    problem = bias_attention_problem(q.device, q.shape[-1])
    if problem:
        raise RuntimeError(f'bias_attention cannot run: {problem}.')
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f'q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}.')
    batch, heads, lq, d = q.shape
    if k.shape != (batch, heads, k.shape[2], d) or v.shape != k.shape:
        raise ValueError(f'k and v must be [B, H, Lk, D] matching q {tuple(q.shape)}, got {tuple(k.shape)}, {tuple(v.shape)}.')
    if bias.shape != (heads, lq, k.shape[2]):
        raise ValueError(f'bias must be [H, Lq, Lk] = {(heads, lq, k.shape[2])}, got {tuple(bias.shape)}.')
    for name, t in (('q', q), ('k', k), ('v', v), ('bias', bias)):
        if t.stride(-1) != 1:
            raise ValueError(f'{name} must be dense along its last dimension (stride 1), got strides {t.stride()}.')


@torch.library.custom_op('t5composer::bias_attention_fwd', mutates_args=())
def _fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _check(q, k, v, bias)
    batch, heads, lq, d = q.shape
    lk = k.shape[2]
    out = _head_view(batch, lq, heads, d, q)
    lse = torch.empty(batch, heads, lq, dtype=torch.float32, device=q.device)
    kernel, fixed = _kernel('fwd')

    def grid(meta):
        return (-(-lq // meta['BLOCK_M']), batch * heads)

    with on_device_of(q):
        kernel[grid](q, k, v, bias, out, lse,
                     q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                     v.stride(0), v.stride(1), v.stride(2), bias.stride(0), bias.stride(1),
                     out.stride(0), out.stride(1), out.stride(2),
                     heads, lq, lk, d, D=tile_dim(d), PRECISION=_precision(q.dtype), **fixed)
    return out, lse


@_fwd.register_fake
def _(q, k, v, bias):
    batch, heads, lq, d = q.shape
    return _head_view(batch, lq, heads, d, q), q.new_empty(batch, heads, lq, dtype=torch.float32)


@torch.library.custom_op('t5composer::bias_attention_bwd', mutates_args=())
def _bwd(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
         out: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, heads, lq, d = q.shape
    lk = k.shape[2]
    if grad_out.stride(-1) != 1:
        grad_out = grad_out.contiguous()
    delta = torch.empty_like(lse)  # written by the dQ kernel, which runs first
    dq, dk, dv = _head_view(batch, lq, heads, d, q), _head_view(batch, lk, heads, d, k), _head_view(batch, lk, heads, d, v)
    dbias = torch.empty(heads, lq, lk, dtype=torch.float32, device=q.device)
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2), bias.stride(0), bias.stride(1),
               grad_out.stride(0), grad_out.stride(1), grad_out.stride(2))
    common = {'D': tile_dim(d), 'PRECISION': _precision(q.dtype)}

    with on_device_of(q):
        kernel, fixed = _kernel('dq')
        kernel[lambda meta: (-(-lq // meta['BLOCK_M']), batch * heads)](
            q, k, v, bias, grad_out, lse, delta, dq, out, *strides, dq.stride(0), dq.stride(1), dq.stride(2),
            out.stride(0), out.stride(1), out.stride(2), heads, lq, lk, d, **common, **fixed)
        kernel, fixed = _kernel('dkdv')
        kernel[lambda meta: (-(-lk // meta['BLOCK_N']), batch * heads)](
            q, k, v, bias, grad_out, lse, delta, dk, dv, *strides,
            dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2),
            heads, lq, lk, d, **common, **fixed)
        kernel, fixed = _kernel('dbias')
        kernel[lambda meta: (-(-lq // meta['BLOCK_M']), -(-lk // meta['BLOCK_N']), heads)](
            q, k, v, bias, grad_out, lse, delta, dbias, *strides, batch, heads, lq, lk, d, **common, **fixed)
    return dq, dk, dv, dbias.to(bias.dtype)


@_bwd.register_fake
def _(grad_out, q, k, v, bias, out, lse):
    batch, heads, lq, d = q.shape
    lk = k.shape[2]
    return (_head_view(batch, lq, heads, d, q), _head_view(batch, lk, heads, d, k), _head_view(batch, lk, heads, d, v),
            torch.empty_like(bias, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs, output):
    q, k, v, bias = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, bias, out, lse)


def _backward(ctx, grad_out, grad_lse):
    # The log-sum-exp is an internal output: nothing downstream differentiates it.
    return _bwd(grad_out, *ctx.saved_tensors)


_fwd.register_autograd(_backward, setup_context=_setup_context)


def bias_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T + bias) v`` with ``bias`` shared by the batch, fused, on CUDA.

    Equal to ``F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)`` to float
    rounding, gradients included; the bias gradient comes back summed over the batch.

    Args:
        q: ``[B, H, Lq, D]`` queries (a strided head view is fine; the last dim must be dense).
        k: ``[B, H, Lk, D]`` keys.
        v: ``[B, H, Lk, D]`` values.
        bias: ``[H, Lq, Lk]`` or ``[1, H, Lq, Lk]`` additive bias (masks as a large negative value),
            in any float dtype; its gradient has its shape and dtype.

    Returns:
        ``[B, H, Lq, D]``, a view of a ``[B, Lq, H, D]`` buffer.
    """
    shared = bias.squeeze(0) if bias.dim() == 4 else bias
    out, _ = _fwd(q, k, v, shared)
    return out
