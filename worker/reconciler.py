"""The reconciler: re-queues jobs whose worker died, re-sends messages the broker lost, removes
the staging files of attempts whose worker on this machine was killed, and aborts uploads to
the artifact store that were abandoned long ago."""

from __future__ import annotations

import logging
import threading
import time

from jobs.artifacts import artifact_store
from jobs.db import session_scope
from jobs.lifecycle import reap_expired_leases, take_due_sends
from jobs.queue import enqueue_after_commit
from jobs.retention import sweep_artifact_deletions
from jobs.settings import Settings
from jobs.tables import utcnow
from jobs.workers import forget_worker, worker_heartbeat
from worker.runner import reconcile_interval, running_jobs, worker_name

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
    # Files of jobs deleted by a process that was killed before removing them.
    sweep_artifact_deletions(settings)
    return due


# A multipart upload not completed after this long was abandoned (its worker was killed): each
# new attempt aborts its own job's at once, this sweep catches the rest (deleted jobs, crashes
# between attempts). An S3 lifecycle rule (AbortIncompleteMultipartUpload) does the same.
STALE_UPLOAD_SECONDS = 24 * 3600.0
SWEEP_INTERVAL_SECONDS = 3600.0


def discard_dead_staging(settings: Settings) -> int:
    """Remove the staging files of attempts whose worker on this machine was killed (at start
    and every pass, so a killed worker's checkpoints do not wait a day on the disk)."""
    removed = artifact_store(settings).discard_dead_staging()
    if removed:
        logger.info("removed %s staging file(s) of attempts whose worker was killed", removed)
    return removed


def abort_stale_uploads(settings: Settings) -> int:
    """Abort the store's incomplete uploads older than STALE_UPLOAD_SECONDS, and remove local
    staging files as old (a killed worker's); how many uploads."""
    store = artifact_store(settings)
    removed = store.discard_stale_staging(older_than_seconds=STALE_UPLOAD_SECONDS)
    if removed:
        logger.info("removed %s abandoned staging file(s)", removed)
    aborted = store.abort_incomplete_uploads(older_than_seconds=STALE_UPLOAD_SECONDS)
    if aborted:
        logger.info("aborted %s abandoned upload(s) in the artifact store", aborted)
    return aborted


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
        interval = reconcile_interval(self.settings)
        next_sweep = time.monotonic()
        while True:
            try:
                self.heartbeat()
            except Exception:  # the database may be restarting; the next pass retries
                logger.exception("worker heartbeat failed")
            try:
                discard_dead_staging(self.settings)
            except OSError as error:
                logger.warning("removing a killed worker's staging files failed: %s", error)
            if self._done.wait(interval):
                break
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + SWEEP_INTERVAL_SECONDS
                try:
                    abort_stale_uploads(self.settings)
                except Exception as error:  # the store may be down; the next sweep retries
                    logger.warning("sweeping abandoned uploads failed: %s", error)
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
