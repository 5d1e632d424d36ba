"""The worker's CPU threads per job: the usable CPUs (affinity, cgroup quota) split between the
jobs one worker process trains at once, or TORCH_THREADS."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from jobs.settings import Settings
from worker.cpus import available_cpus, cgroup_cpu_quota, threads_per_job
from worker.runner import job_cpu_threads


@pytest.mark.parametrize(
    ("cpus", "concurrency", "override", "threads"),
    [
        (16, 1, 0, 16),  # one job: every CPU
        (16, 2, 0, 8),
        (16, 3, 0, 5),  # rounded down: no two jobs share a CPU
        (16, 16, 0, 1),
        (2, 4, 0, 1),  # more jobs than CPUs: still one thread each
        (1, 1, 0, 1),
        (16, 2, 3, 3),  # TORCH_THREADS wins, either way
        (2, 1, 8, 8),
    ],
)
def test_threads_per_job(cpus: int, concurrency: int, override: int, threads: int) -> None:
    assert threads_per_job(cpus, concurrency, override) == threads


def test_available_cpus_follow_the_affinity_mask(tmp_path: Path) -> None:
    no_cgroup = tmp_path / "missing"
    assert available_cpus(affinity={0, 1, 2, 5}, proc_cgroup=no_cgroup) == 4

    # The real mask, narrowed for one thread the way taskset narrows a process (on Linux,
    # sched_setaffinity(0) is the calling thread's).
    seen: list[int] = []

    def narrowed() -> None:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        seen.append(available_cpus(proc_cgroup=no_cgroup))

    thread = threading.Thread(target=narrowed)
    thread.start()
    thread.join()
    assert seen == [1]
    assert available_cpus(proc_cgroup=no_cgroup) == len(os.sched_getaffinity(0))


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_cgroup_v2_quota_caps_the_cpus(tmp_path: Path) -> None:
    root, proc = tmp_path / "cgroup", tmp_path / "proc-self-cgroup"
    write(proc, "0::/workers/gpu0\n")
    write(root / "workers" / "gpu0" / "cpu.max", "max 100000\n")
    write(root / "workers" / "cpu.max", "250000 100000\n")  # a parent's limit counts too
    assert cgroup_cpu_quota(root, proc) == 2.5
    assert available_cpus(affinity=set(range(8)), cgroup_root=root, proc_cgroup=proc) == 2
    assert available_cpus(affinity={0}, cgroup_root=root, proc_cgroup=proc) == 1

    write(root / "workers" / "gpu0" / "cpu.max", "50000 100000\n")  # half a CPU: still one
    assert available_cpus(affinity=set(range(8)), cgroup_root=root, proc_cgroup=proc) == 1


def test_a_cgroup_v1_quota_caps_the_cpus_and_minus_one_is_none(tmp_path: Path) -> None:
    root, proc = tmp_path / "cgroup", tmp_path / "proc-self-cgroup"
    # A container without a cgroup namespace: its host's path, but only its own cgroup mounted.
    write(proc, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "300000\n")
    write(root / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(root, proc) == 3.0
    assert available_cpus(affinity=set(range(8)), cgroup_root=root, proc_cgroup=proc) == 3

    write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")
    assert cgroup_cpu_quota(root, proc) is None
    assert available_cpus(affinity=set(range(8)), cgroup_root=root, proc_cgroup=proc) == 8


def test_no_cgroup_files_means_no_quota(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path, tmp_path / "missing") is None
    write(tmp_path / "proc", "0::/\n")
    assert cgroup_cpu_quota(tmp_path / "cgroup", tmp_path / "proc") is None


def test_the_worker_reads_torch_threads_and_worker_concurrency(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORKER_CONCURRENCY", "2")
    monkeypatch.delenv("TORCH_THREADS", raising=False)
    threads, why = job_cpu_threads(Settings(_env_file=None))
    assert threads == threads_per_job(available_cpus(), 2)
    assert "WORKER_CONCURRENCY=2" in why

    monkeypatch.setenv("TORCH_THREADS", "3")
    assert job_cpu_threads(Settings(_env_file=None)) == (3, "TORCH_THREADS")
    monkeypatch.setenv("TORCH_THREADS", "0")  # 0 is automatic, as unset
    assert job_cpu_threads(Settings(_env_file=None))[0] == threads_per_job(available_cpus(), 2)
    monkeypatch.setenv("TORCH_THREADS", "-1")
    with pytest.raises(ValueError, match="torch_threads"):
        Settings(_env_file=None)
