"""The Triton kernels behind :func:`t5composer.models.bias_attention.bias_attention`.

Imported on first use (it needs triton). ``triton.jit`` decides at import whether the kernels
compile for the GPU or run in Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors, tests),
so a process uses one mode. :data:`RAW` holds the kernels by name, :func:`launchable` what to
launch (autotuned on the GPU, fixed small tiles in the interpreter).
"""

import functools

import triton
import triton.language as tl

from t5composer.triton_runtime import interpreting

INTERPRET = interpreting()


@triton.jit
def load_rows(base, stride, start, length, d, BLOCK: tl.constexpr, D: tl.constexpr):
    """Rows ``start .. start+BLOCK`` of a ``[length, d]`` matrix (row stride ``stride``) as ``[BLOCK, D]``, zeros past its ends."""
    # Block pointers keep one base address per tile, not one 64-bit pointer per element, which
    # would take most of the registers of a 64 x 64 tile.
    ptr = tl.make_block_ptr(base, shape=(length, d), strides=(stride, 1), offsets=(start, 0),
                            block_shape=(BLOCK, D), order=(1, 0))
    return tl.load(ptr, boundary_check=(0, 1), padding_option='zero')


@triton.jit
def store_rows(base, stride, start, length, d, value, BLOCK: tl.constexpr, D: tl.constexpr):
    """Store ``[BLOCK, D]`` ``value`` as rows ``start .. start+BLOCK`` of a ``[length, d]`` matrix, within its ends."""
    ptr = tl.make_block_ptr(base, shape=(length, d), strides=(stride, 1), offsets=(start, 0),
                            block_shape=(BLOCK, D), order=(1, 0))
    tl.store(ptr, value.to(base.dtype.element_ty), boundary_check=(0, 1))


@triton.jit
def load_bias(base, stride, row, col, Lq, Lk, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The ``[BLOCK_M, BLOCK_N]`` bias tile at (``row``, ``col``) of one head's ``[Lq, Lk]``, in fp32."""
    ptr = tl.make_block_ptr(base, shape=(Lq, Lk), strides=(stride, 1), offsets=(row, col),
                            block_shape=(BLOCK_M, BLOCK_N), order=(1, 0))
    return tl.load(ptr, boundary_check=(0, 1), padding_option='zero').to(tl.float32)


@triton.jit
def batch_and_head(H):
    """This program's batch row (int64: it multiplies the batch stride) and head, from grid axis 1."""
    return (tl.program_id(1) // H).to(tl.int64), tl.program_id(1) % H


@triton.jit
def probs(q, k, bias, lse, rows_ok, cols_ok, PRECISION: tl.constexpr):
    """Attention probabilities ``exp(q k^T + bias - lse)`` of one tile (base 2); 0 outside the matrix."""
    s = (tl.dot(q, tl.trans(k), input_precision=PRECISION) + bias) * 1.4426950408889634
    p = tl.exp2(s - lse[:, None])
    return tl.where(rows_ok[:, None] & cols_ok[None, :], p, 0.0)


@triton.jit
def bias_attention_fwd(Q, K, V, Bias, Out, Lse,
                       sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sbh, sbm, sob, soh, som,
                       H, Lq, Lk, d,
                       D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """Output and log-sum-exp (base 2) of one query block of one (batch row, head)."""
    row = tl.program_id(0) * BLOCK_M
    b, h = batch_and_head(H)
    K += b * skb + h * skh
    V += b * svb + h * svh
    Bias += h * sbh
    q = load_rows(Q + b * sqb + h * sqh, sqm, row, Lq, d, BLOCK_M, D)
    m_i = tl.full([BLOCK_M], float('-inf'), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for col in range(0, Lk, BLOCK_N):
        cols_ok = col + tl.arange(0, BLOCK_N) < Lk
        k = load_rows(K, skn, col, Lk, d, BLOCK_N, D)
        v = load_rows(V, svn, col, Lk, d, BLOCK_N, D)
        bias = load_bias(Bias, sbm, row, col, Lq, Lk, BLOCK_M, BLOCK_N)
        s = (tl.dot(q, tl.trans(k), input_precision=PRECISION) + bias) * 1.4426950408889634
        s = tl.where(cols_ok[None, :], s, float('-inf'))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A block whose scores are all masked (-inf, or a mask value times log2(e) past the
        # fp32 range) must not turn the running sums into NaN.
        m_safe = tl.where(m_new == float('-inf'), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    store_rows(Out + b * sob + h * soh, som, row, Lq, d, acc / l_i[:, None], BLOCK_M, D)
    rows = row + tl.arange(0, BLOCK_M)
    tl.store(Lse + (b * H + h) * Lq + rows, m_i + tl.log2(l_i), mask=rows < Lq)


@triton.jit
def bias_attention_dkdv(Q, K, V, Bias, dO, Lse, Delta, dK, dV,
                        sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sbh, sbm, sdob, sdoh, sdom,
                        sdkb, sdkh, sdkn, sdvb, sdvh, sdvn,
                        H, Lq, Lk, d,
                        D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """dK and dV of one key block of one (batch row, head), looping over the query blocks."""
    col = tl.program_id(0) * BLOCK_N
    b, h = batch_and_head(H)
    Q += b * sqb + h * sqh
    dO += b * sdob + h * sdoh
    Lse += (b * H + h) * Lq
    Delta += (b * H + h) * Lq
    Bias += h * sbh
    cols_ok = col + tl.arange(0, BLOCK_N) < Lk
    k = load_rows(K + b * skb + h * skh, skn, col, Lk, d, BLOCK_N, D)
    v = load_rows(V + b * svb + h * svh, svn, col, Lk, d, BLOCK_N, D)
    dk = tl.zeros([BLOCK_N, D], tl.float32)
    dv = tl.zeros([BLOCK_N, D], tl.float32)
    for row in range(0, Lq, BLOCK_M):
        rows = row + tl.arange(0, BLOCK_M)
        rows_ok = rows < Lq
        q = load_rows(Q, sqm, row, Lq, d, BLOCK_M, D)
        do = load_rows(dO, sdom, row, Lq, d, BLOCK_M, D)
        lse = tl.load(Lse + rows, mask=rows_ok, other=0.0)
        delta = tl.load(Delta + rows, mask=rows_ok, other=0.0)
        bias = load_bias(Bias, sbm, row, col, Lq, Lk, BLOCK_M, BLOCK_N)
        p = probs(q, k, bias, lse, rows_ok, cols_ok, PRECISION)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
    store_rows(dK + b * sdkb + h * sdkh, sdkn, col, Lk, d, dk, BLOCK_N, D)
    store_rows(dV + b * sdvb + h * sdvh, sdvn, col, Lk, d, dv, BLOCK_N, D)


@triton.jit
def bias_attention_dq(Q, K, V, Bias, dO, Lse, Delta, dQ, Out,
                      sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sbh, sbm, sdob, sdoh, sdom, sdqb, sdqh, sdqm, sob, soh, som,
                      H, Lq, Lk, d,
                      D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """dQ of one query block of one (batch row, head), looping over the key blocks.

    Runs first of the backward kernels: it also writes the block's ``Delta`` (the rows' ``dO . O``,
    the softmax backward's per-row term) for the other two to read.
    """
    row = tl.program_id(0) * BLOCK_M
    b, h = batch_and_head(H)
    K += b * skb + h * skh
    V += b * svb + h * svh
    Bias += h * sbh
    rows = row + tl.arange(0, BLOCK_M)
    rows_ok = rows < Lq
    q = load_rows(Q + b * sqb + h * sqh, sqm, row, Lq, d, BLOCK_M, D)
    do = load_rows(dO + b * sdob + h * sdoh, sdom, row, Lq, d, BLOCK_M, D)
    lse = tl.load(Lse + (b * H + h) * Lq + rows, mask=rows_ok, other=0.0)
    o = load_rows(Out + b * sob + h * soh, som, row, Lq, d, BLOCK_M, D)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    tl.store(Delta + (b * H + h) * Lq + rows, delta, mask=rows_ok)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for col in range(0, Lk, BLOCK_N):
        cols_ok = col + tl.arange(0, BLOCK_N) < Lk
        k = load_rows(K, skn, col, Lk, d, BLOCK_N, D)
        v = load_rows(V, svn, col, Lk, d, BLOCK_N, D)
        bias = load_bias(Bias, sbm, row, col, Lq, Lk, BLOCK_M, BLOCK_N)
        p = probs(q, k, bias, lse, rows_ok, cols_ok, PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        acc += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    store_rows(dQ + b * sdqb + h * sdqh, sdqm, row, Lq, d, acc, BLOCK_M, D)


@triton.jit
def bias_attention_dbias(Q, K, V, Bias, dO, Lse, Delta, dBias,
                         sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sbh, sbm, sdob, sdoh, sdom,
                         B, H, Lq, Lk, d,
                         D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """One ``[BLOCK_M, BLOCK_N]`` tile of one head's bias gradient, summed over the batch here (no atomics)."""
    row = tl.program_id(0) * BLOCK_M
    col = tl.program_id(1) * BLOCK_N
    h = tl.program_id(2)
    rows = row + tl.arange(0, BLOCK_M)
    rows_ok = rows < Lq
    cols_ok = col + tl.arange(0, BLOCK_N) < Lk
    bias = load_bias(Bias + h * sbh, sbm, row, col, Lq, Lk, BLOCK_M, BLOCK_N)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    # Pointers advance by one batch row per iteration (pointer arithmetic is 64-bit).
    Q += h * sqh
    dO += h * sdoh
    K += h * skh
    V += h * svh
    Lse += h * Lq + rows
    Delta += h * Lq + rows
    for _ in range(0, B):
        q = load_rows(Q, sqm, row, Lq, d, BLOCK_M, D)
        do = load_rows(dO, sdom, row, Lq, d, BLOCK_M, D)
        k = load_rows(K, skn, col, Lk, d, BLOCK_N, D)
        v = load_rows(V, svn, col, Lk, d, BLOCK_N, D)
        lse = tl.load(Lse, mask=rows_ok, other=0.0)
        delta = tl.load(Delta, mask=rows_ok, other=0.0)
        p = probs(q, k, bias, lse, rows_ok, cols_ok, PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        acc += p * (dp - delta[:, None])
        Q += sqb
        dO += sdob
        K += skb
        V += svb
        Lse += H * Lq
        Delta += H * Lq
    ptr = tl.make_block_ptr(dBias + h * Lq * Lk, shape=(Lq, Lk), strides=(Lk, 1), offsets=(row, col),
                            block_shape=(BLOCK_M, BLOCK_N), order=(1, 0))
    tl.store(ptr, acc, boundary_check=(0, 1))


# Tile shapes (BLOCK_M, BLOCK_N, warps, stages) the autotuner tries on the GPU, per kernel. Each
# compiles for Hopper to tensor-core (wgmma) code with pipelined loads and no register spills
# (``python -m bench --only kernels`` compiles and inspects them without a GPU; a test holds them
# to it). Few, because every one compiles at the first call of each shape.
TILES = {
    'fwd': [(128, 64, 8, 2), (64, 64, 4, 3), (128, 128, 8, 2), (64, 128, 8, 2)],
    'dkdv': [(64, 64, 4, 2), (64, 64, 8, 3), (128, 64, 8, 2), (32, 64, 4, 2)],
    'dq': [(64, 64, 4, 3), (64, 64, 8, 2), (128, 64, 8, 2), (128, 64, 8, 3)],
    'dbias': [(64, 64, 8, 2), (64, 64, 4, 2), (128, 64, 8, 2), (64, 128, 8, 2)],
}


# The interpreter's tile edge: small, so that the kernel tests cross several blocks and their
# ragged edges; model-level tests raise it (the interpreter runs each program in numpy, so fewer,
# larger programs run faster).
INTERPRET_TILE = 16


def launchable(name: str) -> tuple:
    """The kernel ``name`` to launch and the tile sizes to pass it (none when the autotuner picks them).

    Args:
        name: ``'fwd'``, ``'dkdv'``, ``'dq'`` or ``'dbias'``.
    """
    if INTERPRET:
        return RAW[name], {'BLOCK_M': INTERPRET_TILE, 'BLOCK_N': INTERPRET_TILE}
    return _autotuned(name), {}


@functools.cache
def _autotuned(name: str):
    configs = [triton.Config({'BLOCK_M': m, 'BLOCK_N': n}, num_warps=w, num_stages=s) for m, n, w, s in TILES[name]]
    # No kernel accumulates into its outputs, so the tuner may run each one repeatedly.
    return triton.autotune(configs=configs, key=['Lq', 'Lk', 'D'])(RAW[name])


# By the names the wrapper uses; the functions' own names are what a GPU profile shows.
RAW = {'fwd': bias_attention_fwd, 'dkdv': bias_attention_dkdv, 'dq': bias_attention_dq, 'dbias': bias_attention_dbias}
