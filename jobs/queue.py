"""The queue client: a Celery app configured for long GPU jobs whose state lives in the job
table, and the only message it sends — a job id, by task name. The worker builds its app here
too; the API never imports the worker.

`enqueue_after_commit` holds ids in the session and sends them only once that session's
outermost transaction has committed (a released SAVEPOINT is not a commit): a rolled-back request
never enqueues, a committed one always tries (and the reconciler re-sends whatever the broker
lost)."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from celery import Celery
from kombu.transport import sqlalchemy as kombu_sqlalchemy
from sqlalchemy import event
from sqlalchemy.orm import Session

from jobs.dispatch import PRIORITY_MAX, PRIORITY_MIN
from jobs.settings import Settings, get_settings

logger = logging.getLogger(__name__)

TRAINING_QUEUE = "training"
# Redis message priorities 0..9 (kombu's default steps), 0 first.
BROKER_PRIORITY_STEPS = 10
RUN_JOB_TASK = "worker.run_job"
# A job sent to an idle worker on the embedded broker starts within about this (half of it on
# average). Each poll is a query of the broker's table: an idle worker polling every 0.1 s used
# 3.5 % of a core on the 2-core development VM, every 0.02 s 13 %.
SQLITE_BROKER_POLL_SECONDS = 0.1

# A send must never hang the request that committed the job: the row is already queued, and the
# reconciler re-sends whatever did not arrive. So each socket operation on Redis is bounded, and
# a failed publish is tried once more (on a fresh connection: Redis may have been restarted) and
# then given up. Worst case with Redis frozen: two tries of one timeout each, about 4 s.
BROKER_CONNECT_TIMEOUT_SECONDS = 2.0
BROKER_SOCKET_TIMEOUT_SECONDS = 1.0
PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}


def _prepare_sqlite_broker(url: str) -> Callable[[], sqlite3.Connection]:
    """Create the broker file's folder and switch it to WAL, so the API and workers share it;
    returns how the transport connects to it."""
    path = Path(url.split(":///", 1)[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path, timeout=30) as connection:
        connection.execute("PRAGMA journal_mode=WAL")

    def connect() -> sqlite3.Connection:
        # As the job database: in WAL mode, synchronous=NORMAL makes a commit survive the
        # process being killed, without an fsync per message (a 1,000-job experiment sends
        # 1,000). A power cut may lose the last messages; the reconciler re-sends those.
        connection = sqlite3.connect(path, timeout=30, check_same_thread=False)
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    return connect


def make_celery(settings: Settings, *, include: tuple[str, ...] = ()) -> Celery:
    broker_url = settings.resolved_broker_url
    if broker_url.startswith("sqla+sqlite"):
        # kombu hands these to create_engine() for its SQLAlchemy transport.
        transport_options: dict[str, object] = {"creator": _prepare_sqlite_broker(broker_url)}
        # The transport polls its table (once a second by default); its transport options all
        # go to create_engine(), so the interval can only be set on the class.
        kombu_sqlalchemy.Transport.polling_interval = SQLITE_BROKER_POLL_SECONDS
    else:
        # A running job's message stays unacked until it ends: never let Redis redeliver it early.
        transport_options = {
            "visibility_timeout": settings.visibility_timeout_seconds,
            # One Redis list per message priority, read highest first (broker_priority).
            "priority_steps": list(range(BROKER_PRIORITY_STEPS)),
            "queue_order_strategy": "priority",
            "socket_timeout": BROKER_SOCKET_TIMEOUT_SECONDS,
            "socket_connect_timeout": BROKER_CONNECT_TIMEOUT_SECONDS,
            "socket_keepalive": True,
        }
    celery = Celery("cifar_jobs", broker=broker_url, include=list(include))
    celery.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=TRAINING_QUEUE,
        task_routes={RUN_JOB_TASK: {"queue": TRAINING_QUEUE}},
        broker_transport_options=transport_options,
        broker_connection_timeout=BROKER_CONNECT_TIMEOUT_SECONDS,
        task_publish_retry=True,
        task_publish_retry_policy=PUBLISH_RETRY_POLICY,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        enable_utc=True,
    )
    return celery


@lru_cache
def get_celery() -> Celery:
    return make_celery(get_settings())


def broker_priority(priority: int) -> int:
    """A job's priority as a Redis message priority: 0 is read first there, so the highest job
    priority maps to 0 and the lowest to BROKER_PRIORITY_STEPS - 1."""
    span = PRIORITY_MAX - PRIORITY_MIN
    return round((PRIORITY_MAX - priority) * (BROKER_PRIORITY_STEPS - 1) / span)


def enqueue_job(job_id: int, priority: int | None = None) -> None:
    """Send the job's id (and nothing else) to the training queue. A message only wakes a
    worker, which claims the first job in the database's dispatch order (jobs.dispatch); the
    priority lets Redis hand out the wake-ups of higher-priority jobs first too. The embedded
    broker has no message priorities."""
    options: dict[str, Any] = {}
    if priority is not None and not get_settings().resolved_broker_url.startswith("sqla+"):
        options["priority"] = broker_priority(priority)
    get_celery().send_task(RUN_JOB_TASK, args=[job_id], queue=TRAINING_QUEUE, **options)


_PENDING = "jobs_to_enqueue"


def enqueue_after_commit(session: Session, job_id: int, *, priority: int | None = None) -> None:
    """Send ``job_id`` to the training queue once ``session`` commits (never if it rolls back)."""
    session.info.setdefault(_PENDING, []).append((job_id, priority))


@event.listens_for(Session, "after_commit")
def _send_pending(session: Session) -> None:
    # SQLAlchemy fires after_commit when a SAVEPOINT (begin_nested) is released too: sending
    # then would wake a worker before the job's row is visible to it, and the job would wait
    # a lease for the reconciler's re-send.
    if session.in_nested_transaction():
        return
    for job_id, priority in session.info.pop(_PENDING, []):
        try:
            enqueue_job(job_id, priority)
        except Exception:  # the reconciler re-sends queued jobs whose message never arrived
            logger.exception("could not send job %s to the queue now; it will be re-sent", job_id)


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    # A SAVEPOINT rolled back leaves the outer transaction's ids to send: an id added inside
    # it whose row is gone only wakes a worker that finds nothing to claim.
    if session.in_nested_transaction():
        return
    session.info.pop(_PENDING, None)


def ping_broker(*, timeout_seconds: float) -> None:
    """Connect to the broker once (readiness); raises when it cannot be reached."""
    with get_celery().connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, interval_start=0.2, timeout=timeout_seconds)
