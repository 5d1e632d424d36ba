"""The reconciler: re-queues jobs whose worker died and re-sends messages the broker lost."""

from __future__ import annotations

import logging
import threading

from jobs.db import session_scope
from jobs.lifecycle import reap_expired_leases, take_due_sends
from jobs.queue import enqueue_after_commit
from jobs.settings import Settings
from jobs.tables import utcnow
from jobs.telemetry import forget_worker, worker_heartbeat
from worker.runner import running_jobs, worker_name

logger = logging.getLogger(__name__)


def reconcile_once(settings: Settings, *, idle: bool = False) -> list[int]:
    """One pass; returns the ids of the jobs whose message was (re)sent."""
    with session_scope() as session:
        requeued = reap_expired_leases(session)
    for job_id in requeued:
        logger.warning(
            "job %s: its worker stopped heartbeating; re-queued", job_id, extra={"job_id": job_id}
        )
    with session_scope() as session:
        due = take_due_sends(session, lease_seconds=settings.lease_seconds, idle=idle)
        for job_id in due:
            enqueue_after_commit(session, job_id)
    return due


class Reconciler(threading.Thread):
    """Each pass also records the worker's heartbeat (the `workers` row /metrics reads), so an
    idle worker is seen alive too; a clean stop removes the row."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="reconciler", daemon=True)
        self.settings = settings
        self.name_of_worker = worker_name(settings)
        self.started_at = utcnow()
        self._done = threading.Event()

    def heartbeat(self) -> None:
        with session_scope() as session:
            worker_heartbeat(
                session,
                self.name_of_worker,
                concurrency=self.settings.worker_concurrency,
                started_at=self.started_at,
            )

    def run(self) -> None:
        interval = max(0.5, min(self.settings.heartbeat_seconds, self.settings.lease_seconds / 2))
        while True:
            try:
                self.heartbeat()
            except Exception:  # the database may be restarting; the next pass retries
                logger.exception("worker heartbeat failed")
            if self._done.wait(interval):
                break
            try:
                reconcile_once(self.settings, idle=not running_jobs())
            except Exception:  # the database or broker may be restarting; next pass retries
                logger.exception("reconcile pass failed")

    def stop(self) -> None:
        self._done.set()
        try:
            with session_scope() as session:
                forget_worker(session, self.name_of_worker)
        except Exception:  # noqa: BLE001 - its row then ages like a dead worker's
            logger.warning("could not remove this worker's heartbeat row", exc_info=True)
