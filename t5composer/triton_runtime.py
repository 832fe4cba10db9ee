"""Where this project's Triton kernels run: on CUDA, or on a CPU in Triton's interpreter (tests).

``triton.jit`` reads ``TRITON_INTERPRET`` when a function is decorated, so a process runs the
kernels one way; the kernel modules record which at import.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os

import torch

__all__ = ['on_device_of', 'interpreting', 'require_mode', 'triton_problem']


def interpreting() -> bool:
    """Triton's interpreter is on (``TRITON_INTERPRET=1``): kernels run on CPU tensors, slowly."""
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


def triton_problem(device: torch.device | str) -> str | None:
    """Why our Triton kernels cannot run on ``device``, or None if they can.

    Args:
        device: where the tensors live.
    """
    if importlib.util.find_spec('triton') is None:
        return 'it needs the triton package (installed with the CUDA build of torch)'
    kind = torch.device(device).type
    if kind != 'cuda' and not interpreting():
        return f'its kernels run on CUDA (a CPU only under TRITON_INTERPRET=1, for tests), not {kind}'
    return None


def require_mode(interpreted: bool, what: str) -> None:
    """Refuse to launch kernels decorated in another mode than ``TRITON_INTERPRET`` now asks for.

    Args:
        interpreted: the kernel module's ``INTERPRET``, recorded when it was imported.
        what: the kernels, for the message.
    """
    if interpreted != interpreting():
        loaded = 'interpreted' if interpreted else 'compiled'
        raise RuntimeError(f'{what} were loaded {loaded}, and TRITON_INTERPRET has changed since; one process runs them one way.')


def on_device_of(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Launch on ``tensor``'s GPU: Triton launches on the current device, which need not be it."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()
