"""How many CPU threads torch computes with, and how its idle OpenMP threads wait. Torch-free: the
wait policy has to be in the environment before torch loads its OpenMP runtime (`yield_idle_threads`).

torch's pip wheels bundle GNU libgomp (torch/lib/libgomp.so.1; Intel's libiomp in some conda builds).
Both read the standard OMP_WAIT_POLICY once, when they load; PASSIVE makes a thread that has finished
its share of a parallel region sleep at once, where by default libgomp spins for about 300 000
iterations first, taking a core that a thread of another process needed.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Collection, MutableMapping, Optional

# The CPU quota of this process's cgroup: v2's one file "<quota> <period>" ("max" for none), v1's two.
CGROUP_CPU_MAX = Path('/sys/fs/cgroup/cpu.max')
CGROUP_V1_QUOTA = Path('/sys/fs/cgroup/cpu/cpu.cfs_quota_us')
CGROUP_V1_PERIOD = Path('/sys/fs/cgroup/cpu/cpu.cfs_period_us')
# A thread count the user set: torch (OpenMP, MKL) reads these, and a --threads-less run keeps them.
USER_THREAD_VARIABLES = ('OMP_NUM_THREADS', 'MKL_NUM_THREADS')


def cgroup_cpus(cpu_max: Path = CGROUP_CPU_MAX, v1_quota: Path = CGROUP_V1_QUOTA,
                v1_period: Path = CGROUP_V1_PERIOD) -> Optional[int]:
    """The whole CPUs that the cgroup quota allows (at least 1), or None without a quota.

    Rounded down: threads beyond the quota exhaust it early in each period, and the whole process then
    waits for the next one (1.5 CPUs: 2 threads are stopped for a quarter of every period)."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota, period = v1_quota.read_text().strip(), v1_period.read_text().strip()
        except OSError:
            return None
    if quota == 'max' or int(quota) <= 0:  # v1 writes -1 for no quota
        return None
    return max(1, math.floor(int(quota) / int(period)))


def usable_cpus(affinity: Optional[Collection[int]] = None, quota_cpus: Optional[int] = None) -> int:
    """The CPUs this process may run on: its affinity mask (`taskset`, a batch scheduler's cpuset)
    and its cgroup quota (a container's --cpus), the fewer of the two."""
    if affinity is None:
        affinity = os.sched_getaffinity(0) if hasattr(os, 'sched_getaffinity') else range(os.cpu_count() or 1)
    return min(len(affinity), quota_cpus) if quota_cpus is not None else max(1, len(affinity))


def chosen_threads(requested: Optional[int], environ: Optional[MutableMapping[str, str]] = None) -> Optional[int]:
    """torch's intra-op thread count: --threads if given, else None (torch keeps the user's
    OMP_NUM_THREADS or MKL_NUM_THREADS) where one is set, else the usable CPUs (torch's own default
    counts every core of the machine, whatever the affinity or quota)."""
    environ = os.environ if environ is None else environ
    if requested is not None:
        return requested
    if any(environ.get(name) for name in USER_THREAD_VARIABLES):
        return None
    return usable_cpus(quota_cpus=cgroup_cpus())


def yield_idle_threads(environ: Optional[MutableMapping[str, str]] = None) -> None:
    """OMP_WAIT_POLICY=PASSIVE unless the user set a policy: idle threads then leave their cores to other
    processes (our own speed did not change measurably either way: README "Speed"). Only effective
    before torch is imported."""
    environ = os.environ if environ is None else environ
    environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
