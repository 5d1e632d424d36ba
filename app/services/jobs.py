"""Job operations behind the API routes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.errors import JobNotCancellable, JobNotFound, QueueFull
from app.schemas import JobCreate
from app.services.idempotency import find_by_key
from engine.datasets import DATASETS
from jobs.events import record_status
from jobs.queue import enqueue_after_commit
from jobs.settings import Settings
from jobs.tables import EpochMetric, Job, JobStatus, utcnow
from models.catalog import block_complexity


@dataclass(frozen=True)
class Submission:
    job: Job
    created: bool


def create_job(
    session: Session, spec: JobCreate, *, settings: Settings, idempotency_key: str | None = None
) -> Submission:
    """Add a queued job to the session; its id is sent to the queue once the caller's
    transaction commits. A concurrent request with the same Idempotency-Key gets that job."""
    fingerprint = spec.fingerprint()
    if idempotency_key is not None:
        existing = find_by_key(session, Job, idempotency_key, fingerprint)
        if existing is not None:
            return Submission(existing, created=False)
    ensure_queue_room(session, settings=settings, adding=1)
    try:
        with session.begin_nested():
            job = add_job(session, spec, settings=settings, idempotency_key=idempotency_key)
    except IntegrityError:
        # Another request with the same Idempotency-Key committed first.
        if idempotency_key is None:
            raise
        existing = find_by_key(session, Job, idempotency_key, fingerprint)
        if existing is None:
            raise
        return Submission(existing, created=False)
    return Submission(job, created=True)


def ensure_queue_room(session: Session, *, settings: Settings, adding: int) -> None:
    """QueueFull (503 with Retry-After) unless `adding` more queued jobs stay within
    MAX_QUEUED_JOBS."""
    queued = session.execute(
        select(func.count()).select_from(Job).where(Job.status == JobStatus.QUEUED)
    ).scalar_one()
    if queued + adding > settings.max_queued_jobs:
        adds = "" if adding == 1 else f" and this request adds {adding}"
        raise QueueFull(
            f"{queued} jobs are already queued{adds} (limit {settings.max_queued_jobs}); "
            "retry later.",
            headers={"Retry-After": str(int(max(settings.lease_seconds, 30)))},
        )


def add_job(
    session: Session,
    spec: JobCreate,
    *,
    settings: Settings,
    experiment_id: int | None = None,
    idempotency_key: str | None = None,
) -> Job:
    """The one way a job row is made: a queued job built from `spec`, added and flushed (so
    its id is known), and sent to the queue once the caller's transaction commits."""
    complexity = block_complexity(spec.block, DATASETS[spec.dataset].num_classes)
    now = utcnow()
    job = Job(
        experiment_id=experiment_id,
        name=spec.name,
        tags=list(spec.tags),
        block=spec.block,
        dataset=spec.dataset,
        spec=spec.model_dump(mode="json"),
        config=spec.train_config().model_dump(mode="json"),
        status=JobStatus.QUEUED,
        cancel_requested=False,
        params=complexity.params,
        macs=complexity.macs,
        epochs_total=spec.hyperparameters.epochs,
        epochs_done=0,
        attempt=0,
        max_attempts=settings.max_attempts,
        enqueued_at=now,
        enqueue_count=1,
        idempotency_key=idempotency_key,
        request_sha256=spec.fingerprint(),
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    session.flush()
    record_status(session, job.id)
    enqueue_after_commit(session, job.id)
    return job


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job


def list_jobs(
    session: Session,
    *,
    status: str | None = None,
    block: str | None = None,
    experiment_id: int | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Job], int]:
    query = select(Job)
    if experiment_id is not None:
        query = query.where(Job.experiment_id == experiment_id)
    if status is not None:
        query = query.where(Job.status == status)
    if block is not None:
        query = query.where(Job.block == block)
    total = session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    jobs = session.execute(
        query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit).offset(offset)
    ).scalars()
    return list(jobs), total


def queue_position(session: Session, job: Job) -> int | None:
    """1 for the next job a free worker takes (first in, first out)."""
    if job.status != JobStatus.QUEUED:
        return None
    ahead = session.execute(
        select(func.count()).select_from(Job).where(Job.status == JobStatus.QUEUED, Job.id < job.id)
    ).scalar_one()
    return int(ahead) + 1


def queue_positions(session: Session, jobs: list[Job]) -> dict[int, int]:
    queued_ids = session.execute(
        select(Job.id).where(Job.status == JobStatus.QUEUED).order_by(Job.id)
    ).scalars()
    positions = {job_id: index + 1 for index, job_id in enumerate(queued_ids)}
    return {job.id: positions[job.id] for job in jobs if job.id in positions}


# The columns a metrics row is read with: plain rows rather than ORM objects, which cost several
# times as much CPU to build (the metrics route is the most polled route with the most rows).
METRIC_COLUMNS = (
    EpochMetric.epoch,
    EpochMetric.train_loss,
    EpochMetric.train_accuracy,
    EpochMetric.test_loss,
    EpochMetric.test_accuracy,
    EpochMetric.learning_rate,
    EpochMetric.seconds,
    EpochMetric.images_per_second,
)


# A result row with (at least) the attributes of METRIC_COLUMNS.
MetricRow = Row[*tuple[Any, ...]]


def epoch_metrics(session: Session, job_id: int, *, since_epoch: int = 0) -> list[MetricRow]:
    """The job's epochs in order, as rows with the attributes of `METRIC_COLUMNS`."""
    return list(
        session.execute(
            select(*METRIC_COLUMNS)
            .where(EpochMetric.job_id == job_id, EpochMetric.epoch > since_epoch)
            .order_by(EpochMetric.epoch)
        )
    )


def cancel_job(session: Session, job_id: int) -> Job:
    """A queued job is cancelled at once; a running one is asked to stop at the next batch.
    Cancelling twice is harmless; a finished job cannot be cancelled."""
    job = get_job(session, job_id)
    now = utcnow()
    cancelled_queued = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.CANCELLED, cancel_requested=True, finished_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    asked_running = 0
    if not cancelled_queued:
        asked_running = session.execute(
            update(Job)
            # Asked again: nothing changes, so no event either.
            .where(
                Job.id == job_id, Job.status == JobStatus.RUNNING, Job.cancel_requested.is_(False)
            )
            .values(cancel_requested=True, updated_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
    if cancelled_queued or asked_running:
        record_status(session, job_id)
    session.refresh(job)
    if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        raise JobNotCancellable(f"Job {job_id} already {job.status}; it cannot be cancelled.")
    return job
