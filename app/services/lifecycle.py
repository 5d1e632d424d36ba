"""Job state transitions. Each is a compare-and-set UPDATE: terminal states never change, and a
worker whose lease was taken over can write nothing more."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.tables import Checkpoint, EpochMetric, Job, JobStatus, utcnow

# The reaper re-sends a queued job's message after lease_seconds, then waits twice as long each
# time, up to 2**RESEND_BACKOFF_CAP leases: a lost message is replaced, a long queue stays short.
RESEND_BACKOFF_CAP = 6


class LeaseLost(Exception):
    """The worker no longer holds the job: another attempt took it over, or it ended."""


@dataclass(frozen=True)
class Claim:
    job_id: int
    attempt: int
    lease_token: str
    worker: str
    spec: dict[str, Any]


@dataclass(frozen=True)
class LeaseState:
    held: bool
    cancel_requested: bool


@dataclass(frozen=True)
class CheckpointRecord:
    name: str
    epoch: int
    size_bytes: int
    sha256: str
    relative_path: str


def _fenced(claim: Claim) -> Any:
    return and_(
        Job.id == claim.job_id,
        Job.lease_token == claim.lease_token,
        Job.status == JobStatus.RUNNING,
    )


def claim_job(session: Session, job_id: int, *, worker: str, lease_seconds: float) -> Claim | None:
    """Take a queued job for this worker (attempt + 1). None if it is not claimable: a duplicate
    delivery of a running or finished job, or a cancelled one."""
    now = utcnow()
    token = uuid.uuid4().hex
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED, Job.cancel_requested.is_(False))
        .values(
            status=JobStatus.RUNNING,
            attempt=Job.attempt + 1,
            lease_token=token,
            worker=worker,
            heartbeat_at=now,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            started_at=now if _never_started(session, job_id) else Job.started_at,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    job = session.execute(select(Job.attempt, Job.spec).where(Job.id == job_id)).one()
    return Claim(job_id, job.attempt, token, worker, job.spec)


def _never_started(session: Session, job_id: int) -> bool:
    started = session.execute(select(Job.started_at).where(Job.id == job_id)).scalar_one_or_none()
    return started is None


def renew_lease(session: Session, claim: Claim, *, lease_seconds: float) -> LeaseState:
    """Heartbeat: extend the lease; tells whether it is still held and whether cancel was asked."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(_fenced(claim))
        .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return LeaseState(held=False, cancel_requested=False)
    cancel = session.execute(select(Job.cancel_requested).where(Job.id == claim.job_id)).scalar()
    return LeaseState(held=True, cancel_requested=bool(cancel))


def _upsert(session: Session, table: Any, values: dict[str, Any], keys: list[str]) -> None:
    dialect = session.get_bind().dialect.name
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[dialect]
    statement = insert(table).values(**values)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=keys, set_={k: v for k, v in values.items() if k not in keys}
        )
    )


def record_epoch(
    session: Session,
    claim: Claim,
    history: list[dict[str, Any]],
    checkpoints: list[CheckpointRecord],
    *,
    lease_seconds: float,
) -> None:
    """Store the epochs in `history` (one row per epoch, re-recording is harmless) and the
    checkpoints, and extend the lease, in the caller's transaction. Raises LeaseLost."""
    now = utcnow()
    last = history[-1]
    best = max(row["test_accuracy"] for row in history)
    result = session.execute(
        update(Job)
        .where(_fenced(claim))
        .values(
            epochs_done=last["epoch"],
            best_test_accuracy=best,
            final_test_accuracy=last["test_accuracy"],
            final_train_loss=last["train_loss"],
            heartbeat_at=now,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise LeaseLost(f"job {claim.job_id} attempt {claim.attempt} lost its lease")
    columns = [c.name for c in EpochMetric.__table__.columns if c.name not in ("id", "job_id")]
    for row in history:
        values = {k: row[k] for k in columns if k in row}
        _upsert(
            session,
            EpochMetric,
            {"job_id": claim.job_id, **values, "recorded_at": now},
            ["job_id", "epoch"],
        )
    for record in checkpoints:
        _upsert(
            session,
            Checkpoint,
            {
                "job_id": claim.job_id,
                "name": record.name,
                "epoch": record.epoch,
                "size_bytes": record.size_bytes,
                "sha256": record.sha256,
                "relative_path": record.relative_path,
                "recorded_at": now,
            },
            ["job_id", "name"],
        )


def finish_job(
    session: Session,
    claim: Claim,
    status: str,
    *,
    error_reason: str | None = None,
    error: str | None = None,
) -> bool:
    """running → succeeded / failed / cancelled, only while this claim holds the lease."""
    assert status in JobStatus.TERMINAL
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(_fenced(claim))
        .values(
            status=status,
            error_reason=error_reason,
            error=error,
            lease_token=None,
            lease_expires_at=None,
            finished_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]


def release_job(session: Session, claim: Claim) -> bool:
    """running → queued for a worker that is shutting down: the job resumes elsewhere from its
    last checkpoint, and the attempt does not count against MAX_ATTEMPTS."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(_fenced(claim))
        .values(
            status=JobStatus.QUEUED,
            attempt=Job.attempt - 1,
            lease_token=None,
            lease_expires_at=None,
            worker=None,
            enqueued_at=now,
            enqueue_count=Job.enqueue_count + 1,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]


def reap_expired_leases(session: Session, *, now: datetime | None = None) -> list[int]:
    """Jobs whose worker stopped heartbeating: re-queue them (they resume from their last
    checkpoint), or end them when cancel was asked or the attempts are spent. Returns the ids
    re-queued."""
    now = now or utcnow()
    expired = session.execute(
        select(Job.id, Job.lease_token, Job.attempt, Job.max_attempts, Job.cancel_requested).where(
            Job.status == JobStatus.RUNNING, Job.lease_expires_at < now
        )
    ).all()
    requeued = []
    for job in expired:
        if job.cancel_requested:
            values: dict[str, Any] = {"status": JobStatus.CANCELLED, "finished_at": now}
        elif job.attempt >= job.max_attempts:
            values = {
                "status": JobStatus.FAILED,
                "finished_at": now,
                "error_reason": "worker_lost",
                "error": f"The worker stopped responding on each of {job.attempt} attempts.",
            }
        else:
            values = {"status": JobStatus.QUEUED, "enqueued_at": None}
        result = session.execute(
            update(Job)
            .where(
                Job.id == job.id,
                Job.status == JobStatus.RUNNING,
                Job.lease_token == job.lease_token,
                Job.lease_expires_at < now,
            )
            .values(**values, lease_token=None, lease_expires_at=None, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1 and values["status"] == JobStatus.QUEUED:  # type: ignore[attr-defined]
            requeued.append(job.id)
    return requeued


def take_due_sends(
    session: Session, *, lease_seconds: float, now: datetime | None = None
) -> list[int]:
    """Queued jobs whose message may be lost (never sent, or sent long ago and still not
    claimed). Marks each as sent; the caller sends after committing."""
    now = now or utcnow()
    candidates = session.execute(
        select(Job.id, Job.enqueued_at, Job.enqueue_count).where(
            Job.status == JobStatus.QUEUED,
            or_(
                Job.enqueued_at.is_(None), Job.enqueued_at < now - timedelta(seconds=lease_seconds)
            ),
        )
    ).all()
    due = []
    for job in candidates:
        if job.enqueued_at is not None:
            backoff = lease_seconds * 2 ** min(max(job.enqueue_count - 1, 0), RESEND_BACKOFF_CAP)
            if job.enqueued_at > now - timedelta(seconds=backoff):
                continue
        result = session.execute(
            update(Job)
            .where(
                Job.id == job.id,
                Job.status == JobStatus.QUEUED,
                Job.enqueue_count == job.enqueue_count,
            )
            .values(enqueued_at=now, enqueue_count=job.enqueue_count + 1)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            due.append(job.id)
    return due
