"""The reconciler: re-queues jobs whose worker died and re-sends messages the broker lost."""

from __future__ import annotations

import logging
import threading

from jobs.db import session_scope
from jobs.lifecycle import reap_expired_leases, take_due_sends
from jobs.queue import enqueue_after_commit
from jobs.settings import Settings
from worker.runner import running_jobs

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
    def __init__(self, settings: Settings) -> None:
        super().__init__(name="reconciler", daemon=True)
        self.settings = settings
        self._done = threading.Event()

    def run(self) -> None:
        interval = max(0.5, min(self.settings.heartbeat_seconds, self.settings.lease_seconds / 2))
        while not self._done.wait(interval):
            try:
                reconcile_once(self.settings, idle=not running_jobs())
            except Exception:  # the database or broker may be restarting; next pass retries
                logger.exception("reconcile pass failed")

    def stop(self) -> None:
        self._done.set()
