"""Runs one claimed job: heartbeats, cooperative stop, per-epoch records, the final state.
No Celery in here: the task is a thin shell around run_job()."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from pathlib import Path

from sqlalchemy import select

from app.config import Settings
from app.db import session_scope
from app.schemas import JobCreate
from app.services.lifecycle import (
    CheckpointRecord,
    Claim,
    LeaseLost,
    claim_job,
    finish_job,
    record_epoch,
    release_job,
    renew_lease,
)
from app.tables import Checkpoint, JobStatus

logger = logging.getLogger(__name__)


# Set when the worker is asked to stop (SIGTERM: a deploy, a preemption notice): the running job
# stops at the next batch and goes back to the queue instead of holding up the shutdown.
shutting_down = threading.Event()


def worker_name(settings: Settings) -> str:
    return settings.worker_name or f"{socket.gethostname()}-{os.getpid()}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class Heartbeat(threading.Thread):
    """Renews the lease every HEARTBEAT_SECONDS; notices cancel requests and lost leases."""

    def __init__(self, claim: Claim, settings: Settings) -> None:
        super().__init__(name=f"heartbeat-{claim.job_id}", daemon=True)
        self.claim = claim
        self.settings = settings
        self.stop_reason: str | None = None
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.settings.heartbeat_seconds):
            try:
                with session_scope() as session:
                    state = renew_lease(
                        session, self.claim, lease_seconds=self.settings.lease_seconds
                    )
            except Exception:  # a database blip: try again next beat; the lease has slack
                logger.exception("heartbeat for job %s failed", self.claim.job_id)
                continue
            if not state.held:
                self.stop_reason = "lease_lost"
            elif state.cancel_requested:
                self.stop_reason = "cancelled"

    def stop(self) -> None:
        self._done.set()


def _resume_checkpoint(job_id: int, artifact_dir: Path) -> Path | None:
    with session_scope() as session:
        relative = session.execute(
            select(Checkpoint.relative_path).where(
                Checkpoint.job_id == job_id, Checkpoint.name == "latest"
            )
        ).scalar_one_or_none()
    if relative is None:
        return None
    path = artifact_dir / relative
    if not path.is_file():
        logger.warning("job %s: latest checkpoint %s is missing; starting over", job_id, path)
        return None
    return path


def run_job(job_id: int, *, settings: Settings) -> str:
    """Claim the job and train it. Returns the outcome; a duplicate delivery returns 'skipped'."""
    name = worker_name(settings)
    with session_scope() as session:
        claim = claim_job(session, job_id, worker=name, lease_seconds=settings.lease_seconds)
    if claim is None:
        logger.info("job %s is not claimable (finished, running elsewhere or cancelled)", job_id)
        return "skipped"
    logger.info("job %s attempt %s claimed by %s", job_id, claim.attempt, name)
    heartbeat = Heartbeat(claim, settings)
    heartbeat.start()
    try:
        return _train_claimed(claim, settings, heartbeat)
    finally:
        heartbeat.stop()


def _finish(
    claim: Claim, status: str, *, error_reason: str | None = None, error: str | None = None
) -> str:
    with session_scope() as session:
        done = finish_job(session, claim, status, error_reason=error_reason, error=error)
    if not done:
        logger.warning(
            "job %s attempt %s lost its lease before finishing", claim.job_id, claim.attempt
        )
        return "lease_lost"
    logger.info("job %s %s%s", claim.job_id, status, f" ({error_reason})" if error_reason else "")
    return status


def _train_claimed(claim: Claim, settings: Settings, heartbeat: Heartbeat) -> str:
    from engine.data import DatasetUnavailable
    from engine.trainer import EpochReport, train

    artifact_dir = settings.resolved_artifact_dir
    attempt_dir = artifact_dir / "jobs" / str(claim.job_id) / f"attempt-{claim.attempt}"
    started = time.monotonic()
    timed_out = False

    def should_stop() -> bool:
        nonlocal timed_out
        if time.monotonic() - started > settings.max_job_seconds:
            timed_out = True
        return timed_out or heartbeat.stop_reason is not None or shutting_down.is_set()

    def on_epoch(report: EpochReport) -> None:
        records = [
            CheckpointRecord(
                name=checkpoint_name,
                epoch=report.metrics.epoch,
                size_bytes=path.stat().st_size,
                sha256=sha256_file(path),
                relative_path=str(path.resolve().relative_to(artifact_dir)),
            )
            for checkpoint_name, path in report.checkpoints.items()
        ]
        with session_scope() as session:
            record_epoch(
                session,
                claim,
                [m.to_dict() for m in report.history],
                records,
                lease_seconds=settings.lease_seconds,
            )

    resume_from = _resume_checkpoint(claim.job_id, artifact_dir)
    if resume_from is not None:
        logger.info("job %s resuming from %s", claim.job_id, resume_from)
    try:
        spec = JobCreate.model_validate(claim.spec)
        config = spec.train_config()
        url, md5 = settings.download_source(config.dataset)
        result = train(
            config,
            data_dir=settings.data_dir,
            device=None if settings.device == "auto" else settings.device,
            checkpoint_dir=attempt_dir,
            resume_from=resume_from,
            on_epoch=on_epoch,
            should_stop=should_stop,
            download=settings.allow_download,
            download_url=url,
            download_md5=md5,
        )
    except LeaseLost:
        logger.warning("job %s attempt %s was taken over; stopping", claim.job_id, claim.attempt)
        return "lease_lost"
    except DatasetUnavailable as error:
        return _finish(
            claim, JobStatus.FAILED, error_reason="dataset_unavailable", error=str(error)
        )
    except Exception as error:
        logger.exception("job %s failed", claim.job_id)
        return _finish(
            claim,
            JobStatus.FAILED,
            error_reason="training_error",
            error=f"{type(error).__name__}: {error}",
        )
    if not result.stopped:
        return _finish(claim, JobStatus.SUCCEEDED)
    if timed_out:
        return _finish(
            claim,
            JobStatus.FAILED,
            error_reason="timeout",
            error=f"The job ran longer than MAX_JOB_SECONDS={settings.max_job_seconds:g}.",
        )
    if heartbeat.stop_reason == "cancelled":
        return _finish(claim, JobStatus.CANCELLED)
    if shutting_down.is_set() and heartbeat.stop_reason is None:
        return _release(claim)
    return "lease_lost"


def _release(claim: Claim) -> str:
    from worker.celery_app import enqueue_job

    with session_scope() as session:
        released = release_job(session, claim)
    if not released:
        return "lease_lost"
    logger.info("job %s released for another worker (this one is shutting down)", claim.job_id)
    try:
        enqueue_job(claim.job_id)
    except Exception:  # the reconciler re-sends it
        logger.exception("could not re-send job %s", claim.job_id)
    return "released"
