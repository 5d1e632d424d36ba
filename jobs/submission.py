"""Making job rows, for any adapter and for the search: idempotency, room in the queue, every row
in the caller's one transaction, and each job's id sent to the queue only once that transaction
has committed. Experiments are planned and made by jobs.experiments on top of this."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from engine.datasets import DATASETS
from jobs import accounts, audit, status_counts
from jobs.dispatch import head_fair_share_key
from jobs.errors import IdempotencyConflict, QueueFull
from jobs.events import record_first_statuses, record_status
from jobs.queue import enqueue_after_commit
from jobs.settings import Settings
from jobs.specs import JobCreate
from jobs.tables import Experiment, Job, JobStatus, JobTag, utcnow
from models.catalog import block_complexity

Submitted = TypeVar("Submitted", Job, Experiment)


@dataclass(frozen=True)
class Submission:
    job: Job
    created: bool


@dataclass(frozen=True)
class TrialColumns:
    """A search trial's columns on its job row (jobs.search.study): its number, the params it
    was given and its search state (bracket, decisions)."""

    number: int
    params: dict[str, Any]
    state: dict[str, Any]


def find_by_key(
    session: Session, kind: type[Submitted], key: str, fingerprint: str
) -> Submitted | None:
    """The row submitted with this Idempotency-Key, if any; IdempotencyConflict when it was
    submitted with another body."""
    row = session.execute(select(kind).where(kind.idempotency_key == key)).scalar_one_or_none()
    if row is not None and row.request_sha256 != fingerprint:
        noun = "job" if kind is Job else "experiment"
        raise IdempotencyConflict(
            f"Idempotency-Key {key!r} was already used for {noun} {row.id} with a different body."
        )
    return row


def create_job(
    session: Session,
    spec: JobCreate,
    *,
    settings: Settings,
    idempotency_key: str | None = None,
    owner: str | None = None,
) -> Submission:
    """Add a queued job, owned by `owner`, to the session; its id is sent to the queue once the
    caller's transaction commits. A concurrent request with the same Idempotency-Key gets that
    job. QuotaExceeded when it would leave its owner over their limit on queued jobs
    (jobs.accounts); the submission is audited."""
    fingerprint = spec.fingerprint()
    if idempotency_key is not None:
        existing = find_by_key(session, Job, idempotency_key, fingerprint)
        if existing is not None:
            return Submission(existing, created=False)
    quota = accounts.take_queued_quota(session, owner, settings)
    ensure_queue_room(session, settings=settings, adding=1)
    fair_share_key = head_fair_share_key(session, spec.priority)
    try:
        with session.begin_nested():
            job = add_job(
                session,
                spec,
                settings=settings,
                idempotency_key=idempotency_key,
                fair_share_key=fair_share_key,
                owner=owner,
            )
    except IntegrityError:
        # Another request with the same Idempotency-Key committed first.
        if idempotency_key is None:
            raise
        existing = find_by_key(session, Job, idempotency_key, fingerprint)
        if existing is None:
            raise
        return Submission(existing, created=False)
    accounts.check_queued_quota(session, quota)
    audit.record(session, owner, "job_submitted", job_id=job.id)
    return Submission(job, created=True)


def ensure_queue_room(session: Session, *, settings: Settings, adding: int) -> None:
    """QueueFull (503 with Retry-After) unless `adding` more queued jobs stay within
    MAX_QUEUED_JOBS."""
    queued = status_counts.service_counts(session)[JobStatus.QUEUED]
    if queued + adding > settings.max_queued_jobs:
        adds = "" if adding == 1 else f" and this request adds {adding}"
        raise QueueFull(
            f"{queued} jobs are already queued{adds} (limit {settings.max_queued_jobs}); "
            "retry later.",
            headers={"Retry-After": str(int(max(settings.lease_seconds, 30)))},
        )


def _job_row(
    spec: JobCreate,
    *,
    settings: Settings,
    experiment_id: int | None,
    idempotency_key: str | None,
    fair_share_key: int,
    now: datetime,
    owner: str | None,
    trial: TrialColumns | None = None,
) -> dict[str, Any]:
    """The columns of a new queued job built from `spec`."""
    complexity = block_complexity(spec.block, DATASETS[spec.dataset].num_classes)
    trial_columns = (
        {}
        if trial is None
        else {
            "trial_number": trial.number,
            "trial_params": trial.params,
            "trial_state": trial.state,
        }
    )
    return {
        **trial_columns,
        "experiment_id": experiment_id,
        "owner": owner,
        "name": spec.name,
        "tags": list(spec.tags),
        "block": spec.block,
        "dataset": spec.dataset,
        "spec": spec.model_dump(mode="json"),
        "config": spec.train_config().model_dump(mode="json"),
        "status": JobStatus.QUEUED,
        "cancel_requested": False,
        "priority": spec.priority,
        "fair_share_key": fair_share_key,
        "params": complexity.params,
        "macs": complexity.macs,
        "epochs_total": spec.hyperparameters.epochs,
        "epochs_done": 0,
        "attempt": 0,
        "max_attempts": settings.max_attempts,
        "enqueued_at": now,
        "enqueue_count": 1,
        "idempotency_key": idempotency_key,
        "request_sha256": spec.fingerprint(),
        "created_at": now,
        "updated_at": now,
    }


def _tag_rows(job_id: int, spec: JobCreate, experiment_id: int | None) -> list[dict[str, Any]]:
    """The job's tag rows, with the copy of its filter columns each carries (jobs.tables.JobTag)
    as a new job has them."""
    copied = {
        "status": JobStatus.QUEUED,
        "block": spec.block,
        "experiment_id": experiment_id,
        "best_test_accuracy": None,
    }
    return [{"tag": tag, "job_id": job_id, **copied} for tag in dict.fromkeys(spec.tags)]


def add_job(
    session: Session,
    spec: JobCreate,
    *,
    settings: Settings,
    experiment_id: int | None = None,
    idempotency_key: str | None = None,
    fair_share_key: int = 0,
    owner: str | None = None,
    trial: TrialColumns | None = None,
) -> Job:
    """The one way a single job row is made: a queued job built from `spec` (a search's trial
    with its trial columns), added and flushed (so its id is known), and sent to the queue once
    the caller's transaction commits."""
    job = Job(
        **_job_row(
            spec,
            settings=settings,
            experiment_id=experiment_id,
            idempotency_key=idempotency_key,
            fair_share_key=fair_share_key,
            now=utcnow(),
            owner=owner,
            trial=trial,
        )
    )
    session.add(job)
    session.flush()
    if spec.tags:
        session.execute(insert(JobTag), _tag_rows(job.id, spec, experiment_id))
    status_counts.note(session, experiment_id, JobStatus.QUEUED, 1)
    record_status(session, job.id)
    enqueue_after_commit(session, job.id, priority=spec.priority)
    return job


def add_jobs(
    session: Session,
    specs: Sequence[JobCreate],
    *,
    settings: Settings,
    experiment_id: int,
    first_fair_share_key: int,
    owner: str | None = None,
) -> list[int]:
    """An experiment's jobs, in job order: the same rows, tags and first status events as
    `add_job` makes one by one, in a few statements for all of them (a 1,000-job experiment
    row by row spends seconds in per-statement overhead); each id is sent to the queue once
    the caller's transaction commits. Their fair-share keys count up from
    `first_fair_share_key`."""
    now = utcnow()
    rows = [
        _job_row(
            spec,
            settings=settings,
            experiment_id=experiment_id,
            idempotency_key=None,
            fair_share_key=first_fair_share_key + index,
            now=now,
            owner=owner,
        )
        for index, spec in enumerate(specs)
    ]
    # The first status event is seq 1 of each job (record_status would bump 0 to 1).
    ids = list(
        session.scalars(
            insert(Job).returning(Job.id, sort_by_parameter_order=True),
            [{**row, "event_seq": 1} for row in rows],
        )
    )
    tags = [
        tag
        for job_id, spec in zip(ids, specs, strict=True)
        for tag in _tag_rows(job_id, spec, experiment_id)
    ]
    if tags:
        session.execute(insert(JobTag), tags)
    status_counts.note(session, experiment_id, JobStatus.QUEUED, len(ids))
    record_first_statuses(session, list(zip(ids, rows, strict=True)), experiment_id=experiment_id)
    for job_id, spec in zip(ids, specs, strict=True):
        enqueue_after_commit(session, job_id, priority=spec.priority)
    return ids
