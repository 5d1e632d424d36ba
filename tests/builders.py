"""What the tests build again and again, written once: the small job they submit, jobs made
through the core (as the API would make them), and jobs and experiments submitted through an
API client, checked for the 202."""

from __future__ import annotations

from typing import Any

from jobs import submission
from jobs.db import session_scope
from jobs.settings import get_settings
from jobs.specs import JobCreate

# A job that trains nothing much: the mobile block, three epochs, ten training images.
TINY_JOB: dict[str, Any] = {
    "block": "mobile",
    "hyperparameters": {"epochs": 3},
    "train_samples": 10,
}


def job_body(**changes: Any) -> dict[str, Any]:
    """TINY_JOB with these fields changed; `hyperparameters` are merged, not replaced."""
    body = {**TINY_JOB, **changes}
    body["hyperparameters"] = {**TINY_JOB["hyperparameters"], **changes.get("hyperparameters", {})}
    return body


def job_spec(**changes: Any) -> JobCreate:
    return JobCreate.model_validate(job_body(**changes))


def new_jobs(count: int = 1, **changes: Any) -> list[int]:
    """`count` queued jobs made through the core in one transaction, in this process's
    settings."""
    spec = job_spec(**changes)
    with session_scope() as session:
        return [
            submission.create_job(session, spec, settings=get_settings()).job.id
            for _ in range(count)
        ]


def new_job_id(**changes: Any) -> int:
    (job_id,) = new_jobs(1, **changes)
    return job_id


def submit_job(client: Any, **changes: Any) -> dict[str, Any]:
    """POST /jobs with TINY_JOB and these changes; the job as answered (202)."""
    response = client.post("/jobs", json=job_body(**changes))
    assert response.status_code == 202, response.text
    return dict(response.json())


def submit_experiment(client: Any, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    """POST /experiments; the experiment as answered (202, with its Location)."""
    response = client.post("/experiments", json=body, headers=headers)
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/experiments/{response.json()['id']}"
    return dict(response.json())
