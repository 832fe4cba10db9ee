"""adamwscale's elementwise update as one Triton kernel over every tensor of a group (``fused=True``).

The eager multi-tensor step issues a dozen ``torch._foreach_*`` ops plus three selects per tensor
for the skip flag (~1,100 launches for T5-base's 282 tensors), and the compiled step one kernel per
tensor, launched from Python: either way the host spends milliseconds issuing work that the GPU
does in ~1.5 ms (7 x 4 bytes per weight at its memory bandwidth). Here one launch updates all of a
group's tensors: a table of their addresses (weights, gradients, both moments) and a list of
(tensor, offset) tiles tell each program what to read. The arithmetic is the eager step's, in its
order, in fp32; a set skip flag makes every program return before it writes anything, so a
skipped step leaves every bit as it was.

Imported on first use (it needs triton); ``triton.jit`` decides at import whether the kernel
compiles for the GPU or runs in Triton's interpreter (``TRITON_INTERPRET=1``: CPU tensors, tests).
"""

import torch
import triton
import triton.language as tl

from t5composer.triton_runtime import interpreting, on_device_of

INTERPRET = interpreting()

# Elements per program and its warps: 16 per thread, 8 KB of each of the seven streams per program.
BLOCK = 2048
NUM_WARPS = 4


@triton.jit
def step_values(p, g, m, v, size, decay, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, HAS_DECAY: tl.constexpr):
    """New weights and moments, in the eager step's order of operations."""
    m = m * beta1 + one_minus_beta1 * g
    v = v * beta2 + one_minus_beta2 * g * g
    # IEEE square root and division, as torch's sqrt and div (tl.sqrt and / may be approximate).
    p = p - tl.div_rn(m, tl.sqrt_rn(v) + eps) * size
    if HAS_DECAY:
        p = p + p * decay  # decoupled, on the updated weights (nanoT5)
    return p, m, v


@triton.jit
def adamwscale_update(Addresses, Tiles, Numels, StepSizes, Decay, Found,
                      num_tensors, beta1, one_minus_beta1, beta2, one_minus_beta2, eps,
                      HAS_DECAY: tl.constexpr, HAS_FOUND: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    """One tile of one tensor: ``Addresses`` is ``[4, T]`` (weights, gradients, exp_avg, exp_avg_sq)."""
    skip = 0
    if HAS_FOUND:
        skip = tl.load(Found).to(tl.int32)
    if skip == 0:
        pid = tl.program_id(0)
        t = tl.load(Tiles + 2 * pid)
        start = tl.load(Tiles + 2 * pid + 1)
        numel = tl.load(Numels + t)
        size = tl.load(StepSizes + t)
        decay = 0.0
        if HAS_DECAY:
            decay = tl.load(Decay)
        p_ptr = tl.load(Addresses + t).to(tl.pointer_type(tl.float32))
        g_ptr = tl.load(Addresses + num_tensors + t).to(tl.pointer_type(tl.float32))
        m_ptr = tl.load(Addresses + 2 * num_tensors + t).to(tl.pointer_type(tl.float32))
        v_ptr = tl.load(Addresses + 3 * num_tensors + t).to(tl.pointer_type(tl.float32))
        if ALIGNED:
            # Every address 16-byte aligned (checked on the host) and tiles start at multiples of
            # BLOCK: whole tiles may load and store 4 floats per instruction.
            p_ptr = tl.multiple_of(p_ptr, 16)
            g_ptr = tl.multiple_of(g_ptr, 16)
            m_ptr = tl.multiple_of(m_ptr, 16)
            v_ptr = tl.multiple_of(v_ptr, 16)
            start = tl.multiple_of(start, BLOCK)
        offs = start + tl.arange(0, BLOCK)
        if start + BLOCK <= numel:  # a whole tile: no mask, so the accesses can be vectorised
            p, m, v = step_values(tl.load(p_ptr + offs), tl.load(g_ptr + offs), tl.load(m_ptr + offs), tl.load(v_ptr + offs),
                                  size, decay, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, HAS_DECAY)
            tl.store(m_ptr + offs, m)
            tl.store(v_ptr + offs, v)
            tl.store(p_ptr + offs, p)
        else:  # the tensor's last, partial tile
            mask = offs < numel
            p, m, v = step_values(tl.load(p_ptr + offs, mask=mask), tl.load(g_ptr + offs, mask=mask),
                                  tl.load(m_ptr + offs, mask=mask), tl.load(v_ptr + offs, mask=mask),
                                  size, decay, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, HAS_DECAY)
            tl.store(m_ptr + offs, m, mask=mask)
            tl.store(v_ptr + offs, v, mask=mask)
            tl.store(p_ptr + offs, p, mask=mask)


def tiles(numels: list[int], device: torch.device) -> torch.Tensor:
    """``[num_tiles, 2]`` int64 (tensor index, first element) covering every tensor in ``BLOCK`` pieces."""
    rows = [(t, start) for t, n in enumerate(numels) for start in range(0, n, BLOCK)]
    return torch.tensor(rows, dtype=torch.int64).reshape(-1, 2).to(device)


def addresses(tensors: list[list[torch.Tensor]], device: torch.device) -> torch.Tensor:
    """``[4, T]`` int64 data addresses on ``device``, copied without waiting for it (pinned, non-blocking).

    A pageable host-to-device copy would first wait for all queued work; the caching host
    allocator keeps a pinned block until its copy has run, so a fresh one per call is safe.
    """
    table = torch.tensor([[t.data_ptr() for t in row] for row in tensors], dtype=torch.int64,
                         pin_memory=device.type == 'cuda')
    return table.to(device, non_blocking=True)


def launch(table: torch.Tensor, tile_table: torch.Tensor, numels: torch.Tensor, step_sizes: torch.Tensor,
           decay: torch.Tensor | None, found: torch.Tensor | None, *, aligned: bool, beta1: float, beta2: float, eps: float) -> None:
    """Update every tensor the tables describe, in place.

    Args:
        aligned: every address in ``table`` is a multiple of 16 bytes.
    """
    if tile_table.shape[0] == 0:  # nothing to update (a process whose shards are all empty)
        return
    with on_device_of(table):
        adamwscale_update[(tile_table.shape[0],)](
            table, tile_table, numels, step_sizes, decay if decay is not None else step_sizes,
            found if found is not None else numels, table.shape[1], beta1, 1.0 - beta1, beta2, 1.0 - beta2, eps,
            HAS_DECAY=decay is not None, HAS_FOUND=found is not None, ALIGNED=aligned, BLOCK=BLOCK, num_warps=NUM_WARPS)
