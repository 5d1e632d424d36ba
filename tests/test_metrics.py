"""GET /metrics on SQLite and PostgreSQL: what it reports is what the database holds (so every
API process answers the same), HTTP figures are labelled by route template, the output passes
`promtool check metrics`, it follows the API key or METRICS_TOKEN, and it answers within 100 ms
at 100,000 jobs."""

from __future__ import annotations

import shutil
import subprocess
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert

from jobs import lifecycle
from jobs.db import session_scope
from jobs.lifecycle import claim_job, finish_job, reap_expired_leases, record_epoch
from jobs.status_counts import recount
from jobs.tables import Job, JobStatus, utcnow
from jobs.workers import forget_worker, worker_heartbeat
from tests.builders import new_jobs
from tests.conftest import IN_CI
from tests.support import epoch_row


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a scrape."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(scrape: dict, name: str, **labels: str) -> float:
    return scrape[(name, tuple(sorted(labels.items())))]


def test_the_scrape_reports_what_the_database_holds(client: Any) -> None:
    ids = new_jobs(5)
    with session_scope() as session:
        # Submitted 30 s ago: the oldest queued job's age.
        session.get(Job, ids[1]).created_at = utcnow() - timedelta(seconds=30)
        lifecycle.cancel_job(session, ids[4])
    with session_scope() as session:
        first = claim_job(session, ids[0], worker="gpu-a", lease_seconds=60)
        second = claim_job(session, ids[2], worker="gpu-b", lease_seconds=60)
        worker_heartbeat(session, "gpu-a", concurrency=1, started_at=utcnow())
        worker_heartbeat(session, "gpu-b", concurrency=2, started_at=utcnow())
        worker_heartbeat(session, "gone", concurrency=1, started_at=utcnow())
        forget_worker(session, "gone")
    assert first is not None and second is not None
    for epoch in (1, 2):
        with session_scope() as session:
            record_epoch(session, first, epoch_row(epoch), lease_seconds=60)
    with session_scope() as session:
        record_epoch(session, second, epoch_row(1), lease_seconds=1)
    with session_scope() as session:
        assert finish_job(session, first, JobStatus.SUCCEEDED)
    with session_scope() as session:  # the second's worker died: its job goes back to the queue
        assert reap_expired_leases(session, now=utcnow() + timedelta(seconds=5)) == [ids[2]]

    assert client.get(f"/jobs/{ids[0]}").status_code == 200
    assert client.get(f"/jobs/{ids[3]}").status_code == 200
    assert client.get("/jobs/999999").status_code == 404
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    scrape = samples(response.text)

    jobs = {s: value(scrape, "cifar_jobs_jobs", status=s) for s in JobStatus}
    assert jobs == {**dict.fromkeys(JobStatus, 0), "queued": 3, "succeeded": 1, "cancelled": 1}
    assert value(scrape, "cifar_jobs_queue_depth") == 3
    assert 29 <= value(scrape, "cifar_jobs_oldest_queued_job_age_seconds") < 120
    assert value(scrape, "cifar_jobs_epochs_recorded_total") == 3
    reaped = {
        outcome: value(scrape, "cifar_jobs_reconciler_leases_reaped_total", outcome=outcome)
        for outcome in ("requeued", "failed", "cancelled")
    }
    assert reaped == {"requeued": 1, "failed": 0, "cancelled": 0}
    ages = {
        labels[0][1]: age
        for (name, labels), age in scrape.items()
        if name == "cifar_jobs_worker_heartbeat_age_seconds"
    }
    assert set(ages) == {"gpu-a", "gpu-b"} and all(0 <= age < 60 for age in ages.values())

    # HTTP figures by route template: the ids never become label values.
    by_route = value(
        scrape, "cifar_jobs_http_requests_total", method="GET", route="/jobs/{job_id}", status="200"
    )
    assert by_route >= 2
    assert (
        value(
            scrape,
            "cifar_jobs_http_requests_total",
            method="GET",
            route="/jobs/{job_id}",
            status="404",
        )
        >= 1
    )
    assert not any(str(ids[0]) in dict(labels).get("route", "") for _, labels in scrape)
    count = value(
        scrape,
        "cifar_jobs_http_request_duration_seconds_count",
        method="GET",
        route="/jobs/{job_id}",
    )
    assert count >= 3

    # Running jobs per worker, while one runs.
    with session_scope() as session:
        assert claim_job(session, ids[1], worker="gpu-b", lease_seconds=60) is not None
    scrape = samples(client.get("/metrics").text)
    assert value(scrape, "cifar_jobs_running_jobs", worker="gpu-b") == 1
    assert value(scrape, "cifar_jobs_queue_depth") == 2


def test_promtool_accepts_the_output(client: Any) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        message = "promtool is missing (apt-get install prometheus)"
        if IN_CI:
            pytest.fail(f"{message}; CI needs it.", pytrace=False)
        pytest.skip(f"{message}: install it to run this test")
    new_jobs(2)
    client.get("/jobs")
    client.get("/nothing-here")
    with session_scope() as session:
        worker_heartbeat(session, "gpu-a", concurrency=1, started_at=utcnow())
    text = client.get("/metrics").text
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert 'route="(unrouted)"' in text


def test_metrics_follow_the_api_key_or_a_scrape_token(configure: Any, sqlite_url: str) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    configure(sqlite_url, API_KEY="the-key")
    with TestClient(create_app()) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"X-API-Key": "the-key"}).status_code == 200
    configure(sqlite_url, API_KEY="the-key", METRICS_TOKEN="scrape-token")
    with TestClient(create_app()) as client:
        bearer = {"Authorization": "Bearer scrape-token"}
        assert client.get("/metrics", headers=bearer).status_code == 200
        assert client.get("/metrics", headers={"X-API-Key": "the-key"}).status_code == 200
        wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
        # The token opens /metrics only.
        assert client.get("/jobs", headers=bearer).status_code == 401
    configure(sqlite_url, METRICS_TOKEN="scrape-token")
    with TestClient(create_app()) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=bearer).status_code == 200
        assert client.get("/jobs").status_code == 200


@pytest.mark.slow
def test_a_scrape_counts_every_job_of_a_large_database(client: Any) -> None:
    """The figures come from counts in the database, not from rows loaded into the API. How long
    a scrape takes at 100,000 jobs is measured by bench/scale.py (docs/benchmarks.md)."""
    now = utcnow()
    statuses = [JobStatus.SUCCEEDED] * 8 + [JobStatus.FAILED, JobStatus.QUEUED]
    rows = [
        {
            "block": "mobile",
            "dataset": "cifar100",
            "spec": {},
            "config": {},
            "status": statuses[index % len(statuses)],
            "cancel_requested": False,
            "params": 1,
            "macs": 1,
            "epochs_total": 1,
            "epochs_done": 0,
            "attempt": 0,
            "max_attempts": 3,
            "enqueue_count": 1,
            "event_seq": 0,
            "tags": [],
            "created_at": now - timedelta(seconds=index),
            "updated_at": now,
        }
        for index in range(20_000)
    ]
    with session_scope() as session:
        session.execute(insert(Job), rows)
        recount(session)  # rows made outside the service: its kept counts made again
    with session_scope() as session:
        for index in range(20):
            worker_heartbeat(session, f"gpu-{index}", concurrency=1, started_at=now)
    response = client.get("/metrics")
    assert response.status_code == 200
    scrape = samples(response.text)
    assert value(scrape, "cifar_jobs_queue_depth") == 2_000
    assert value(scrape, "cifar_jobs_jobs", status="succeeded") == 16_000
    assert value(scrape, "cifar_jobs_jobs", status="failed") == 2_000
    workers = {
        labels for name, labels in scrape if name == "cifar_jobs_worker_heartbeat_age_seconds"
    }
    assert workers == {(("worker", f"gpu-{index}"),) for index in range(20)}
