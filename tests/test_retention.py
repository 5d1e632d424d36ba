"""Deleting finished jobs and experiments (rows and checkpoint files, nothing half-deleted
after a kill) and pruning old finished jobs in bulk."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from jobs import retention
from jobs.db import session_scope
from jobs.settings import get_settings
from jobs.tables import ArtifactDeletion, EpochMetric, Experiment, Job, JobEvent, JobTag, utcnow
from tests.support import drive_job

SPEC = {"block": "mobile", "hyperparameters": {"epochs": 2}, "train_samples": 10, "tags": ["t"]}


def job_files(job_id: int) -> Path:
    return get_settings().resolved_artifact_dir / "jobs" / str(job_id)


def rows_of(job_id: int) -> dict[str, int]:
    with session_scope(write=False) as session:
        return {
            table.__tablename__: session.execute(
                select(func.count()).select_from(table).where(table.job_id == job_id)
            ).scalar_one()
            for table in (EpochMetric, JobEvent, JobTag)
        }


def test_deleting_a_job_removes_its_rows_and_files(client: TestClient) -> None:
    job_id = client.post("/jobs", json=SPEC).json()["id"]
    queued = client.delete(f"/jobs/{job_id}")
    assert queued.status_code == 409 and queued.json()["error"] == "not_finished"
    drive_job(job_id, 2, finish="succeeded", checkpoint=b"weights")
    assert job_files(job_id).is_dir() and rows_of(job_id)["epoch_metrics"] == 2
    deleted = client.delete(f"/jobs/{job_id}")
    assert deleted.status_code == 204 and deleted.content == b""
    assert client.get(f"/jobs/{job_id}").status_code == 404
    assert not job_files(job_id).exists()
    assert rows_of(job_id) == {"epoch_metrics": 0, "job_events": 0, "job_tags": 0}
    assert client.delete(f"/jobs/{job_id}").status_code == 404


def test_a_kill_between_the_commit_and_the_files_leaves_work_the_sweep_finishes(
    client: TestClient,
) -> None:
    job_id = client.post("/jobs", json=SPEC).json()["id"]
    drive_job(job_id, 1, finish="failed", checkpoint=b"weights")
    with session_scope() as session:  # the rows go, as a killed request's would
        retention.delete_job(session, job_id)
    assert client.get(f"/jobs/{job_id}").status_code == 404
    assert job_files(job_id).is_dir()  # the process died before removing them
    from worker.reconciler import reconcile_once

    reconcile_once(get_settings())  # any worker's next pass
    assert not job_files(job_id).exists()
    with session_scope(write=False) as session:
        assert session.execute(select(func.count()).select_from(ArtifactDeletion)).scalar() == 0


def test_deleting_an_experiment_needs_every_job_ended(client: TestClient) -> None:
    made = client.post(
        "/experiments",
        json={"name": "e", "blocks": ["mobile", "plain"], "hyperparameters": {"epochs": 1}},
    ).json()
    ids = [row["job_id"] for row in made["jobs"]]
    running = client.delete(f"/experiments/{made['id']}")
    assert running.status_code == 409 and running.json()["error"] == "not_finished"
    drive_job(ids[0], 1, finish="succeeded", checkpoint=b"w")
    client.post(f"/experiments/{made['id']}/cancel")
    assert client.delete(f"/experiments/{made['id']}").status_code == 204
    assert client.get(f"/experiments/{made['id']}").status_code == 404
    assert all(client.get(f"/jobs/{job_id}").status_code == 404 for job_id in ids)
    assert not job_files(ids[0]).exists()
    assert client.delete("/experiments/999").status_code == 404


def test_prune_deletes_the_jobs_finished_before_a_time(
    client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    old, recent, queued = (client.post("/jobs", json=SPEC).json()["id"] for _ in range(3))
    drive_job(old, 1, finish="succeeded", checkpoint=b"w")
    drive_job(recent, 1, finish="succeeded", checkpoint=b"w")
    grouped = client.post(
        "/experiments",
        json={"name": "old", "blocks": ["mobile"], "hyperparameters": {"epochs": 1}},
    ).json()
    client.post(f"/experiments/{grouped['id']}/cancel")
    cutoff = utcnow()
    with session_scope() as session:
        for job in session.execute(
            select(Job).where(Job.id.in_([old, grouped["jobs"][0]["job_id"]]))
        ).scalars():
            job.finished_at = cutoff - timedelta(days=100)
        session.get_one(Experiment, grouped["id"]).created_at = cutoff - timedelta(days=100)
    recent_cutoff = cutoff - timedelta(days=30)
    argument = recent_cutoff.isoformat().replace("+00:00", "Z")
    assert retention.main(["--finished-before", argument, "--dry-run"]) == 0
    assert capsys.readouterr().out == "would delete 2 jobs\n"
    assert retention.main(["--finished-before", argument]) == 0
    assert capsys.readouterr().out == "deleted 2 jobs and 1 experiments left without jobs\n"
    assert client.get(f"/jobs/{old}").status_code == 404 and not job_files(old).exists()
    assert client.get(f"/experiments/{grouped['id']}").status_code == 404
    assert client.get(f"/jobs/{recent}").status_code == 200 and job_files(recent).is_dir()
    assert client.get(f"/jobs/{queued}").status_code == 200
    with pytest.raises(SystemExit):
        retention.main(["--finished-before", "2026-01-01T00:00:00"])  # no time zone
