"""The worker's CPU threads per job: the usable CPUs (affinity, cgroup quota) split between the
jobs one worker process trains at once, or TORCH_THREADS."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from sqlalchemy import text

from jobs.settings import Settings, get_settings
from worker.cpus import (
    available_cpus,
    cgroup_cpu_quota,
    job_slots_sharing_cpus,
    threads_per_job,
)
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


def test_job_slots_count_the_live_workers_that_share_these_cpus() -> None:
    affinities = {10: {0, 1}, 11: {2, 3}, 12: {1}, 13: set()}

    def affinity_of(pid: int) -> set[int]:
        if pid not in affinities:
            raise ProcessLookupError(pid)  # a stale row: the process is gone
        return affinities[pid]

    def slots(peers: list[tuple[int, int]]) -> int:
        return job_slots_sharing_cpus(
            peers, own_pid=1, own_concurrency=2, own_cpus={0, 1}, affinity_of=affinity_of
        )

    assert slots([]) == 2
    assert slots([(1, 2)]) == 2  # its own row is not counted twice
    assert slots([(10, 1), (12, 3)]) == 6  # both overlap CPUs 0-1
    assert slots([(11, 4)]) == 2  # pinned to other CPUs: no competition
    assert slots([(99, 4), (13, 1)]) == 2  # gone, or no CPUs in common
    assert slots([(10, 0)]) == 3  # a row says 0: still a job slot


def test_the_worker_splits_the_cpus_with_the_other_workers_on_this_machine(
    configure, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four single-job worker processes on one machine each train with a quarter of its CPUs
    (at least one thread), not each with all of them."""
    import socket
    import subprocess
    import sys
    from datetime import timedelta

    from jobs.db import session_scope
    from jobs.tables import utcnow
    from jobs.workers import worker_heartbeat

    configure(database_url, WORKER_CONCURRENCY="1")
    monkeypatch.delenv("TORCH_THREADS", raising=False)
    peers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in "abc"]
    try:
        with session_scope() as session:
            for number, peer in enumerate(peers):
                worker_heartbeat(session, f"peer-{number}", concurrency=1, started_at=utcnow())
                session.execute(
                    text("UPDATE workers SET pid = :pid WHERE name = :name"),
                    {"pid": peer.pid, "name": f"peer-{number}"},
                )
            # A worker on another machine, and one not heard from for long: neither counts.
            worker_heartbeat(session, "elsewhere", concurrency=8, started_at=utcnow())
            worker_heartbeat(session, "silent", concurrency=8, started_at=utcnow())
            session.execute(
                text("UPDATE workers SET hostname = 'other-host' WHERE name = 'elsewhere'")
            )
            session.execute(
                text("UPDATE workers SET heartbeat_at = :old WHERE name = 'silent'"),
                {"old": utcnow() - timedelta(hours=1)},
            )
        threads, why = job_cpu_threads(get_settings())
        assert "shared by 4 job slots" in why, why
        assert threads == threads_per_job(available_cpus(), 4)
        assert socket.gethostname()  # the rows above were recorded under this machine's name
    finally:
        for peer in peers:
            peer.kill()
            peer.wait()
    # The peers are gone: their rows no longer count.
    assert "shared by 1 job slots" in job_cpu_threads(get_settings())[1]


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


def test_a_resumed_job_keeps_its_threads_unless_torch_threads_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TORCH_THREADS", raising=False)
    kept = (5, "kept from the checkpoint it resumes from")
    assert job_cpu_threads(Settings(_env_file=None), resumed_with=5) == kept
    monkeypatch.setenv("TORCH_THREADS", "3")
    assert job_cpu_threads(Settings(_env_file=None), resumed_with=3) == (3, "TORCH_THREADS")
    threads, why = job_cpu_threads(Settings(_env_file=None), resumed_with=5)
    assert threads == 3 and why.startswith("TORCH_THREADS, not the 5 of the checkpoint"), why
