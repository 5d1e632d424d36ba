"""Runs one claimed job: the lease and cancel watcher, per-epoch records, checkpoint pointers,
the final state. No Celery in here: the task is a thin shell around run_job(), and the trainer
is a parameter, so every outcome can be tested in-process in milliseconds."""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import select

from jobs.artifacts import (
    ArtifactDamaged,
    ArtifactMissing,
    ArtifactRecord,
    ArtifactStore,
    ArtifactStoreUnavailable,
    artifact_store,
    store_at,
)
from jobs.checkpoints import prunable_checkpoints
from jobs.db import session_scope
from jobs.lifecycle import (
    CheckpointRecord,
    Claim,
    LeaseLost,
    StopReason,
    cancel_requested,
    claim_next_job,
    finish_job,
    pause_job,
    record_checkpoint,
    record_epoch,
    release_job,
    renew_lease,
    repair_history,
)
from jobs.logs import log_context
from jobs.queue import enqueue_after_commit
from jobs.retry import TransientDatabaseError, retry_transient
from jobs.settings import Settings
from jobs.tables import Checkpoint, FailureReason, Job, JobStatus
from jobs.workers import workers_on_host
from worker import telemetry
from worker.cpus import available_cpus, job_slots_sharing_cpus, threads_per_job
from worker.uploads import FIRST_RETRY_SECONDS, MAX_RETRY_SECONDS, CheckpointUploads, UploadFailed

logger = logging.getLogger(__name__)

# Set when the worker is asked to stop (SIGTERM: a deploy, a preemption notice): the running job
# stops at the next batch and goes back to the queue instead of holding up the shutdown.
shutting_down = threading.Event()

# How often the watcher reads cancel_requested: a cancel reaches the job within this, or one
# batch, whichever is longer, whatever HEARTBEAT_SECONDS is.
CANCEL_POLL_SECONDS = 0.5

# A worker that is stopping (SIGTERM) waits at most this long for checkpoints still uploading
# before it hands the job back; the next attempt resumes from the last one recorded.
SHUTDOWN_UPLOAD_GRACE_SECONDS = 10.0

Trainer = Callable[..., Any]


class Outcome(StrEnum):
    """How run_job ended, for the task's result and the log; the job row holds the truth."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PRUNED = "pruned"  # a search's pruner stopped the trial
    PAUSED = "paused"  # a search's pruner paused the trial at a rung; it waits for its bracket
    RELEASED = "released"  # handed back to the queue by a stopping worker
    LEASE_LOST = "lease_lost"  # another attempt owns the job now
    DATABASE_UNAVAILABLE = "database_unavailable"  # the lease will expire; the reaper requeues
    SKIPPED = "skipped"  # nothing was left to claim (a duplicate message)


_running: set[int] = set()
_running_lock = threading.Lock()


def running_jobs() -> int:
    """How many jobs this process is training now (the reconciler re-sends faster when 0)."""
    with _running_lock:
        return len(_running)


def worker_name(settings: Settings) -> str:
    return settings.worker_name or f"{socket.gethostname()}-{os.getpid()}"


class LeaseWatcher(threading.Thread):
    """Renews the lease every HEARTBEAT_SECONDS and reads cancel_requested every
    CANCEL_POLL_SECONDS; `stop_reason` becomes CANCELLED or LEASE_LOST."""

    def __init__(self, claim: Claim, settings: Settings) -> None:
        super().__init__(name=f"lease-{claim.job_id}", daemon=True)
        # A new thread starts with an empty context: carry the job's log ids over.
        self._log_context = contextvars.copy_context()
        self.claim = claim
        self.settings = settings
        self.stop_reason: StopReason | None = None
        self._done = threading.Event()

    def check_cancel(self) -> None:
        with session_scope(write=False) as session:
            state = cancel_requested(session, self.claim)
        if state is None:
            self.stop_reason = StopReason.LEASE_LOST
        elif state:
            self.stop_reason = StopReason.CANCELLED

    def renew(self) -> None:
        with session_scope() as session:
            state = renew_lease(session, self.claim, lease_seconds=self.settings.lease_seconds)
        if not state.held:
            self.stop_reason = StopReason.LEASE_LOST
        elif state.cancel_requested:
            self.stop_reason = StopReason.CANCELLED

    def run(self) -> None:
        self._log_context.run(self._watch)

    def _watch(self) -> None:
        interval = min(CANCEL_POLL_SECONDS, self.settings.heartbeat_seconds)
        next_renewal = time.monotonic() + self.settings.heartbeat_seconds
        while not self._done.wait(interval):
            try:
                if time.monotonic() >= next_renewal:
                    self.renew()
                    next_renewal = time.monotonic() + self.settings.heartbeat_seconds
                else:
                    self.check_cancel()
            except Exception as error:  # a database blip: try again; the lease has slack
                logger.warning("lease check for job %s failed: %s", self.claim.job_id, error)

    def stop(self) -> None:
        self._done.set()


def job_cpu_threads(settings: Settings, *, resumed_with: int | None = None) -> tuple[int, str]:
    """The intra-op CPU threads of each job this worker process trains, and where the number
    comes from: TORCH_THREADS when set; else `resumed_with`, the count the checkpoint a job
    resumes from was trained with (on the CPU another count rounds differently, and a resumed
    run must reproduce a straight one); else the CPUs it may use divided by the job slots of
    the live worker processes on this machine that share them (its own WORKER_CONCURRENCY
    when they cannot be read)."""
    if settings.torch_threads > 0:
        threads = threads_per_job(1, 1, settings.torch_threads)
        if resumed_with is not None and resumed_with != threads:
            return threads, (
                f"TORCH_THREADS, not the {resumed_with} of the checkpoint it resumes from: "
                "on the CPU its metrics may differ from a straight run's"
            )
        return threads, "TORCH_THREADS"
    if resumed_with is not None:
        return resumed_with, "kept from the checkpoint it resumes from"
    cpus = available_cpus()
    slots = settings.worker_concurrency
    try:
        with session_scope(write=False) as session:
            peers = workers_on_host(
                session, socket.gethostname(), seen_within_seconds=_peer_seen_within(settings)
            )
        slots = job_slots_sharing_cpus(
            peers,
            own_pid=os.getpid(),
            own_concurrency=settings.worker_concurrency,
            own_cpus=os.sched_getaffinity(0),
        )
    except Exception as error:  # a database hiccup must not stop a job: own slots only
        logger.warning("could not read the other workers on this machine: %s", error)
    threads = threads_per_job(cpus, slots)
    return threads, (
        f"{cpus} usable CPUs shared by {slots} job slots of the workers on this machine, "
        f"WORKER_CONCURRENCY={settings.worker_concurrency} here"
    )


def reconcile_interval(settings: Settings) -> float:
    """Seconds between a worker's reconciler passes, each of which records its heartbeat."""
    return max(0.5, min(settings.heartbeat_seconds, settings.lease_seconds / 2))


def _peer_seen_within(settings: Settings) -> float:
    """A worker process is live if it reported itself within three of its reconciler passes."""
    return 3 * reconcile_interval(settings)


def run_job(job_id: int, *, settings: Settings, trainer: Trainer | None = None) -> Outcome:
    """A message for ``job_id`` arrived: claim the oldest queued job (usually that one) and
    train it. Returns the outcome; 'skipped' when nothing is left to claim (a duplicate)."""
    name = worker_name(settings)
    with session_scope() as session:
        claim = claim_next_job(session, worker=name, lease_seconds=settings.lease_seconds)
    if claim is None:
        logger.info("message for job %s: no queued job left to claim", job_id)
        return Outcome.SKIPPED
    with _running_lock:
        _running.add(claim.job_id)
    try:
        with log_context(
            job_id=claim.job_id, experiment_id=claim.experiment_id, attempt=claim.attempt
        ):
            return _run_claimed(claim, settings, trainer)
    finally:
        with _running_lock:
            _running.discard(claim.job_id)


def _run_claimed(claim: Claim, settings: Settings, trainer: Trainer | None) -> Outcome:
    job_id = claim.job_id
    name = claim.worker
    logger.info("job %s attempt %s claimed by %s", job_id, claim.attempt, name)
    watcher = LeaseWatcher(claim, settings)
    try:
        watcher.check_cancel()  # a job cancelled right at claim trains nothing
    except Exception as error:
        logger.warning("cancel check for job %s failed: %s", job_id, error)
    watcher.start()
    try:
        return JobRun(claim, settings, watcher, trainer).run()
    finally:
        watcher.stop()


class JobRun:
    """One attempt of one job, from resume to final state."""

    def __init__(
        self, claim: Claim, settings: Settings, watcher: LeaseWatcher, trainer: Trainer | None
    ) -> None:
        self.claim = claim
        self.settings = settings
        self.watcher = watcher
        self.trainer = trainer
        self.store = artifact_store(settings)
        # The store the checkpoint resumed from is in (release_local_file goes to it).
        self.resume_store = self.store
        self.attempt_dir = self.store.staging_dir(claim.job_id, claim.attempt)
        # Checkpoints are stored and recorded on this thread while training goes on.
        self.uploads = CheckpointUploads(
            self.store,
            lambda epoch: self.store.checkpoint_key(claim.job_id, claim.attempt, epoch),
            self._record_checkpoint,
            timeout_seconds=settings.artifact_upload_timeout_seconds,
            name=f"upload-{claim.job_id}",
        )
        self.started = time.monotonic()
        self.timed_out = False
        self.shutdown_seen = False
        # What the last recorded epoch decided (record_epoch), if it said stop.
        self.epoch_stop: StopReason | None = None
        self.history_repaired = False
        self.block = str(claim.config.get("block", "unknown"))
        # When each checkpoint file was handed to the uploads: its save time runs until recorded.
        self._handed_over: dict[int, float] = {}

    # -- callbacks from the trainer, on the training thread ---------------------------------

    def should_stop(self) -> bool:
        if time.monotonic() - self.started > self.settings.max_job_seconds:
            self.timed_out = True
        if shutting_down.is_set() and not self.shutdown_seen:
            self.shutdown_seen = True
            logger.info(
                "job %s: the worker is shutting down; stopping at this batch", self.claim.job_id
            )
        return (
            self.timed_out
            or self.epoch_stop is not None
            or self.watcher.stop_reason is not None
            or self.uploads.failure is not None
            or shutting_down.is_set()
        )

    @property
    def stop_reason(self) -> StopReason | None:
        """Why training stopped early, most binding first: a lost lease ends all writing."""
        watched = self.watcher.stop_reason
        if watched == StopReason.LEASE_LOST or isinstance(self.uploads.failure, LeaseLost):
            return StopReason.LEASE_LOST
        if self.timed_out:
            return StopReason.TIMEOUT
        if self.epoch_stop is not None:
            return self.epoch_stop
        if watched is not None:
            return watched
        if shutting_down.is_set():
            return StopReason.SHUTDOWN
        return None

    def _write(self, work: Callable[[Any], object]) -> None:
        """One transaction, retried while the database error is transient."""

        def attempt() -> None:
            with session_scope() as session:
                work(session)

        retry_transient(attempt, deadline_seconds=self.settings.lease_seconds / 2)

    def on_epoch(self, report: Any) -> None:
        history = [item.to_dict() for item in report.history]
        metrics = report.metrics.to_dict()

        def work(session: Any) -> None:
            if not self.history_repaired:
                added = repair_history(session, self.claim, history[:-1])
                if added:
                    logger.info(
                        "job %s: recorded epochs %s from its checkpoint", self.claim.job_id, added
                    )
            decision = record_epoch(
                session, self.claim, metrics, lease_seconds=self.settings.lease_seconds
            )
            self.epoch_stop = decision.stop

        self._write(work)
        self.history_repaired = True
        telemetry.observe_epoch(self.block, metrics)
        logger.info(
            "job %s epoch %s recorded: test accuracy %.4f, %.1f s, %.0f images/s",
            self.claim.job_id,
            metrics["epoch"],
            metrics["test_accuracy"],
            metrics["seconds"],
            metrics["images_per_second"],
        )

    def on_checkpoint(self, written: Any) -> None:
        """A checkpoint file is whole on local disk: hand it to the uploads and go on."""
        self._handed_over[written.epoch] = time.monotonic()
        self.uploads.submit(written)

    def _record_checkpoint(self, written: Any, stored: ArtifactRecord) -> None:
        """On the upload thread, once the store holds the checkpoint: record it (fenced by the
        lease) and prune the files no name points at any more."""
        started = self._handed_over.pop(written.epoch, time.monotonic())
        record = CheckpointRecord(
            epoch=written.epoch,
            size_bytes=stored.size_bytes,
            sha256=stored.sha256,
            key=stored.key,
            store_url=self.store.locator,
        )
        pruned: list[tuple[str, str]] = []

        def work(session: Any) -> None:
            pruned.clear()
            record_checkpoint(session, self.claim, record)
            job = session.get(Job, self.claim.job_id)
            for row in prunable_checkpoints(session, job):
                pruned.append((row.store_url, row.key))
                session.delete(row)

        self._write(work)
        telemetry.observe_checkpoint(self.block, stored.size_bytes, time.monotonic() - started)
        # Only once no row points at them any more, each from the store that holds it.
        for locator in sorted({locator for locator, _ in pruned}):
            keys = [key for where, key in pruned if where == locator]
            try:
                self._store_of(locator).delete(keys)
            except (ValueError, OSError) as error:
                logger.warning("could not remove old checkpoints %s: %s", keys, error)

    # -- the attempt -----------------------------------------------------------------------

    def resume_from(self) -> Path | None:
        """A local file of the newest recorded checkpoint whose object is intact (size and
        sha256 as recorded); a store that cannot be reached is retried for up to
        ARTIFACT_UPLOAD_TIMEOUT_SECONDS."""
        with session_scope(write=False) as session:
            rows = session.execute(
                select(
                    Checkpoint.key, Checkpoint.size_bytes, Checkpoint.sha256, Checkpoint.store_url
                )
                .where(Checkpoint.job_id == self.claim.job_id)
                .order_by(Checkpoint.epoch.desc())
            ).all()
        # Hashed after the read transaction: no connection is held while files are read.
        for row in rows:
            record = ArtifactRecord(row.key, row.size_bytes, row.sha256)
            try:
                store = self._store_of(row.store_url)
                path = self._local_file(store, record)
            except (ArtifactMissing, ArtifactDamaged) as error:
                logger.warning("%s: %s; trying an older one", record.key, error)
                continue
            except ValueError as error:  # a store this worker cannot open (its settings)
                logger.warning("%s is in a store not usable here: %s", record.key, error)
                continue
            self.resume_store = store
            return path
        if rows:
            logger.warning("job %s: no intact checkpoint; starting over", self.claim.job_id)
        return None

    def _store_of(self, locator: str) -> ArtifactStore:
        """The store a checkpoint row names: the configured one, or one it was recorded in
        before ARTIFACT_URL changed."""
        return self.store if locator == self.store.locator else store_at(locator, self.settings)

    def _local_file(self, store: ArtifactStore, record: ArtifactRecord) -> Path:
        started = time.monotonic()
        wait = FIRST_RETRY_SECONDS
        while True:
            try:
                return store.local_file(record)
            except ArtifactStoreUnavailable as error:
                elapsed = time.monotonic() - started
                if elapsed + wait > self.settings.artifact_upload_timeout_seconds:
                    raise StoreUnavailable(
                        f"The checkpoint to resume from ({record.key}) could not be read from "
                        f"the artifact store for {elapsed:.0f} s "
                        f"(ARTIFACT_UPLOAD_TIMEOUT_SECONDS): {error}"
                    ) from error
                logger.warning("reading %s failed: %s; again in %.1f s", record.key, error, wait)
                time.sleep(wait)
                wait = min(wait * 2, MAX_RETRY_SECONDS)

    def _abort_abandoned_uploads(self) -> None:
        """Earlier attempts of this job may have been killed mid-upload: their incomplete
        uploads will never be completed (those attempts no longer hold the lease)."""
        try:
            aborted = self.store.abort_incomplete_uploads(
                self.store.job_prefix(self.claim.job_id),
                excluding=self.store.attempt_prefix(*self._ids()),  # this attempt's own
            )
        except Exception as error:  # worth no failure: the worker's periodic sweep retries
            logger.warning("job %s: abandoned uploads not aborted: %s", self.claim.job_id, error)
            return
        if aborted:
            logger.info("job %s: aborted %s abandoned upload(s)", self.claim.job_id, aborted)

    def run(self) -> Outcome:
        try:
            self.store.prepare_staging(self.claim.job_id, self.claim.attempt)
        except OSError as error:  # then only the day-old sweep removes what a kill leaves
            logger.warning("job %s: staging folder not prepared: %s", self.claim.job_id, error)
        self.uploads.start()
        try:
            return self._run()
        finally:
            self.uploads.close()
            self.store.discard_staging(self.claim.job_id, self.claim.attempt)

    def _settle_uploads(self, timeout: float | None = None) -> Outcome | None:
        """Wait for the checkpoints still uploading; an outcome when recording them showed that
        the attempt cannot go on (its lease is lost, the database stayed unavailable)."""
        self.uploads.drain(timeout)
        failure = self.uploads.failure
        if isinstance(failure, LeaseLost):
            logger.warning("job %s attempt %s was taken over; stopping", *self._ids())
            return Outcome.LEASE_LOST
        if isinstance(failure, TransientDatabaseError):
            logger.warning(
                "job %s: the database stayed unavailable (%s)", self.claim.job_id, failure
            )
            return self._release()
        return None

    def _upload_failure(self) -> Outcome | None:
        """Fail the job when one of its checkpoints could not be stored."""
        failure = self.uploads.failure
        if failure is None:
            return None
        if isinstance(failure, UploadFailed):
            return self._finish(
                JobStatus.FAILED,
                error_reason=FailureReason.ARTIFACT_STORE_UNAVAILABLE,
                error=str(failure),
            )
        return self._finish(
            JobStatus.FAILED,
            error_reason=FailureReason.TRAINING_ERROR,
            error=f"{type(failure).__name__}: {failure}",
        )

    def _run(self) -> Outcome:
        from engine.checkpoint import StorageFull, checkpoint_cpu_threads
        from engine.config import TrainConfig
        from engine.data import DatasetUnavailable
        from engine.trainer import TrainingDiverged

        trainer: Trainer
        if self.trainer is not None:
            trainer = self.trainer
        else:
            from engine.trainer import train as trainer
        resume: Path | None = None
        try:
            config = TrainConfig.model_validate(self.claim.config)
            # In the background: a store that does not answer must not hold up training.
            threading.Thread(
                target=self._abort_abandoned_uploads, name=f"abort-{self.claim.job_id}", daemon=True
            ).start()
            resume = self.resume_from()
            if resume is not None:
                logger.info("job %s resuming from %s", self.claim.job_id, resume)
            url, md5 = self.settings.download_source(config.dataset)
            resumed_with = checkpoint_cpu_threads(resume) if resume is not None else None
            cpu_threads, why = job_cpu_threads(self.settings, resumed_with=resumed_with)
            logger.info(
                "job %s attempt %s trains with %s CPU threads (%s)", *self._ids(), cpu_threads, why
            )
            result = trainer(
                config,
                data_dir=self.settings.data_dir,
                device=None if self.settings.device == "auto" else self.settings.device,
                checkpoint_dir=self.attempt_dir,
                resume_from=resume,
                on_epoch=self.on_epoch,
                on_checkpoint=self.on_checkpoint,
                should_stop=self.should_stop,
                download=self.settings.allow_download,
                download_url=url,
                download_md5=md5,
                cpu_threads=cpu_threads,
            )
            if not self.history_repaired and result.history:
                history = [item.to_dict() for item in result.history]
                self._write(lambda session: repair_history(session, self.claim, history))
        except LeaseLost:
            logger.warning("job %s attempt %s was taken over; stopping", *self._ids())
            return Outcome.LEASE_LOST
        except StoreUnavailable as error:
            return self._finish(
                JobStatus.FAILED,
                error_reason=FailureReason.ARTIFACT_STORE_UNAVAILABLE,
                error=str(error),
            )
        except TransientDatabaseError as error:
            logger.warning("job %s: the database stayed unavailable (%s)", self.claim.job_id, error)
            return self._release()
        except DatasetUnavailable as error:
            return self._finish(
                JobStatus.FAILED,
                error_reason=FailureReason.DATASET_UNAVAILABLE,
                error=dataset_help(config.dataset, self.settings, error),
            )
        except TrainingDiverged as error:
            logger.warning("job %s: %s", self.claim.job_id, error)
            return self._finish(
                JobStatus.FAILED, error_reason=FailureReason.DIVERGED, error=str(error)
            )
        except StorageFull as error:
            return self._finish(
                JobStatus.FAILED,
                error_reason=FailureReason.STORAGE_FULL,
                error=f"{self.settings.checkpoint_folder_setting} ({self.attempt_dir}) is full: "
                f"{error.strerror}",
            )
        except Exception as error:
            logger.exception("job %s failed", self.claim.job_id)
            return self._finish(
                JobStatus.FAILED,
                error_reason=FailureReason.TRAINING_ERROR,
                error=f"{type(error).__name__}: {error}",
            )
        finally:
            if resume is not None:
                self.resume_store.release_local_file(resume)  # loaded by now, or never will be
        if not result.stopped:
            # Succeeded only once every checkpoint, the final one included, is in the store.
            return self._finish(JobStatus.SUCCEEDED)
        reason = self.stop_reason
        if reason != StopReason.LEASE_LOST:
            upload_failed = self._upload_failure()  # settles the uploads first
            if upload_failed is not None:
                return upload_failed
        if reason == StopReason.TIMEOUT:
            return self._finish(
                JobStatus.FAILED,
                error_reason=FailureReason.TIMEOUT,
                error=f"The job ran longer than MAX_JOB_SECONDS={self.settings.max_job_seconds:g}.",
            )
        if reason == StopReason.CANCELLED:
            return self._finish(JobStatus.CANCELLED)
        if reason == StopReason.PRUNED:
            return self._finish(JobStatus.PRUNED)
        if reason == StopReason.PAUSED:
            return self._pause()
        if reason == StopReason.SHUTDOWN:
            logger.info(
                "job %s stopped for the worker's shutdown; handing it back", self.claim.job_id
            )
            if not self.uploads.drain(SHUTDOWN_UPLOAD_GRACE_SECONDS):
                logger.info("job %s: checkpoints still uploading are dropped", self.claim.job_id)
            return self._release()
        return Outcome.LEASE_LOST

    def _ids(self) -> tuple[int, int]:
        return self.claim.job_id, self.claim.attempt

    def _finish(
        self,
        status: JobStatus,
        *,
        error_reason: FailureReason | None = None,
        error: str | None = None,
    ) -> Outcome:
        # The checkpoints written so far are recorded first (a failed job's too).
        settled = self._settle_uploads()
        if settled is not None:
            return settled
        if status == JobStatus.SUCCEEDED and self.uploads.failure is not None:
            upload_failed = self._upload_failure()
            assert upload_failed is not None
            return upload_failed
        done: list[bool] = []

        def work(session: Any) -> None:
            done[:] = [finish_job(session, self.claim, status, error_reason=error_reason,
                                  error=error)]  # fmt: skip

        try:
            self._write(work)
        except TransientDatabaseError:
            logger.warning(
                "job %s: could not record %s; the lease will expire", self.claim.job_id, status
            )
            return Outcome.DATABASE_UNAVAILABLE
        if not done[0]:
            logger.warning("job %s attempt %s lost its lease before finishing", *self._ids())
            return Outcome.LEASE_LOST
        logger.info(
            "job %s %s%s", self.claim.job_id, status, f" ({error_reason})" if error_reason else ""
        )
        return Outcome(str(status))

    def _pause(self) -> Outcome:
        """The trial waits at its rung: its checkpoints (the rung's epoch last) are recorded
        first, so that it resumes from there when promoted."""
        settled = self._settle_uploads()
        if settled is not None:
            return settled
        paused: list[bool] = []

        def work(session: Any) -> None:
            paused[:] = [pause_job(session, self.claim)]

        try:
            self._write(work)
        except TransientDatabaseError:
            logger.warning("job %s: could not record the pause; the lease will expire",
                           self.claim.job_id)  # fmt: skip
            return Outcome.DATABASE_UNAVAILABLE
        if not paused[0]:
            logger.warning("job %s attempt %s lost its lease before pausing", *self._ids())
            return Outcome.LEASE_LOST
        logger.info("job %s paused at a rung of its search", self.claim.job_id)
        return Outcome.PAUSED

    def _release(self) -> Outcome:
        outcome: list[JobStatus | None] = []

        def work(session: Any) -> None:
            status = release_job(session, self.claim)
            outcome[:] = [status]
            if status == JobStatus.QUEUED:
                enqueue_after_commit(session, self.claim.job_id)

        try:
            self._write(work)
        except TransientDatabaseError:
            return Outcome.DATABASE_UNAVAILABLE
        if outcome[0] is None:
            return Outcome.LEASE_LOST
        if outcome[0] == JobStatus.CANCELLED:
            logger.info("job %s cancelled while its worker was stopping", self.claim.job_id)
            return Outcome.CANCELLED
        if outcome[0] == JobStatus.PRUNED:
            logger.info("job %s pruned before its worker stopped", self.claim.job_id)
            return Outcome.PRUNED
        if outcome[0] == JobStatus.PAUSED:
            logger.info("job %s paused before its worker stopped", self.claim.job_id)
            return Outcome.PAUSED
        logger.info("job %s released for another worker", self.claim.job_id)
        return Outcome.RELEASED


class StoreUnavailable(Exception):
    """The artifact store could not be read for longer than the upload timeout."""


def dataset_help(dataset: str, settings: Settings, error: Exception) -> str:
    """What an API user (not a shell user) can do about a missing dataset."""
    variable = "CIFAR100_URL" if dataset == "cifar100" else "CIFAR10_URL"
    if settings.allow_download:
        how = (
            f"Downloading it failed ({error.__cause__ or 'see the worker log'}); check that "
            f"the workers can reach the archive's URL, or set {variable} to a reachable copy."
        )
    else:
        how = (
            "Downloads are off: set ALLOW_DOWNLOAD=true on the workers, or place the "
            "extracted official archive in their DATA_DIR."
        )
    return f"The {dataset} dataset is not available to the workers. {how}"
