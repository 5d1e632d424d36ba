"""Failure tests with real processes: workers SIGKILLed, Redis and the API restarted, duplicate
deliveries, poison jobs, cancels, missing data and timeouts."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import service_environment
from tests.support import (
    Process,
    free_port,
    start_api,
    start_redis,
    start_worker,
    wait_for,
    wait_for_status,
)

pytestmark = pytest.mark.e2e

JOB = {
    "block": "mobile",
    "hyperparameters": {"epochs": 3, "batch_size": 32, "seed": 11},
    "train_samples": 160,
    "test_samples": 32,
}
TIMING_FIELDS = {"seconds", "images_per_second"}


class Service:
    """An API process and its workers on one database and broker."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        from jobs.migrations import upgrade

        upgrade(env["DATABASE_URL"])
        self.env = env
        self.log_dir = log_dir
        self.port = free_port()
        self.api_process = start_api(env, log_dir, self.port)
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        self.workers: list[Process] = []

    def start_worker(self) -> Process:
        worker = start_worker(self.env, self.log_dir, name=f"worker{len(self.workers) + 1}")
        self.workers.append(worker)
        return worker

    def restart_api(self) -> None:
        self.api_process.kill()
        self.api_process = start_api(self.env, self.log_dir, self.port)

    def submit(self, spec: dict) -> int:
        response = self.api.post("/jobs", json=spec)
        assert response.status_code == 202, response.text
        return int(response.json()["id"])

    def job(self, job_id: int) -> dict:
        return self.api.get(f"/jobs/{job_id}").json()

    def metrics(self, job_id: int) -> list[dict]:
        return self.api.get(f"/jobs/{job_id}/metrics").json()["metrics"]

    def logs(self) -> str:
        return "\n".join(f"--- {w.log_path.name}\n{w.output()}" for w in self.workers)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.api.close()
        self.api_process.stop()


@contextmanager
def service(
    tmp_path: Path, dataset_root: Path, broker_url: str | None = None, **settings: str
) -> Iterator[Service]:
    env = service_environment(
        tmp_path, f"sqlite:///{tmp_path / 'jobs.sqlite3'}", dataset_root, broker_url, **settings
    )
    running = Service(env, tmp_path)
    try:
        yield running
    finally:
        running.close()


def send_again(env: dict[str, str], job_id: int, *, copies: int) -> None:
    """Deliver the job's message more times, as a broker redelivery or a client retry would."""
    from jobs.queue import RUN_JOB_TASK, TRAINING_QUEUE, make_celery
    from jobs.settings import Settings

    settings = Settings(
        var_dir=Path(env["VAR_DIR"]), celery_broker_url=env.get("CELERY_BROKER_URL")
    )
    celery = make_celery(settings)
    for _ in range(copies):
        celery.send_task(RUN_JOB_TASK, args=[job_id], queue=TRAINING_QUEUE)


def without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in rows]


def test_sigkill_mid_epoch_resumes_to_the_same_result(tmp_path: Path, dataset_root: Path) -> None:
    with service(tmp_path, dataset_root) as svc:
        worker = svc.start_worker()
        killed = svc.submit(JOB)
        wait_for(lambda: svc.job(killed)["epochs_done"] >= 1, timeout=180, what="the first epoch")
        # Epoch 1's file is written in the background while epoch 2 trains; kill once it is
        # recorded, so the next attempt has a checkpoint to resume from.
        wait_for(
            lambda: svc.api.get(f"/jobs/{killed}/checkpoints").json(),
            timeout=120,
            what="the first checkpoint to be recorded",
        )
        assert svc.job(killed)["epochs_done"] == 1, "the kill should land mid-epoch"
        worker.kill()
        assert svc.job(killed)["status"] == "running"

        svc.start_worker()
        job = wait_for_status(svc.api, killed, ("succeeded", "failed"), timeout=240)
        assert job["status"] == "succeeded", svc.logs()
        assert job["attempt"] == 2
        resumed_metrics = svc.metrics(killed)
        assert [row["epoch"] for row in resumed_metrics] == [1, 2, 3]
        assert f"job {killed} resuming from" in svc.logs() and "attempt-1" in svc.logs()

        straight = svc.submit(JOB)
        assert wait_for_status(svc.api, straight, ("succeeded", "failed"))["status"] == "succeeded"
        straight_metrics = svc.metrics(straight)
        assert svc.job(straight)["attempt"] == 1
        # On CPU with a fixed seed, resuming from the epoch-1 checkpoint changes nothing.
        assert without_timings(resumed_metrics) == without_timings(straight_metrics)


def test_sigkill_after_the_last_epoch_before_its_checkpoint_is_recorded(
    tmp_path: Path, dataset_root: Path
) -> None:
    """The last epoch's metrics are recorded, its file is on disk but not yet in the database
    when the worker dies: the next attempt must end with every epoch and a `final` checkpoint
    of the last epoch whose bytes match the listed sha256."""
    # The plain net's checkpoint (about 90 MB) takes a few tenths of a second to write and hash:
    # a window this test can land in by watching the database.
    spec = {
        "block": "plain",
        "hyperparameters": {"epochs": 3, "batch_size": 16, "seed": 5},
        "train_samples": 32,
        "test_samples": 16,
    }
    with service(tmp_path, dataset_root) as svc:
        worker = svc.start_worker()
        job_id = svc.submit(spec)
        watcher = sqlite3.connect(tmp_path / "jobs.sqlite3", isolation_level=None, timeout=30)
        try:

            def last_epoch_recorded() -> bool:
                row = watcher.execute("SELECT epochs_done FROM jobs WHERE id = ?", (job_id,))
                return int(row.fetchone()[0]) >= 3

            wait_for(last_epoch_recorded, timeout=300, interval=0.005, what="epoch 3's row")
            watcher.execute("BEGIN IMMEDIATE")  # the worker can record nothing more
            recorded = watcher.execute(
                "SELECT epoch FROM checkpoint_files WHERE job_id = ?", (job_id,)
            ).fetchall()
            assert (3,) not in recorded, "epoch 3's checkpoint was recorded before the lock"
            orphan = tmp_path / "var" / "artifacts" / "jobs" / str(job_id) / "attempt-1"
            wait_for(
                lambda: (orphan / "epoch-0003.pt").exists(),
                timeout=60,
                interval=0.05,
                what="epoch 3's file on disk",
            )
            worker.kill()
        finally:
            watcher.close()  # rolls back: the lock is released

        job = svc.job(job_id)
        assert job["status"] == "running" and job["epochs_done"] == 3, job
        svc.start_worker()
        job = wait_for_status(svc.api, job_id, ("succeeded", "failed"), timeout=300)
        assert job["status"] == "succeeded" and job["attempt"] == 2, (job, svc.logs())
        assert [row["epoch"] for row in svc.metrics(job_id)] == [1, 2, 3]
        assert job["final_test_accuracy"] == svc.metrics(job_id)[-1]["test_accuracy"]
        listing = {row["name"]: row for row in svc.api.get(f"/jobs/{job_id}/checkpoints").json()}
        assert listing["final"]["epoch"] == 3 and listing["latest"]["epoch"] == 3
        served = svc.api.get(listing["final"]["url"])
        assert served.status_code == 200
        assert hashlib.sha256(served.content).hexdigest() == listing["final"]["sha256"]
        import io

        import torch

        served_state = torch.load(io.BytesIO(served.content), weights_only=True)
        assert served_state["epoch"] == 3


def test_cancel_while_the_worker_stops_on_sigterm_ends_cancelled(
    tmp_path: Path, dataset_root: Path
) -> None:
    """A cancel that commits while the worker is handing the job back on SIGTERM: the job ends
    cancelled, never `queued` with `cancel_requested` (which nothing would ever claim)."""
    from sqlalchemy import text

    from jobs.db import session_scope
    from jobs.lifecycle import cancel_job

    with service(tmp_path, dataset_root) as svc:
        worker = svc.start_worker()
        job_id = svc.submit({**JOB, "hyperparameters": {"epochs": 50, "batch_size": 32}})
        wait_for(lambda: svc.job(job_id)["epochs_done"] >= 1, timeout=180, what="an epoch")
        with session_scope(svc.env["DATABASE_URL"]) as session:
            session.execute(text("SELECT 1"))  # BEGIN IMMEDIATE: the worker's writes wait
            os.killpg(worker.pid, signal.SIGTERM)
            # The worker stops at the next batch (or a write it is making waits for the lock
            # first) and then waits for the lock to hand the job back.
            time.sleep(2)
            assert cancel_job(session, job_id).cancel_requested
        worker.popen.wait(timeout=60)
        job = svc.job(job_id)
        assert job["status"] == "cancelled", (job, svc.logs())
        # Usually the hand-back itself finds the cancel; the lease watcher may see it first.
        assert (
            "cancelled while its worker was stopping" in svc.logs()
            or f"job {job_id} cancelled" in svc.logs()
        ), svc.logs()
        # Nothing re-queues it: a new worker finds no job to run.
        svc.start_worker()
        time.sleep(3)
        assert svc.job(job_id)["status"] == "cancelled"
        assert len(svc.api.get("/jobs", params={"status": "queued"}).json()["items"]) == 0


def test_sigterm_hands_the_job_back_to_the_queue(tmp_path: Path, dataset_root: Path) -> None:
    with service(tmp_path, dataset_root) as svc:
        worker = svc.start_worker()
        job_id = svc.submit(JOB)
        wait_for(lambda: svc.job(job_id)["epochs_done"] >= 1, timeout=180, what="an epoch")
        started = time.monotonic()
        worker.stop(timeout=60)  # SIGTERM: a deploy; the worker must not wait for the job
        assert time.monotonic() - started < 30
        log = worker.output()
        assert log.count("released for another worker") == 1
        # The job's message, sent again as it was released, reaches the stopping worker, which
        # leaves it in the queue: one line saying so, not Celery's traceback of a rejection.
        assert "left in the queue for another worker" in log, log
        assert "Traceback" not in log and "celery.exceptions.Reject" not in log, log
        job = svc.job(job_id)
        assert job["status"] == "queued" and job["attempt"] == 0, job
        svc.start_worker()
        job = wait_for_status(svc.api, job_id, ("succeeded", "failed"))
        assert job["status"] == "succeeded" and job["attempt"] == 1
        assert [row["epoch"] for row in svc.metrics(job_id)] == [1, 2, 3]


@pytest.mark.redis
def test_redis_and_api_restarts_lose_nothing(tmp_path: Path, dataset_root: Path) -> None:
    redis_port = free_port()
    redis = start_redis(redis_port, tmp_path)
    broker = f"redis://127.0.0.1:{redis_port}/0"
    try:
        with service(tmp_path, dataset_root, broker) as svc:
            svc.start_worker()
            first = svc.submit(JOB)
            queued = svc.submit({**JOB, "hyperparameters": {"epochs": 1, "batch_size": 32}})
            wait_for(
                lambda: svc.job(first)["status"] == "running",
                timeout=120,
                what="the first job to start",
            )
            redis.kill()  # the queued job's message is gone with it (Redis keeps nothing)
            redis = start_redis(redis_port, tmp_path)
            svc.restart_api()
            assert svc.job(queued)["status"] == "queued"
            later = svc.submit({**JOB, "hyperparameters": {"epochs": 1, "batch_size": 32}})
            for job_id in (first, queued, later):
                job = wait_for_status(
                    svc.api, job_id, ("succeeded", "failed", "cancelled"), timeout=300
                )
                assert job["status"] == "succeeded", (job, svc.logs())
                assert len(svc.metrics(job_id)) == job["epochs_total"]
    finally:
        redis.kill()


def test_duplicate_delivery_trains_once(tmp_path: Path, dataset_root: Path) -> None:
    with service(tmp_path, dataset_root) as svc:
        job_id = svc.submit({**JOB, "hyperparameters": {"epochs": 2, "batch_size": 32}})
        send_again(svc.env, job_id, copies=2)
        svc.start_worker()
        job = wait_for_status(svc.api, job_id, ("succeeded", "failed"))
        assert job["status"] == "succeeded" and job["attempt"] == 1
        assert [row["epoch"] for row in svc.metrics(job_id)] == [1, 2]
        wait_for(
            lambda: svc.logs().count("no queued job left to claim") >= 2,
            timeout=30,
            what="both duplicates to be dropped",
        )
        assert svc.logs().count("claimed by") == 1


def test_poison_job_fails_after_its_attempts_and_the_queue_flows(
    tmp_path: Path, dataset_root: Path
) -> None:
    with service(tmp_path, dataset_root, MAX_ATTEMPTS="2") as svc:
        poison = svc.submit(JOB)
        healthy = svc.submit({**JOB, "hyperparameters": {"epochs": 1, "batch_size": 32}})
        for attempt in (1, 2):
            worker = svc.start_worker()
            wait_for(
                lambda a=attempt: (
                    svc.job(poison)["attempt"] == a and svc.job(poison)["status"] == "running"
                ),
                timeout=120,
                what=f"attempt {attempt} to start",
            )
            worker.kill()  # the worker dies every time it runs this job
        svc.start_worker()
        job = wait_for_status(svc.api, poison, ("failed",), timeout=120)
        assert job["error_reason"] == "worker_lost" and job["attempt"] == 2
        assert wait_for_status(svc.api, healthy, ("succeeded", "failed"))["status"] == "succeeded"


def test_cancel_queued_and_running_jobs(tmp_path: Path, dataset_root: Path) -> None:
    with service(tmp_path, dataset_root) as svc:
        long_job = {**JOB, "hyperparameters": {"epochs": 50, "batch_size": 32}}
        running = svc.submit(long_job)
        queued = svc.submit(JOB)
        assert svc.api.post(f"/jobs/{queued}/cancel").json()["status"] == "cancelled"
        svc.start_worker()
        wait_for(lambda: svc.job(running)["epochs_done"] >= 1, timeout=180, what="an epoch")
        response = svc.api.post(f"/jobs/{running}/cancel")
        assert response.status_code == 200 and response.json()["cancel_requested"]
        job = wait_for_status(svc.api, running, ("cancelled", "succeeded", "failed"), timeout=60)
        assert job["status"] == "cancelled" and job["epochs_done"] < 50
        checkpoints = svc.api.get(f"/jobs/{running}/checkpoints").json()
        latest = next(row for row in checkpoints if row["name"] == "latest")
        assert latest["epoch"] == job["epochs_done"]
        assert svc.api.get(latest["url"]).status_code == 200
        assert svc.api.post(f"/jobs/{running}/cancel").json()["status"] == "cancelled"
        # The cancelled queued job never started, even though its message was delivered.
        never = svc.job(queued)
        assert never["status"] == "cancelled" and never["attempt"] == 0
        assert never["started_at"] is None and svc.metrics(queued) == []


def test_missing_dataset_and_timeout_end_failed(tmp_path: Path, dataset_root: Path) -> None:
    with service(tmp_path, dataset_root, MAX_JOB_SECONDS="2") as svc:
        missing = svc.submit({**JOB, "dataset": "cifar10"})
        slow = svc.submit({**JOB, "hyperparameters": {"epochs": 50, "batch_size": 32}})
        svc.start_worker()
        job = wait_for_status(svc.api, missing, ("failed", "succeeded"), timeout=120)
        assert job["error_reason"] == "dataset_unavailable"
        # The API user is told which service settings to change, not server paths.
        assert "ALLOW_DOWNLOAD" in job["error"] and "DATA_DIR" in job["error"]
        assert str(dataset_root) not in job["error"]
        job = wait_for_status(svc.api, slow, ("failed", "succeeded"), timeout=120)
        assert job["error_reason"] == "timeout" and "MAX_JOB_SECONDS" in job["error"]
