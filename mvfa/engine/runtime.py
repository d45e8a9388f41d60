"""Where and how a run computes: the device, the precision, and the process-wide settings they need.

`pick_device` and `resolve_precision` only decide; `configure_backends` is the one call that
changes process-wide state (float modes, cuDNN, malloc, CPU threads), made once by a script's session.
"""
from __future__ import annotations

import ctypes
import platform
from typing import Optional

import torch

from mvfa.common.errors import UserError
from mvfa.common.threads import chosen_threads

# glibc's mallopt parameters (malloc.h): never serve allocations by mmap, never trim the heap.
M_MMAP_MAX, M_TRIM_THRESHOLD = -4, -1


class DeviceError(UserError):
    """The device asked for does not exist here; the message says what does."""


def pick_device(name: Optional[str]) -> torch.device:
    """The device asked for ('cuda', 'cuda:1', 'mps', 'cpu'), else CUDA, MPS or the CPU, in that order."""
    if not name:
        if torch.cuda.is_available():
            return torch.device('cuda')
        return torch.device('mps' if torch.backends.mps.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown --device '{name}': use cuda, mps or cpu") from None
    available = {'cpu': True, 'cuda': torch.cuda.is_available(), 'mps': torch.backends.mps.is_available()}
    if not available.get(device.type, False):
        raise DeviceError(f"--device {name} is not available on this machine: use "
                          f"{' or '.join(kind for kind, present in available.items() if present)}")
    if device.type == 'cuda' and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f'--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)')
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` is fp16 on CUDA, as the authors ran, and fp32 elsewhere; other values stay."""
    if precision != 'auto':
        return precision
    return 'fp16' if device.type == 'cuda' else 'fp32'


def configure_backends(device: torch.device, precision: str, threads: Optional[int] = None) -> None:
    """Process-wide settings for a run on `device` at `precision`.

    - torch's CPU threads: `threads` (--threads), else the user's OMP_NUM_THREADS or
      MKL_NUM_THREADS, else the CPUs this process may use (`mvfa.common.threads.chosen_threads`).

    - fp32 means fp32: no TF32 in CUDA matrix products or cuDNN convolutions (their defaults
      differ, and cuDNN picks other algorithms at other batch sizes, so scores would depend on it).
    - Denormal floats flushed to zero: adapter training produces some, and CPU arithmetic on
      them is several times slower (a ViT-L training step went from 1.3 s to 9 s); numbers below
      1e-38 change no score.
    - On the CPU, freed memory is kept for reuse (`reuse_freed_memory`).
    """
    count = chosen_threads(threads)
    if count is not None:
        torch.set_num_threads(count)
    exact = precision == 'fp32'
    torch.backends.cuda.matmul.allow_tf32 = not exact
    torch.backends.cudnn.allow_tf32 = not exact
    torch.set_flush_denormal(True)
    if device.type == 'cpu':
        reuse_freed_memory()


def reuse_freed_memory() -> None:
    """Make glibc's malloc keep freed memory for the next tensors instead of returning it.

    By default it maps every large tensor afresh and unmaps it when freed, so each batch pays a
    page fault per 4 KiB to get zeroed memory back: a ViT-L forward of 8 images on a 2-core CPU
    spent 3.2 of its 7 s there. The process then stays at its peak memory, as it would with
    jemalloc or tcmalloc. Other C libraries are left alone.
    """
    if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
        return
    libc = ctypes.CDLL(None)
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1)
