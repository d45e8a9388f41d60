"""What a run cost, for the `cost` of its results file: the wall time, the device, the peak memory and the
throughput of the evaluation whose scores the file holds.

The wall time runs from the Session's creation to the results file's write. The peak memory is the
device's (torch.cuda.max_memory_allocated, counted from the Session's creation) on CUDA, else the
process's peak resident set (ru_maxrss, since the process started: a script run in-process by
reproduce.py reports the largest run so far).
"""
from __future__ import annotations

import platform
import resource
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from mvfa.engine.evaluation import Evaluation

CPU_INFO = Path('/proc/cpuinfo')


def cpu_model() -> Optional[str]:
    """The CPU's model name, where it is cheaply known (Linux's /proc/cpuinfo, else `platform.processor`)."""
    if CPU_INFO.is_file():
        for line in CPU_INFO.read_text(errors='replace').splitlines():
            key, _, value = line.partition(':')
            if key.strip() == 'model name' and value.strip():
                return value.strip()
    return platform.processor() or None


def device_name(device: torch.device) -> str:
    """'cuda:0 NVIDIA H200', or the device type and the CPU model ('cpu Intel(R) Xeon(R) Processor')."""
    if device.type == 'cuda':
        index = torch.cuda.current_device() if device.index is None else device.index
        return f'cuda:{index} {torch.cuda.get_device_name(index)}'
    model = cpu_model()
    return device.type if model is None else f'{device.type} {model}'


def peak_memory(device: torch.device) -> Tuple[int, str]:
    """(bytes, what they measure): the tensors' peak on a CUDA device, else the process's peak resident set."""
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device), 'device'
    # ru_maxrss is in bytes on macOS, in kilobytes elsewhere.
    unit = 1 if sys.platform == 'darwin' else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit, 'host RSS'


class RunCost:
    """A run's clock and device, started with its Session; `record` is the results file's `cost`."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.started = time.perf_counter()
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(device)

    def record(self, evaluation: Evaluation) -> Dict:
        """The cost so far, with the throughput of `evaluation` (its `seconds`: None for an evaluation
        kept by a resume state written before evaluations were timed)."""
        wall_time = time.perf_counter() - self.started
        memory, measured = peak_memory(self.device)
        images, seconds = len(evaluation.labels), evaluation.seconds
        return {'wall_time_s': wall_time, 'device': device_name(self.device), 'peak_memory_bytes': memory,
                'peak_memory_of': measured, 'test_images': images, 'test_seconds': seconds,
                'test_images_per_s': None if not seconds else images / seconds}
