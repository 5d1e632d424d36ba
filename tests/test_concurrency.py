"""Submissions under load: many concurrent POST /jobs against a real uvicorn process on the
embedded default (SQLite + the SQLite broker, no worker: the messages wait in the broker), the
queue depth limit, and Idempotency-Key (replays, conflicts, and a race on one key)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import service_environment
from tests.support import Process, broker_messages, free_port, start_api

JOB = {
    "block": "mobile",
    "hyperparameters": {"epochs": 1, "batch_size": 32},
    "train_samples": 64,
    "test_samples": 32,
}


@pytest.fixture
def live_api(
    tmp_path: Path, dataset_root: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[str, Process, Path]]:
    """uvicorn on a migrated database (SQLite unless the test's `database_url` says otherwise),
    with the default embedded broker: (base url, process, VAR_DIR)."""
    from jobs.migrations import upgrade

    if "database_url" in request.fixturenames:
        url = request.getfixturevalue("database_url")
    else:
        url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
        upgrade(url)
    env = service_environment(tmp_path, url, dataset_root, MAX_QUEUED_JOBS="1000")
    assert "CELERY_BROKER_URL" not in env
    port = free_port()
    process = start_api(env, tmp_path, port)
    try:
        yield f"http://127.0.0.1:{port}", process, Path(env["VAR_DIR"])
    finally:
        process.stop()


def test_100_concurrent_submissions_on_the_embedded_default(
    live_api: tuple[str, Process, Path],
) -> None:
    base_url, process, var_dir = live_api
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    with httpx.Client(base_url=base_url, timeout=120, limits=limits) as api:
        # A fresh process has not measured any network yet (ptflops patches torch globally while
        # it counts): concurrent first requests must still each get the one right answer.
        with ThreadPoolExecutor(8) as pool:
            tables = list(pool.map(lambda _: api.get("/architectures"), range(8)))
        assert [r.status_code for r in tables] == [200] * 8, [r.text[:200] for r in tables]
        assert len({r.text for r in tables}) == 1
        assert {row["block"]: row["params"] for row in tables[0].json()}["mobile"] == 1_326_052

        def submit(index: int) -> httpx.Response:
            return api.post("/jobs", json={**JOB, "name": f"burst-{index}"})

        with ThreadPoolExecutor(32) as pool:
            responses = list(pool.map(submit, range(100)))

        bodies = [response.text for response in responses]
        assert len(responses) == 100
        assert not [r.status_code for r in responses if r.status_code >= 500], bodies
        assert [r.status_code for r in responses] == [202] * 100, bodies
        assert not [body for body in bodies if "database is locked" in body.lower()]
        jobs = [response.json() for response in responses]
        ids = {job["id"] for job in jobs}
        assert len(ids) == 100
        assert {job["name"] for job in jobs} == {f"burst-{i}" for i in range(100)}
        assert all(job["status"] == "queued" for job in jobs)
        assert all(r.headers["location"] == f"/jobs/{r.json()['id']}" for r in responses)

        listing = api.get("/jobs", params={"limit": 200})
        assert listing.status_code == 200
        assert len(listing.json()["items"]) == 100
        assert {item["id"] for item in listing.json()["items"]} == ids
        # Queue positions are 1..100, each once, in id order.
        positions = {item["id"]: item["queue_position"] for item in listing.json()["items"]}
        assert [positions[job_id] for job_id in sorted(ids)] == list(range(1, 101))

    # Every job's id reached the broker: the enqueue after each commit did not fail quietly.
    assert broker_messages(var_dir) == 100
    log = process.output()
    assert "database is locked" not in log.lower(), log
    assert "could not enqueue" not in log and "Traceback" not in log, log
    assert process.alive()


# --- queue depth limit ---------------------------------------------------------------------


def test_queue_depth_limit_answers_503_with_retry_after(configure, database_url: str) -> None:
    env = configure(database_url, MAX_QUEUED_JOBS="2")
    from app.main import create_app

    var_dir = Path(env["VAR_DIR"])
    with TestClient(create_app()) as client:
        first = client.post("/jobs", json=JOB, headers={"Idempotency-Key": "k-first"})
        second = client.post("/jobs", json=JOB)
        assert (first.status_code, second.status_code) == (202, 202)

        third = client.post("/jobs", json={**JOB, "name": "one too many"})
        assert third.status_code == 503, third.text
        assert third.json()["error"] == "queue_full"
        assert "2 jobs are already queued (limit 2)" in third.json()["detail"]
        assert int(third.headers["retry-after"]) > 0
        assert len(client.get("/jobs").json()["items"]) == 2
        assert broker_messages(var_dir) == 2

        # A replay of a stored job is not a new job: no 503 for it. A new key is.
        replay = client.post("/jobs", json=JOB, headers={"Idempotency-Key": "k-first"})
        assert replay.status_code == 202 and replay.json()["id"] == first.json()["id"]
        assert replay.headers["idempotent-replayed"] == "true"
        new_key = client.post("/jobs", json=JOB, headers={"Idempotency-Key": "k-new"})
        assert new_key.status_code == 503 and new_key.json()["error"] == "queue_full"
        assert len(client.get("/jobs").json()["items"]) == 2

        # The limit counts queued jobs only: cancelling one makes room for one more.
        assert client.post(f"/jobs/{first.json()['id']}/cancel").status_code == 200
        again = client.post("/jobs", json={**JOB, "name": "room again"})
        assert again.status_code == 202, again.text
        assert client.post("/jobs", json=JOB).status_code == 503
        assert len(client.get("/jobs").json()["items"]) == 3
        assert broker_messages(var_dir) == 3


# --- Idempotency-Key -----------------------------------------------------------------------


def test_idempotency_key_replays_and_conflicts(configure, database_url: str) -> None:
    env = configure(database_url)
    from app.main import create_app

    var_dir = Path(env["VAR_DIR"])
    key = {"Idempotency-Key": "order-7f3a"}
    with TestClient(create_app()) as client:
        first = client.post("/jobs", json=JOB, headers=key)
        assert first.status_code == 202, first.text
        assert "idempotent-replayed" not in first.headers
        job_id = first.json()["id"]

        replay = client.post("/jobs", json=JOB, headers=key)
        assert replay.status_code == 202
        assert replay.json()["id"] == job_id
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.headers["location"] == f"/jobs/{job_id}"
        assert replay.json()["spec"] == first.json()["spec"]

        # The same spec written differently (defaults spelled out, keys reordered) is the
        # same body.
        spelled_out = {
            "test_samples": 32,
            "train_samples": 64,
            "dataset": "cifar100",
            "hyperparameters": {"batch_size": 32, "epochs": 1, "optimizer": "sgd"},
            "block": "mobile",
            "tags": [],
        }
        same = client.post("/jobs", json=spelled_out, headers=key)
        assert same.status_code == 202 and same.json()["id"] == job_id
        assert same.headers["idempotent-replayed"] == "true"

        conflict = client.post("/jobs", json={**JOB, "block": "plain"}, headers=key)
        assert conflict.status_code == 409, conflict.text
        assert conflict.json()["error"] == "idempotency_key_reused"
        assert str(job_id) in conflict.json()["detail"]

        assert len(client.get("/jobs").json()["items"]) == 1
        assert broker_messages(var_dir) == 1  # replays are not sent again

        other = client.post("/jobs", json=JOB, headers={"Idempotency-Key": "order-8b1c"})
        assert other.status_code == 202 and other.json()["id"] != job_id
        unkeyed = client.post("/jobs", json=JOB)
        assert unkeyed.status_code == 202 and unkeyed.json()["id"] not in (
            job_id,
            other.json()["id"],
        )
        assert len(client.get("/jobs").json()["items"]) == 3

        too_long = client.post("/jobs", json=JOB, headers={"Idempotency-Key": "k" * 201})
        assert too_long.status_code == 422
        assert len(client.get("/jobs").json()["items"]) == 3


def test_concurrent_posts_with_one_key_make_one_job(
    database_url: str,
    live_api: tuple[str, Process, Path],
) -> None:
    base_url, process, var_dir = live_api
    headers = {"Idempotency-Key": "race-one-key"}
    with httpx.Client(base_url=base_url, timeout=120) as api:

        def submit(_: int) -> httpx.Response:
            return api.post("/jobs", json=JOB, headers=headers)

        with ThreadPoolExecutor(10) as pool:
            responses = list(pool.map(submit, range(10)))

        assert [r.status_code for r in responses] == [202] * 10, [r.text for r in responses]
        assert len({r.json()["id"] for r in responses}) == 1
        replayed = [r.headers.get("idempotent-replayed") for r in responses]
        assert replayed.count("true") == 9 and replayed.count(None) == 1
        assert len(api.get("/jobs").json()["items"]) == 1

        conflict = api.post("/jobs", json={**JOB, "name": "other"}, headers=headers)
        assert conflict.status_code == 409
        assert conflict.json()["error"] == "idempotency_key_reused"
    assert broker_messages(var_dir) == 1
    log = process.output()
    assert "database is locked" not in log.lower() and "Traceback" not in log, log
