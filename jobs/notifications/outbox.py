"""The outbox: the deliveries owed, made by reading the job event log.

A job's final status is written with its status event (jobs.events) in the transaction that
ends it; this module reads the log after a stored cursor (`event_cursors`, name
`notifications`) and, for each ended job, makes the `notification_deliveries` rows its spec asks
for (the job's, and its experiment's once every job of it has ended), holding the exact body to
send, then moves the cursor, all in one transaction. So a consumer killed at any instant leaves
either nothing done or everything done, the lifecycle never calls this code, and a delivery is
made at least once; the unique key (subject, subject_id, event) makes it exactly once.

Order: a reader must never move its cursor past an event that is not visible yet. On SQLite one
writer commits at a time, so event ids are commit order. On PostgreSQL ids are handed out before
commit, so an event with a lower id can commit after one with a higher id: every transaction that
appends to the log holds an advisory lock shared (jobs.events), and a pass reads only once it has
taken that lock exclusively (without waiting: a pass that cannot, skips); then every event
written so far has committed, and any written later takes a higher id.
docs/design/outbox.md has the rules.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Row, exists, func, select, update
from sqlalchemy.orm import Session

from jobs.db import insert_ignoring_duplicates
from jobs.events import LOG_WRITERS_LOCK, STATUS_EVENT
from jobs.tables import (
    DELIVERY_PENDING,
    TERMINAL_STATUSES,
    EventCursor,
    Experiment,
    Job,
    JobEvent,
    JobStatus,
    NotificationDelivery,
    experiment_status,
    utcnow,
)

CURSOR_NAME = "notifications"
# Events read per pass; a pass that reads a full batch is followed at once by another.
BATCH = 200
ENDED = sorted(str(status) for status in TERMINAL_STATUSES)
UNENDED = sorted(str(status) for status in JobStatus if not status.ended)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _number(value: float | None) -> float | None:
    # A diverged run's NaN loss is not JSON.
    return value if value is not None and math.isfinite(value) else None


JOB_SUMMARY_FIELDS = (
    "id", "name", "tags", "block", "dataset", "status", "error_reason", "error", "experiment_id",
    "epochs_done", "epochs_total", "attempt", "params", "macs",
)  # fmt: skip


def job_summary(job: Job) -> dict[str, Any]:
    summary = {name: getattr(job, name) for name in JOB_SUMMARY_FIELDS}
    summary.update(
        best_test_accuracy=_number(job.best_test_accuracy),
        final_test_accuracy=_number(job.final_test_accuracy),
        final_train_loss=_number(job.final_train_loss),
        created_at=_iso(job.created_at),
        started_at=_iso(job.started_at),
        finished_at=_iso(job.finished_at),
        links={"self": f"/jobs/{job.id}", "metrics": f"/jobs/{job.id}/metrics"},
    )
    return summary


def experiment_summary(experiment: Experiment, jobs: list[Job], status: str) -> dict[str, Any]:
    counts = {value.value: 0 for value in JobStatus}
    for job in jobs:
        counts[job.status] += 1
    return {
        "id": experiment.id,
        "name": experiment.name,
        "preset": experiment.preset,
        "tags": list(experiment.tags),
        "status": status,
        "status_counts": counts,
        "job_count": len(jobs),
        "created_at": _iso(experiment.created_at),
        "jobs": [
            {
                "id": job.id,
                "name": job.name,
                "block": job.block,
                "status": job.status,
                "error_reason": job.error_reason,
                "epochs_done": job.epochs_done,
                "epochs_total": job.epochs_total,
                "best_test_accuracy": _number(job.best_test_accuracy),
                "final_test_accuracy": _number(job.final_test_accuracy),
                "final_train_loss": _number(job.final_train_loss),
            }
            for job in jobs
        ],
        "links": {"self": f"/experiments/{experiment.id}"},
    }


def _wanted(spec: dict[str, Any] | None, status: str) -> str | None:
    """The URL to notify of this status, if the spec asks for it."""
    notify = (spec or {}).get("notify")
    if not notify or status not in notify.get("events", ()):
        return None
    return str(notify["url"])


def _add_delivery(
    session: Session, subject: str, subject_id: int, event: str, url: str, body: dict[str, Any]
) -> None:
    now = utcnow()
    delivery_id = uuid.uuid4().hex
    payload = {
        "delivery_id": delivery_id,
        "event": event,
        "subject": subject,
        "created_at": now.isoformat(),
        subject: body,
    }
    # One row per subject and event: a status is final, so a second reading of the same end
    # (a consumer that died after making it, or a deletion that settled it first) adds nothing.
    insert_ignoring_duplicates(
        session,
        NotificationDelivery,
        [
            {
                "delivery_id": delivery_id,
                "subject": subject,
                "subject_id": subject_id,
                "event": event,
                "url": url,
                "body": json.dumps(payload, separators=(",", ":"), ensure_ascii=False),
                "state": DELIVERY_PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
        ],
    )


def _experiment_deliveries(session: Session, experiment_id: int) -> None:
    """The experiment's delivery, if it asks for one and every job of it has ended."""
    experiment = session.get(Experiment, experiment_id)
    if experiment is None or not (experiment.spec or {}).get("notify"):
        return
    unended = session.execute(
        select(exists().where(Job.experiment_id == experiment_id, Job.status.in_(UNENDED)))
    ).scalar()
    if unended:
        return
    jobs = list(
        session.execute(select(Job).where(Job.experiment_id == experiment_id).order_by(Job.id))
        .scalars()
        .all()
    )
    status = experiment_status(job.status for job in jobs).value
    url = _wanted(experiment.spec, status)
    if url is not None:
        _add_delivery(
            session, "experiment", experiment_id, status, url,
            experiment_summary(experiment, jobs, status),
        )  # fmt: skip


def settle(session: Session, job_ids: Iterable[int]) -> None:
    """Make the deliveries owed for these jobs' ends now (those that have ended), as the
    consumer would: before their rows, and so their events, are deleted."""
    jobs = list(
        session.execute(
            select(Job).where(Job.id.in_(sorted(set(job_ids))), Job.status.in_(ENDED))
        ).scalars()
    )
    experiments = set()
    for job in jobs:
        url = _wanted(job.spec, job.status)
        if url is not None:
            _add_delivery(session, "job", job.id, job.status, url, job_summary(job))
        if job.experiment_id is not None:
            experiments.add(job.experiment_id)
    for experiment_id in sorted(experiments):
        _experiment_deliveries(session, experiment_id)


def _cursor(session: Session) -> EventCursor | None:
    """The cursor row, locked; None when another consumer holds it (it is doing this pass)."""
    locked = (
        select(EventCursor).where(EventCursor.name == CURSOR_NAME).with_for_update(skip_locked=True)
    )
    cursor = session.execute(locked).scalar_one_or_none()
    if cursor is not None or session.get(EventCursor, CURSOR_NAME) is not None:
        return cursor
    # No cursor yet (an emptied database): read the log from its start.
    row = {"name": CURSOR_NAME, "event_id": 0, "updated_at": utcnow()}
    insert_ignoring_duplicates(session, EventCursor, [row])
    return session.execute(locked).scalar_one_or_none()


def _no_event_being_written(session: Session) -> bool:
    """PostgreSQL: take the log writers' lock exclusively for this transaction, if no writer
    holds it now (True); SQLite's one writer needs none."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    return bool(session.execute(select(func.pg_try_advisory_xact_lock(LOG_WRITERS_LOCK))).scalar())


def _ended_events(session: Session, cursor: EventCursor) -> list[Row[Any]]:
    """The next status events after the cursor."""
    return list(
        session.execute(
            select(JobEvent.id, JobEvent.job_id, JobEvent.data)
            .where(JobEvent.kind == STATUS_EVENT, JobEvent.id > cursor.event_id)
            .order_by(JobEvent.id)
            .limit(BATCH)
        ).all()
    )


def consume(session: Session) -> int:
    """One pass over the log in the caller's transaction: the deliveries owed for the ends
    read, and the cursor moved past them. Returns how many status events were read (BATCH: there
    may be more)."""
    if not _no_event_being_written(session):
        return 0  # the next pass reads them
    cursor = _cursor(session)
    if cursor is None:
        return 0
    rows = _ended_events(session, cursor)
    ended = [row.job_id for row in rows if (row.data or {}).get("status") in TERMINAL_STATUSES]
    if ended:
        settle(session, ended)
    if rows:
        last = rows[-1]
        session.execute(
            update(EventCursor)
            .where(EventCursor.name == CURSOR_NAME)
            .values(event_id=last.id, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    return len(rows)
