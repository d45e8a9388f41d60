"""Timing and peak memory of work on a device: what the benchmarks read, and nothing of MVFA."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional, Tuple, TypeVar

import torch
from torch import Tensor

from CLIP.adapter import MultiLevelAdaptedCLIP

MIB = 1 << 20
Result = TypeVar('Result')


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so a timer reads the work done, not the work launched."""
    if device.type != 'cpu':
        torch.accelerator.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type != 'cpu':
        torch.accelerator.reset_peak_memory_stats(device)
    elif Path('/proc/self/clear_refs').exists():
        Path('/proc/self/clear_refs').write_text('5')  # Linux: reset VmHWM to the current resident size


def proc_status_bytes(field: str) -> Optional[int]:
    """A memory field of /proc/self/status in bytes (None off Linux)."""
    status = Path('/proc/self/status')
    if not status.exists():
        return None
    line = next(line for line in status.read_text().splitlines() if line.startswith(field + ':'))
    return int(line.split()[1]) * 1024  # the kernel reports kB


def memory_in_use(device: torch.device) -> Optional[int]:
    """Allocated accelerator memory, or the process's resident set on the CPU (None where unknown)."""
    return torch.accelerator.memory_allocated(device) if device.type != 'cpu' else proc_status_bytes('VmRSS')


def peak_memory(device: torch.device) -> Optional[int]:
    return torch.accelerator.max_memory_allocated(device) if device.type != 'cpu' else proc_status_bytes('VmHWM')


def timed(device: torch.device, work: Callable[[], Result]) -> Tuple[Result, float]:
    """`work()` and the seconds it took."""
    synchronize(device)
    start = time.perf_counter()
    result = work()
    synchronize(device)
    return result, time.perf_counter() - start


def peak_above_start(device: torch.device, work: Callable[[], Result]) -> Tuple[Result, Optional[float]]:
    """`work()` and its peak memory in MiB above the level it started at.

    On the CPU that is the resident set, which freed memory kept for reuse stays in: so each
    measured phase should run in a fresh process.
    """
    synchronize(device)
    reset_peak_memory(device)
    start_memory = memory_in_use(device)
    result = work()
    synchronize(device)
    peak = peak_memory(device)
    return result, None if peak is None or start_memory is None else (peak - start_memory) / MIB


@torch.inference_mode()
def batched_throughput(model: MultiLevelAdaptedCLIP, forward: Callable[[Tensor], object], images: Tensor,
                       batch_size: int) -> float:
    """Images per second of `forward` over `images` in batches at the model's precision, after one
    batch of warm-up."""
    batches = [batch.to(model.device) for batch in images.split(batch_size)]
    with model.autocast():
        forward(batches[0])
        _, seconds = timed(model.device, lambda: [forward(batch) for batch in batches])
    return len(images) / seconds
