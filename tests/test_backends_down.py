"""A backend that is down or does not answer: the API answers 503 JSON with Retry-After within
a few seconds, `/ready` names the backend within its own deadline, and a job whose message
could not be sent is still accepted (202) and sent later.

The end-to-end tests start their own PostgreSQL and Redis (never the shared servers), then stop
or freeze (SIGSTOP) them under a real uvicorn API."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import IN_CI, service_environment
from tests.support import (
    PostgresServer,
    free_port,
    redis_queue_job_ids,
    start_api,
    start_redis,
    wait_for,
)

JOB = {"block": "plain", "hyperparameters": {"epochs": 1}, "train_samples": 50}
# What the API promises when a backend is unavailable; the measured times are well below.
STOPPED_SECONDS = 3.0  # a refused connection fails at once
FROZEN_DATABASE_SECONDS = 12.0  # reply timeout (6 s) + connect timeout (3 s), with slack
FROZEN_BROKER_SECONDS = 6.0  # two publish tries of a 1 s socket timeout each, with slack
READY_SECONDS = 4.0  # its own 2.5 s deadline, with slack


def require_program(*names: str) -> None:
    missing = [name for name in names if shutil.which(name) is None]
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        missing.append("runuser")
    if not missing:
        return
    message = f"{', '.join(missing)} not found on PATH"
    if IN_CI:
        pytest.fail(f"{message}; CI needs it.", pytrace=False)
    pytest.skip(f"{message}: install it to run this test")


def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def assert_unavailable(response: httpx.Response, code: str) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == code
    assert int(response.headers["retry-after"]) > 0


# -- in process: the mapping from backend errors to 503 ----------------------------------------


@pytest.fixture
def api(configure) -> Callable[..., Any]:
    """An in-process client on the given database (and optional broker)."""
    from fastapi.testclient import TestClient

    def open_client(database_url: str, broker_url: str | None = None) -> TestClient:
        configure(database_url, broker_url)
        from app.main import create_app

        return TestClient(create_app())

    return open_client


def test_postgres_refusing_connections_is_503_not_500(api: Callable[..., Any]) -> None:
    closed = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/jobs"
    with api(closed) as client:
        for response in (client.get("/jobs"), client.post("/jobs", json=JOB)):
            assert_unavailable(response, "database_unavailable")
            assert "127.0.0.1" not in response.json()["detail"]  # no connection details
        ready = client.get("/ready")
    assert ready.status_code == 503
    assert ready.json()["database"].startswith("unavailable")
    assert ready.json()["broker"] == "ok"


def test_sqlite_file_that_cannot_be_opened_is_503(api: Callable[..., Any], tmp_path: Path) -> None:
    folder = tmp_path / "a-folder-not-a-file"
    folder.mkdir()
    with api(f"sqlite:///{folder}") as client:
        assert_unavailable(client.get("/jobs"), "database_unavailable")
        assert_unavailable(client.post("/jobs", json=JOB), "database_unavailable")


@pytest.mark.slow
def test_locked_sqlite_file_answers_503_within_the_api_busy_timeout(
    api: Callable[..., Any], sqlite_url: str
) -> None:
    from app.unavailable import API_SQLITE_BUSY_TIMEOUT_MS

    path = sqlite_url.split(":///", 1)[1]
    with api(sqlite_url) as client:
        assert client.post("/jobs", json=JOB).status_code == 202
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            response, seconds = timed(lambda: client.post("/jobs", json=JOB))
            assert_unavailable(response, "database_unavailable")
            assert API_SQLITE_BUSY_TIMEOUT_MS / 1000 - 0.5 < seconds < 9
            # WAL: readers do not wait for the writer.
            listing, read_seconds = timed(lambda: client.get("/jobs"))
            assert listing.status_code == 200 and len(listing.json()["items"]) == 1
            assert client.get("/ready").status_code == 200
            assert read_seconds < 2
            print(f"SQLite locked: POST /jobs {seconds:.2f}s, GET /jobs {read_seconds:.2f}s")
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert client.post("/jobs", json=JOB).status_code == 202


def test_broker_errors_are_503_broker_unavailable(api: Callable[..., Any], sqlite_url: str) -> None:
    from jobs.queue import enqueue_job

    closed_broker = f"redis://127.0.0.1:{free_port()}/0"
    with api(sqlite_url, closed_broker) as client:
        # A route that sends directly (not after a commit) gets the real client's error.
        client.app.add_api_route("/send-now", lambda: enqueue_job(1), methods=["POST"])
        assert_unavailable(client.post("/send-now"), "broker_unavailable")
        # Submission commits first, then sends: the send fails, the job is accepted anyway.
        accepted = client.post("/jobs", json=JOB)
        assert accepted.status_code == 202, accepted.text
        assert client.get(f"/jobs/{accepted.json()['id']}").json()["status"] == "queued"
        ready = client.get("/ready")
    assert ready.status_code == 503
    assert ready.json()["database"] == "ok"
    assert ready.json()["broker"].startswith("unavailable")


# -- end to end: a private PostgreSQL and Redis, stopped and frozen under uvicorn ---------------


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    require_program("initdb", "postgres")
    server = PostgresServer(free_port(), tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def api_on_private_postgres(
    private_postgres: PostgresServer, tmp_path: Path, dataset_root: Path
) -> Iterator[httpx.Client]:
    from jobs.db import dispose_engines
    from jobs.migrations import upgrade

    upgrade(private_postgres.url)
    dispose_engines()
    env = service_environment(tmp_path, private_postgres.url, dataset_root)
    port = free_port()
    process = start_api(env, tmp_path, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            assert client.post("/jobs", json=JOB).status_code == 202
            assert client.get("/jobs").status_code == 200  # the pool holds open connections
            yield client
    finally:
        process.stop()


def database_routes_answer_503(client: httpx.Client, within_seconds: float) -> dict[str, float]:
    """GET /jobs, POST /jobs and /ready on an unavailable database; returns their times."""
    seconds = {}
    for name, call in (
        ("GET /jobs", lambda: client.get("/jobs")),
        ("POST /jobs", lambda: client.post("/jobs", json=JOB)),
    ):
        response, seconds[name] = timed(call)
        assert_unavailable(response, "database_unavailable")
        assert seconds[name] < within_seconds, (name, seconds[name])
    ready, seconds["/ready"] = timed(lambda: client.get("/ready"))
    assert ready.status_code == 503
    assert ready.json()["database"].startswith("unavailable"), ready.json()
    assert ready.json()["broker"] == "ok"
    assert seconds["/ready"] < READY_SECONDS
    return seconds


@pytest.mark.e2e
def test_stopped_postgres_answers_503(
    private_postgres: PostgresServer, api_on_private_postgres: httpx.Client
) -> None:
    private_postgres.stop()
    seconds = database_routes_answer_503(api_on_private_postgres, STOPPED_SECONDS)
    print("PostgreSQL stopped:", {name: round(value, 2) for name, value in seconds.items()})


@pytest.mark.e2e
def test_frozen_postgres_answers_503_then_recovers(
    private_postgres: PostgresServer, api_on_private_postgres: httpx.Client
) -> None:
    client = api_on_private_postgres
    private_postgres.freeze()
    try:
        seconds = database_routes_answer_503(client, FROZEN_DATABASE_SECONDS)
    finally:
        private_postgres.thaw()
    print("PostgreSQL frozen:", {name: round(value, 2) for name, value in seconds.items()})

    def recovered() -> bool:
        return client.get("/jobs").status_code == 200

    wait_for(recovered, timeout=20, what="the API to reach PostgreSQL again")
    assert client.post("/jobs", json=JOB).status_code == 202
    assert client.get("/ready").json() == {"status": "ready", "database": "ok", "broker": "ok"}


@pytest.mark.e2e
def test_frozen_redis_still_accepts_jobs_and_they_are_sent_later(
    configure,
    sqlite_url: str,
    tmp_path: Path,
    dataset_root: Path,
) -> None:
    require_program("redis-server")
    redis_port = free_port()
    broker_url = f"redis://127.0.0.1:{redis_port}/0"
    redis_process = start_redis(redis_port, tmp_path)
    env = service_environment(tmp_path, sqlite_url, dataset_root, broker_url)
    api_port = free_port()
    api_process = start_api(env, tmp_path, api_port)
    client = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=60)
    try:
        first = client.post("/jobs", json=JOB)
        assert first.status_code == 202
        assert redis_queue_job_ids(broker_url) == [first.json()["id"]]

        os.killpg(redis_process.pid, signal.SIGSTOP)
        try:
            accepted, post_seconds = timed(lambda: client.post("/jobs", json=JOB))
            assert accepted.status_code == 202, accepted.text
            assert post_seconds < FROZEN_BROKER_SECONDS
            job_id = accepted.json()["id"]
            assert client.get(f"/jobs/{job_id}").json()["status"] == "queued"  # reads: no broker
            ready, ready_seconds = timed(lambda: client.get("/ready"))
            assert ready.status_code == 503
            assert ready.json()["database"] == "ok"
            assert ready.json()["broker"].startswith("unavailable"), ready.json()
            assert ready_seconds < READY_SECONDS
        finally:
            os.killpg(redis_process.pid, signal.SIGCONT)
        print(f"Redis frozen: POST /jobs {post_seconds:.2f}s, /ready {ready_seconds:.2f}s")

        # The job row is the truth: the reconciler (run here, as a worker would) re-sends it.
        from worker.reconciler import reconcile_once

        settings_env = configure(sqlite_url, broker_url, LEASE_SECONDS="1")
        assert settings_env["CELERY_BROKER_URL"] == broker_url
        from jobs.settings import get_settings

        def sent() -> bool:
            reconcile_once(get_settings())
            return job_id in redis_queue_job_ids(broker_url)

        wait_for(sent, timeout=20, what=f"job {job_id}'s message in Redis")
        assert client.get(f"/jobs/{job_id}").json()["status"] == "queued"

        redis_process.stop()
        accepted, post_seconds = timed(lambda: client.post("/jobs", json=JOB))
        assert accepted.status_code == 202, accepted.text
        assert post_seconds < STOPPED_SECONDS
        ready, ready_seconds = timed(lambda: client.get("/ready"))
        assert ready.status_code == 503 and ready.json()["broker"].startswith("unavailable")
        assert ready_seconds < READY_SECONDS
        print(f"Redis stopped: POST /jobs {post_seconds:.2f}s, /ready {ready_seconds:.2f}s")
    finally:
        client.close()
        api_process.stop()
        redis_process.stop()
