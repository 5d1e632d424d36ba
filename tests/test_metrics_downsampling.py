"""Curves at scale: a job's metrics and an experiment's curves downsampled in SQL, keeping the
first, the last and the best epoch, within a server-side cap."""

from __future__ import annotations

from fastapi.testclient import TestClient

from jobs.db import session_scope
from jobs.lifecycle import claim_job, record_epoch
from jobs.metrics import MAX_EXPERIMENT_POINTS, points_per_job
from tests.support import epoch_row

PEAK = 17


def record(job_id: int, epochs: int) -> None:
    """Epochs 1..epochs whose test accuracy peaks at epoch PEAK."""
    with session_scope() as session:
        claim = claim_job(session, job_id, worker="w", lease_seconds=600)
    assert claim is not None
    for epoch in range(1, epochs + 1):
        accuracy = 0.9 - abs(epoch - PEAK) / 100
        with session_scope() as session:
            record_epoch(session, claim, epoch_row(epoch, accuracy), lease_seconds=600)


def test_a_jobs_metrics_keep_first_best_and_last_within_max_points(client: TestClient) -> None:
    job = client.post("/jobs", json={"block": "mobile", "hyperparameters": {"epochs": 60}})
    job_id = job.json()["id"]
    record(job_id, 60)
    every = client.get(f"/jobs/{job_id}/metrics").json()["metrics"]
    assert [row["epoch"] for row in every] == list(range(1, 61))
    for points in (3, 7, 10, 59):
        rows = client.get(f"/jobs/{job_id}/metrics", params={"max_points": points}).json()
        epochs = [row["epoch"] for row in rows["metrics"]]
        assert len(epochs) <= points and epochs == sorted(set(epochs)), points
        assert {1, PEAK, 60} <= set(epochs), points
        assert len(epochs) > points // 2, points  # evenly spaced, not just the three
    later = client.get(f"/jobs/{job_id}/metrics", params={"since_epoch": 50, "max_points": 4})
    epochs = [row["epoch"] for row in later.json()["metrics"]]
    assert len(epochs) <= 4 and epochs[0] == 51 and epochs[-1] == 60
    for bad in (2, 1001, "x"):
        response = client.get(f"/jobs/{job_id}/metrics", params={"max_points": bad})
        assert response.status_code == 422
        assert response.json()["fields"][0]["field"].endswith("max_points")


def test_an_experiments_curves_come_back_in_one_capped_request(client: TestClient) -> None:
    made = client.post(
        "/experiments",
        json={
            "name": "e",
            "blocks": ["mobile"],
            "seeds": [0, 1, 2],
            "hyperparameters": {"epochs": 40},
        },
    ).json()
    ids = [row["job_id"] for row in made["jobs"]]
    record(ids[0], 40)
    record(ids[2], 25)
    curves = client.get(f"/experiments/{made['id']}/metrics", params={"max_points": 6}).json()
    assert curves["experiment_id"] == made["id"] and curves["points_per_job"] == 6
    assert [curve["job_id"] for curve in curves["jobs"]] == [ids[0], ids[2]]
    for curve, last in zip(curves["jobs"], (40, 25), strict=True):
        epochs = [row["epoch"] for row in curve["metrics"]]
        assert len(epochs) <= 6 and {1, PEAK, last} <= set(epochs)
    assert client.get("/experiments/999/metrics").status_code == 404
    # 1,000 jobs share the cap: 100 points each at most, whatever is asked.
    assert points_per_job(1000, 1000) * 1000 <= MAX_EXPERIMENT_POINTS
    assert points_per_job(1000, 1000) == 100 and points_per_job(3, 6) == 6
