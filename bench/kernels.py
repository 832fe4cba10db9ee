"""Benchmark case ``kernels``: the GPU code of our Triton kernels, compiled here, no GPU needed.

For every tile configuration the autotuner of :mod:`t5composer.models.bias_attention_kernels`
may pick (``TILES``), and for adamwscale's fused update (:mod:`t5composer.optim.adamwscale_kernel`),
Triton compiles the kernel for a GPU architecture (``--kernels-arch``, default 90: Hopper, the
H100/H200 of ``bench/gpu_check.sh``) exactly as its JIT would for T5 v1.1-base (bf16 attention
tensors; the integer arguments that are multiples of 16 at those shapes marked so, as the JIT's
specialisation marks them: that is what lets it vectorise and pipeline the loads; fp32
parameters with 16-byte aligned addresses for the optimizer), and ``ptxas`` (shipped with
Triton) assembles it. Reported per configuration: registers per thread, bytes spilled to local
memory (0 wanted: a spill is a trip to memory inside the loop), shared memory, the tensor-core
instructions in the code (``wgmma`` on sm90, ``mma`` on sm80), the asynchronous copies of its
software pipeline (0: the loads are not overlapped with the math) and the 16-byte (4-float)
global loads and stores (the optimizer's memory-bound update wants all its accesses so).
These are what can be known about the kernels' speed without running them; the times are for
a GPU (the ``model`` case's ``triton`` variants and its kernel check, the ``optimizer`` case's
``adamwscale+fused``).

Needs the triton package (the CUDA build of torch ships it) and a process where
``TRITON_INTERPRET`` is unset (the interpreter has no code to inspect).
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import tempfile
import time
from typing import Any

HELP = 'GPU code of our Triton kernels, compiled without a GPU (registers, spills, shared memory, tensor cores, pipelining)'

COLUMNS = (
    ('kernel', 'kernel', '{}'),
    ('tile', 'BLOCK_M, BLOCK_N, warps, stages', '{}'),
    ('arch', 'sm', '{}'),
    ('registers', 'registers', '{}'),
    ('spill_bytes', 'spill bytes', '{}'),
    ('shared_kib', 'shared KiB', '{:.1f}'),
    ('tensor_core_ops', 'tensor-core ops', '{}'),
    ('async_copies', 'async copies', '{}'),
    ('vector_accesses', '16-byte loads/stores', '{}'),
    ('compile_s', 'compile s', '{:.1f}'),
)

# The integer arguments of T5 v1.1-base's encoder call (batch 128, 12 heads of 64, 512 tokens):
# all but the head count are multiples of 16, which the JIT turns into divisibility hints.
_NOT_MULTIPLES_OF_16 = {'H'}
_BF16_POINTERS = {'Q', 'K', 'V', 'Bias', 'Out', 'dO', 'dQ', 'dK', 'dV'}
_FP32_POINTERS = {'Lse', 'Delta', 'dBias'}
_CONSTEXPRS = ('D', 'BLOCK_M', 'BLOCK_N', 'PRECISION')


def add_args(parser: argparse.ArgumentParser) -> None:
    """Add the case's ``--kernels-*`` options to ``parser``."""
    g = parser.add_argument_group('kernels')
    g.add_argument('--kernels-arch', type=int, default=90, help='compute capability to compile for (90: H100/H200, 80: A100)')
    g.add_argument('--kernels-head-dim', type=int, default=64, help='d_kv (T5 v1.1: 64)')


def _ptxas() -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin', 'ptxas')
    return path if os.path.exists(path) else 'ptxas'


def attention_report(kernel: Any, name: str, tile: tuple[int, int, int, int], *, arch: int, head_dim: int) -> dict[str, Any]:
    """Compile one attention kernel at one tile configuration for ``sm_<arch>`` and read its resource use."""
    from t5composer.models.bias_attention import tile_dim

    signature, attrs = {}, {}
    for i, p in enumerate(inspect.signature(kernel.fn).parameters):
        if p in _CONSTEXPRS:
            signature[p] = 'constexpr'
        elif p in _BF16_POINTERS or p in _FP32_POINTERS:
            signature[p] = '*bf16' if p in _BF16_POINTERS else '*fp32'
            attrs[(i,)] = [['tt.divisibility', 16]]  # torch's allocations are 16-byte aligned
        else:
            signature[p] = 'i32'
            if p not in _NOT_MULTIPLES_OF_16:
                attrs[(i,)] = [['tt.divisibility', 16]]
    block_m, block_n, warps, stages = tile
    constexprs = {'D': tile_dim(head_dim), 'BLOCK_M': block_m, 'BLOCK_N': block_n, 'PRECISION': None}
    return {'kernel': name, 'tile': list(tile), 'head_dim': head_dim,
            **compile_report(kernel, signature, attrs, constexprs, warps=warps, stages=stages, arch=arch)}


def optimizer_report(*, arch: int) -> dict[str, Any]:
    """Compile adamwscale's fused update (weight decay and the skip flag on, aligned addresses) for ``sm_<arch>``."""
    from t5composer.optim import adamwscale_kernel

    kernel = adamwscale_kernel.adamwscale_update
    pointers = {'Addresses': '*i64', 'Tiles': '*i64', 'Numels': '*i64', 'StepSizes': '*fp32', 'Decay': '*fp32', 'Found': '*i1'}
    signature, attrs = {}, {}
    for i, p in enumerate(inspect.signature(kernel.fn).parameters):
        if p in pointers:
            signature[p] = pointers[p]
            attrs[(i,)] = [['tt.divisibility', 16]]
        elif p == 'num_tensors':
            signature[p] = 'i32'
        elif p.isupper():
            signature[p] = 'constexpr'
        else:
            signature[p] = 'fp32'
    constexprs = {'HAS_DECAY': True, 'HAS_FOUND': True, 'ALIGNED': True, 'BLOCK': adamwscale_kernel.BLOCK}
    return {'kernel': 'adamwscale', 'tile': [adamwscale_kernel.BLOCK, adamwscale_kernel.NUM_WARPS],
            **compile_report(kernel, signature, attrs, constexprs, warps=adamwscale_kernel.NUM_WARPS, stages=1, arch=arch)}


def compile_report(kernel: Any, signature: dict[str, str], attrs: dict, constexprs: dict[str, Any], *,
                   warps: int, stages: int, arch: int) -> dict[str, Any]:
    """Compile ``kernel`` for ``sm_<arch>`` as the JIT would with these argument types and hints, and read its resource use."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    start = time.perf_counter()
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, attrs=attrs, constexprs=constexprs),
                              target=GPUTarget('cuda', arch, 32), options={'num_warps': warps, 'num_stages': stages})
    seconds = time.perf_counter() - start
    with tempfile.NamedTemporaryFile('w', suffix='.ptx', delete=False) as f:
        f.write(compiled.asm['ptx'])
    try:
        gpu = f'sm_{arch}a' if arch >= 90 else f'sm_{arch}'
        out = subprocess.run([_ptxas(), '-v', '--gpu-name', gpu, f.name, '-o', os.devnull], capture_output=True, text=True, check=True).stderr
    finally:
        os.unlink(f.name)
    registers = re.search(r'Used (\d+) registers', out)
    spills = re.search(r'(\d+) bytes spill stores', out)
    ptx = compiled.asm['ptx']
    return {
        'arch': arch,
        'registers': int(registers.group(1)) if registers else None,
        'spill_bytes': int(spills.group(1)) if spills else None,
        'shared_kib': compiled.metadata.shared / 1024,
        'tensor_core_ops': ptx.count('wgmma.mma_async') if arch >= 90 else len(re.findall(r'\bmma\.sync', ptx)),
        'async_copies': compiled.asm['ttgir'].count('async_copy_global_to_local') + compiled.asm['ttgir'].count('async_tma_copy'),
        'vector_accesses': len(re.findall(r'(?:ld|st)\.global(?:\.[a-z0-9]+)*\.v4\.', ptx)),
        'compile_s': seconds, 'triton': triton.__version__,
    }


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per (kernel, tile configuration)."""
    if os.environ.get('TRITON_INTERPRET', '0') == '1':
        raise SystemExit('the kernels case inspects compiled code: unset TRITON_INTERPRET')
    from t5composer.models.bias_attention_kernels import RAW, TILES

    jobs = [(name, tile, lambda name=name, tile=tile: attention_report(RAW[name], name, tile, arch=args.kernels_arch,
                                                                       head_dim=args.kernels_head_dim))
            for name, tiles in TILES.items() for tile in tiles]
    jobs.append(('adamwscale', None, lambda: optimizer_report(arch=args.kernels_arch)))
    rows = []
    for name, tile, report in jobs:
        try:
            rows.append(report())
        except Exception as e:  # report and go on: one configuration failing says something too
            rows.append({'kernel': name, 'tile': list(tile) if tile else None, 'arch': args.kernels_arch,
                         'error': f'{type(e).__name__}: {e}'[:300]})
        print(f'  [kernels] {rows[-1]}', flush=True)
    return rows
