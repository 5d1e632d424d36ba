"""How many CPU threads each training job of this worker process gets.

PyTorch gives every job a thread per core of the machine by default. Several jobs in one
process (WORKER_CONCURRENCY > 1), several worker processes on one machine, or other busy
processes then run more threads than there are cores, and each parallel operation waits at its
end for whichever of its threads was preempted: four single-job workers on 2 cores with 2
threads each trained a tiny job 11 times slower than one worker alone (docs/benchmarks.md). So
the worker splits the CPUs it may use between the job slots of every live worker process on
this machine whose CPUs overlap its own. No torch here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
# Reads one cgroup directory's quota, in CPUs.
_Reader = Callable[[Path], "float | None"]


def threads_per_job(cpus: int, concurrency: int, override: int = 0) -> int:
    """``override`` when positive (TORCH_THREADS); otherwise the usable CPUs split evenly
    between the jobs trained at once, rounded down (a spare CPU is better than two jobs
    fighting over one), at least 1."""
    if override > 0:
        return override
    return max(1, cpus // max(1, concurrency))


def job_slots_sharing_cpus(
    peers: list[tuple[int, int]],
    *,
    own_pid: int,
    own_concurrency: int,
    own_cpus: set[int],
    affinity_of: Callable[[int], set[int]] = os.sched_getaffinity,
) -> int:
    """The job slots that compete for this process's CPUs: its own WORKER_CONCURRENCY plus that
    of each other live worker process (`peers`: pid, concurrency, from the workers' heartbeats
    on this machine) whose affinity overlaps ``own_cpus``. A pid that is gone or cannot be
    looked at (another PID namespace) is not counted."""
    slots = max(1, own_concurrency)
    for pid, concurrency in peers:
        if pid == own_pid:
            continue
        try:
            shared = affinity_of(pid) & own_cpus
        except OSError:  # no such process (a stale row), or not ours to inspect
            continue
        if shared:
            slots += max(1, concurrency)
    return slots


def available_cpus(
    *,
    affinity: set[int] | None = None,
    cgroup_root: Path = CGROUP_ROOT,
    proc_cgroup: Path = PROC_SELF_CGROUP,
) -> int:
    """The CPUs this process may run on: its affinity mask (taskset, cgroup cpusets), capped by
    a cgroup CPU quota (``docker --cpus``, Kubernetes CPU limits) rounded down, at least 1."""
    cpus = len(affinity if affinity is not None else os.sched_getaffinity(0))
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return max(1, cpus)


def cgroup_cpu_quota(
    cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP
) -> float | None:
    """The tightest CPU quota, in CPUs, of this process's cgroup and its ancestors (cgroup v2
    ``cpu.max`` or v1 ``cpu.cfs_quota_us``); None when there is none or it cannot be read."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            mounts, reader = [cgroup_root], _v2_quota
        elif "cpu" in controllers.split(","):
            mounts = [cgroup_root / "cpu", cgroup_root / "cpu,cpuacct"]
            reader = _v1_quota
        else:
            continue
        for mount in mounts:
            quotas.extend(_quotas_up_from(mount, path, reader))
    return min(quotas, default=None)


def _quotas_up_from(mount: Path, path: str, reader: _Reader) -> list[float]:
    # Without a cgroup namespace a container sees its host's path for its cgroup but has only
    # its own cgroup mounted, so every directory from the full path up to the mount is tried.
    names = [name for name in path.split("/") if name and name not in (".", "..")]
    found = []
    for depth in range(len(names), -1, -1):
        quota = reader(mount.joinpath(*names[:depth]))
        if quota is not None:
            found.append(quota)
    return found


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _v2_quota(directory: Path) -> float | None:
    text = _read(directory / "cpu.max")  # "max 100000" or "<quota> <period>" in microseconds
    if text is None:
        return None
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _ratio(fields[0], fields[1])


def _v1_quota(directory: Path) -> float | None:
    quota = _read(directory / "cpu.cfs_quota_us")  # -1: no quota
    period = _read(directory / "cpu.cfs_period_us")
    if quota is None or period is None:
        return None
    return _ratio(quota, period)


def _ratio(quota: str, period: str) -> float | None:
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return quota_us / period_us
