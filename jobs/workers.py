"""The worker processes, as each last reported itself: one `workers` row per process, upserted
every reconciler pass and deleted when it stops, so a row whose heartbeat is old is a worker that
died. /metrics shows them, and a worker divides the machine's CPUs by its live peers' job
slots."""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from jobs.db import insert_ignoring_duplicates
from jobs.tables import WorkerRecord, utcnow

# A worker row silent this long is removed (its process is long gone).
FORGET_WORKER_AFTER = timedelta(days=1)


def worker_heartbeat(
    session: Session, name: str, *, concurrency: int, started_at: datetime
) -> None:
    """Record that this worker process is alive now (one row per worker name)."""
    now = utcnow()
    values = {"heartbeat_at": now, "hostname": socket.gethostname(), "pid": os.getpid()}
    updated = session.execute(
        update(WorkerRecord)
        .where(WorkerRecord.name == name)
        .values(concurrency=concurrency, **values)
        .execution_options(synchronize_session=False)
    )
    assert isinstance(updated, CursorResult)
    if updated.rowcount == 0:
        insert_ignoring_duplicates(
            session,
            WorkerRecord,
            [{"name": name, "concurrency": concurrency, "started_at": started_at, **values}],
        )
    session.execute(
        delete(WorkerRecord)
        .where(WorkerRecord.heartbeat_at < now - FORGET_WORKER_AFTER)
        .execution_options(synchronize_session=False)
    )


def workers_on_host(
    session: Session, hostname: str, *, seen_within_seconds: float
) -> list[tuple[int, int]]:
    """(pid, concurrency) of each worker process on `hostname` that reported itself alive in
    the last `seen_within_seconds`."""
    since = utcnow() - timedelta(seconds=seen_within_seconds)
    rows = session.execute(
        select(WorkerRecord.pid, WorkerRecord.concurrency).where(
            WorkerRecord.hostname == hostname, WorkerRecord.heartbeat_at >= since
        )
    )
    return [(int(pid), int(concurrency)) for pid, concurrency in rows]


def forget_worker(session: Session, name: str) -> None:
    """A worker that stops cleanly removes its row: it is not a dead worker."""
    session.execute(
        delete(WorkerRecord)
        .where(WorkerRecord.name == name)
        .execution_options(synchronize_session=False)
    )
