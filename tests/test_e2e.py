"""End to end: the API under uvicorn and a real Celery worker process (not eager mode), on the
embedded default (SQLite + SQLite broker) and on Redis + PostgreSQL."""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path

import httpx
import pytest
import torch

from tests.conftest import service_environment
from tests.support import free_port, start_api, start_worker, wait_for, wait_for_status
from worker.cpus import available_cpus, threads_per_job

pytestmark = pytest.mark.e2e

SMALL_JOB = {
    "block": "mobile",
    "dataset": "cifar100",
    "hyperparameters": {"epochs": 2, "batch_size": 32, "seed": 7},
    "train_samples": 96,
    "test_samples": 48,
    "name": "e2e",
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_small_job_end_to_end(env: dict[str, str], tmp_path: Path) -> None:
    from jobs.migrations import upgrade

    upgrade(env["DATABASE_URL"])
    port = free_port()
    api_process = start_api(env, tmp_path, port)
    worker = start_worker(env, tmp_path)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as api:
            response = api.post("/jobs", json=SMALL_JOB)
            assert response.status_code == 202, response.text
            job = response.json()
            assert response.headers["location"] == f"/jobs/{job['id']}"
            assert job["params"] == 1_326_052 and round(job["macs"] / 1e9, 2) == 0.07

            job = wait_for_status(api, job["id"], ("succeeded", "failed"))
            assert job["status"] == "succeeded", (job, worker.output())
            assert job["epochs_done"] == job["epochs_total"] == 2
            assert job["attempt"] == 1

            metrics = api.get(f"/jobs/{job['id']}/metrics").json()["metrics"]
            assert [row["epoch"] for row in metrics] == [1, 2]
            for row in metrics:
                assert 0.0 <= row["test_accuracy"] <= 1.0 and row["train_loss"] > 0
            assert job["final_test_accuracy"] == metrics[-1]["test_accuracy"]
            later = api.get(f"/jobs/{job['id']}/metrics", params={"since_epoch": 1}).json()
            assert [row["epoch"] for row in later["metrics"]] == [2]

            for plot in ("loss.png", "accuracy.png"):
                image = api.get(f"/jobs/{job['id']}/plots/{plot}")
                assert image.status_code == 200
                assert image.headers["content-type"] == "image/png"
                assert image.content.startswith(PNG_SIGNATURE)

            listing = {row["name"]: row for row in api.get(f"/jobs/{job['id']}/checkpoints").json()}
            assert set(listing) == {"latest", "best", "final"}
            assert listing["final"]["epoch"] == 2
            download = api.get(listing["final"]["url"])
            assert download.status_code == 200
            digest = hashlib.sha256(download.content).hexdigest()
            assert digest == listing["final"]["sha256"]
            assert download.headers["etag"] == f'"{digest}"'
            assert len(download.content) == listing["final"]["size_bytes"]

            from engine.checkpoint import load_model_from_checkpoint

            state = torch.load(io.BytesIO(download.content), weights_only=True)
            assert state["block"] == "mobile" and state["epoch"] == 2
            path = tmp_path / "final.pt"
            path.write_bytes(download.content)
            model = load_model_from_checkpoint(path)
            assert sum(p.numel() for p in model.parameters()) == 1_326_052
    finally:
        worker.stop()
        api_process.stop()


def test_job_runs_end_to_end_on_the_embedded_default(tmp_path: Path, dataset_root: Path) -> None:
    env = service_environment(tmp_path, f"sqlite:///{tmp_path / 'jobs.sqlite3'}", dataset_root)
    run_small_job_end_to_end(env, tmp_path)


@pytest.mark.redis
@pytest.mark.postgres
def test_job_runs_end_to_end_on_redis_and_postgres(
    tmp_path: Path, dataset_root: Path, redis_url: str, postgres_template: str
) -> None:
    from tests.conftest import _postgres_copy

    for database_url in _postgres_copy(postgres_template):
        env = service_environment(tmp_path, database_url, dataset_root, broker_url=redis_url)
        run_small_job_end_to_end(env, tmp_path)


@pytest.mark.redis
@pytest.mark.postgres
def test_an_idle_worker_starts_a_new_job_at_once_on_redis_and_postgres(
    tmp_path: Path, dataset_root: Path, redis_url: str, postgres_template: str
) -> None:
    """The job's id is sent once the request's transaction has committed, not when the
    SAVEPOINT it was added in is released: a message sent before the commit wakes the idle
    worker, which finds nothing to claim yet, and the job waits a whole lease (here a minute)
    for the reconciler's re-send. SQLite hides it (the worker's claim waits for the writer)."""
    from jobs.migrations import upgrade
    from tests.conftest import _postgres_copy

    for database_url in _postgres_copy(postgres_template):
        env = service_environment(
            tmp_path,
            database_url,
            dataset_root,
            broker_url=redis_url,
            LEASE_SECONDS="60",
            HEARTBEAT_SECONDS="10",
        )
        upgrade(env["DATABASE_URL"])
        port = free_port()
        api_process = start_api(env, tmp_path, port)
        worker = start_worker(env, tmp_path)
        try:
            wait_for(lambda w=worker: " ready." in w.output(), timeout=60, what="the worker")
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as api:
                for attempt in range(3):  # three jobs, each submitted to an idle worker
                    submitted = time.monotonic()
                    response = api.post("/jobs", json={**SMALL_JOB, "name": f"idle {attempt}"})
                    assert response.status_code == 202, response.text
                    job_id = response.json()["id"]
                    wait_for_status(api, job_id, ("running", "succeeded"), timeout=20)
                    waited = time.monotonic() - submitted
                    assert waited < 5, (waited, worker.output())
                    wait_for_status(api, job_id, ("succeeded", "failed"), timeout=120)
        finally:
            worker.stop()
            api_process.stop()


def test_one_worker_trains_several_jobs_at_once(tmp_path: Path, dataset_root: Path) -> None:
    """WORKER_CONCURRENCY=2: one worker process runs two jobs at the same time, each to the end
    with all its epochs and half the CPUs, and a third waits for a free slot."""
    from datetime import datetime

    from jobs.migrations import upgrade

    env = service_environment(
        tmp_path, f"sqlite:///{tmp_path / 'jobs.sqlite3'}", dataset_root, WORKER_CONCURRENCY="2"
    )
    upgrade(env["DATABASE_URL"])
    port = free_port()
    api_process = start_api(env, tmp_path, port)
    worker = start_worker(env, tmp_path, name="pair")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as api:
            spec = {**SMALL_JOB, "hyperparameters": {"epochs": 3, "batch_size": 32, "seed": 7}}
            ids = [
                api.post("/jobs", json={**spec, "name": f"job {n}"}).json()["id"] for n in range(3)
            ]
            jobs = [wait_for_status(api, job_id, ("succeeded", "failed")) for job_id in ids]
            for job in jobs:
                assert job["status"] == "succeeded", (job, worker.output())
                assert job["worker"] == "pair" and job["attempt"] == 1
                metrics = api.get(f"/jobs/{job['id']}/metrics").json()["metrics"]
                assert [row["epoch"] for row in metrics] == [1, 2, 3]
            spans = [
                (datetime.fromisoformat(j["started_at"]), datetime.fromisoformat(j["finished_at"]))
                for j in jobs
            ]
            # The first two overlapped; the third started only once one of them had finished.
            assert spans[1][0] < spans[0][1] and spans[0][0] < spans[1][1], spans
            assert spans[2][0] >= min(spans[0][1], spans[1][1]), spans
            # Same spec and seed: the same numbers whether trained alone or beside another job.
            first, second = (
                api.get(f"/jobs/{job_id}/metrics").json()["metrics"] for job_id in ids[:2]
            )
            assert [r["train_loss"] for r in first] == [r["train_loss"] for r in second]
        # Each job trained with its share of the CPUs, not a thread per core.
        threads = threads_per_job(available_cpus(), 2)
        log = worker.log_path.read_text(errors="replace")
        for job_id in ids:
            assert f"job {job_id} attempt 1 trains with {threads} CPU threads" in log, log[-3000:]
    finally:
        worker.stop()
        api_process.stop()
