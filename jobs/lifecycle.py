"""Every change to a job's state. Each is a compare-and-set UPDATE through `_transition`:
terminal states never change, and a worker whose lease was taken over can write nothing more
(docs/design/fenced-transitions.md). Each status change (`_move`) and each newly stored epoch is
logged as a job event (jobs.events) in the same transaction, and announced as a domain event
(jobs.signals): `JobEnded` after a final status, `JobPaused` when a search trial starts
waiting at a rung, `EpochStored` after an epoch an attempt trained. What reacts to them is
listed in jobs.wiring, not here; a receiver's decision about a trial (stop it, pause it, resume
or stop a paused one) comes back as a value that this module writes. No function here commits:
the caller's transaction does."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from jobs import audit, signals, status_counts
from jobs.accounts import Identity, ensure_may_change
from jobs.counters import EPOCHS_RECORDED, MESSAGES_RESENT, add_to_counter, leases_reaped_counter
from jobs.db import insert_ignoring_duplicates as _insert_ignoring_duplicates
from jobs.dispatch import next_claimable
from jobs.errors import JobNotCancellable, JobNotQueued
from jobs.events import STATUS_EVENT, record_epoch_event, record_event, status_data
from jobs.listing import get_experiment, get_job
from jobs.metrics import METRIC_NAMES, epoch_time_values, evaluation_of
from jobs.queue import enqueue_after_commit
from jobs.signals import (
    EndCause,
    EpochStored,
    JobEnded,
    JobPaused,
    ResumeTrial,
    StopTrial,
    TrialDecision,
    TrialMove,
)
from jobs.tables import (
    Checkpoint,
    EpochMetric,
    FailureReason,
    Job,
    JobStatus,
    utcnow,
)

# What the reaper's counter calls each status it gives a job (jobs.counters.REAP_OUTCOMES).
REAP_OUTCOMES = {
    JobStatus.QUEUED: "requeued",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
    JobStatus.PRUNED: "pruned",
    JobStatus.PAUSED: "paused",
}
# The reaper re-sends a queued job's message after lease_seconds, then waits twice as long each
# time, up to 2**RESEND_BACKOFF_CAP leases: a lost message is replaced, a long queue stays short.
RESEND_BACKOFF_CAP = 6


class StopReason(StrEnum):
    """Why an attempt stops training before its last epoch."""

    CANCELLED = "cancelled"  # a user asked
    LEASE_LOST = "lease_lost"  # another attempt took the job over, or it ended
    TIMEOUT = "timeout"  # longer than MAX_JOB_SECONDS
    SHUTDOWN = "shutdown"  # the worker is stopping; the job goes back to the queue
    PRUNED = "pruned"  # a search's pruner stopped the trial; it ends `pruned`
    PAUSED = "paused"  # a search's pruner paused the trial at a rung; it waits `paused`


@dataclass(frozen=True)
class EpochDecision:
    """What happens after a recorded epoch: go on, or stop and why."""

    stop: StopReason | None = None

    @property
    def go_on(self) -> bool:
        return self.stop is None


GO_ON = EpochDecision()


class LeaseLost(Exception):
    """The worker no longer holds the job: another attempt took it over, or it ended."""


@dataclass(frozen=True)
class Claim:
    job_id: int
    attempt: int
    lease_token: str
    worker: str
    config: dict[str, Any]
    experiment_id: int | None = None


@dataclass(frozen=True)
class LeaseState:
    held: bool
    cancel_requested: bool


@dataclass(frozen=True)
class CheckpointRecord:
    """A checkpoint file the store holds: its epoch, size and sha256, its key, and the store
    (its URL, jobs.artifacts) that holds it."""

    epoch: int
    size_bytes: int
    sha256: str
    key: str
    store_url: str


def _transition(session: Session, job_id: int, *conditions: Any, **values: Any) -> bool:
    """UPDATE the job row only if every condition still holds; True if it did."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, *conditions)
        .values({"updated_at": utcnow(), **values})
        .execution_options(synchronize_session=False)
    )
    assert isinstance(result, CursorResult)
    return result.rowcount == 1


def _move(
    session: Session,
    job_id: int,
    *conditions: Any,
    from_status: JobStatus,
    cause: EndCause = EndCause.ATTEMPT,
    by: str | None = None,
    **values: Any,
) -> bool:
    """A status change from `from_status` (a condition of the change): `_transition`, and when
    it happened the kept status counts (jobs.status_counts), a status event (naming `by`, the
    user who asked for it, if one did), and `JobEnded` (with what ended it) when the status is
    final."""
    moved = _transition(session, job_id, Job.status == from_status, *conditions, **values)
    if moved:
        data = status_data(session, job_id)
        experiment_id = session.execute(select(Job.experiment_id).where(Job.id == job_id)).scalar()
        status_counts.moved(session, experiment_id, from_status, data["status"])
        record_event(session, job_id, STATUS_EVENT, _asked_by(data, by))
        if data["ended"]:
            moves = signals.job_ended(
                session, JobEnded(job_id, JobStatus(data["status"]), experiment_id, cause)
            )
            _make_moves(session, moves)
    return moved


def _asked_by(data: dict[str, Any], by: str | None) -> dict[str, Any]:
    """A status event's data, with `by` (who asked for the change) when a user asked."""
    return data if by is None else {**data, "by": by}


def _make_moves(session: Session, moves: list[TrialMove]) -> None:
    """Resume or stop paused trials as a search decided. Every trial's decision is written
    before any of them moves, so a reaction to one move (a stopped trial's end) reads the
    whole decision."""
    now = utcnow()
    written = [
        move
        for move in moves
        if _transition(
            session,
            move.job_id,
            Job.status == JobStatus.PAUSED,
            trial_state=move.state,
            rung=move.rung,
        )
    ]
    for move in written:
        if move.event is not None:
            record_event(session, move.job_id, *move.event)
    for move in written:
        if isinstance(move, ResumeTrial):
            if _move(
                session,
                move.job_id,
                from_status=JobStatus.PAUSED,
                status=JobStatus.QUEUED,
                enqueued_at=now,
                enqueue_count=Job.enqueue_count + 1,
            ):
                priority = session.execute(
                    select(Job.priority).where(Job.id == move.job_id)
                ).scalar()
                enqueue_after_commit(session, move.job_id, priority=priority)
        else:
            assert isinstance(move, StopTrial)
            _move(
                session,
                move.job_id,
                from_status=JobStatus.PAUSED,
                cause=EndCause.PRUNER,
                status=JobStatus.PRUNED,
                finished_at=now,
            )


def _fenced(claim: Claim) -> tuple[ColumnElement[bool], ...]:
    return (Job.lease_token == claim.lease_token, Job.status == JobStatus.RUNNING)


def _lease_values(now: datetime, lease_seconds: float) -> dict[str, Any]:
    return {"heartbeat_at": now, "lease_expires_at": now + timedelta(seconds=lease_seconds)}


def claim_next_job(session: Session, *, worker: str, lease_seconds: float) -> Claim | None:
    """Take the first queued job in the dispatch order (jobs.dispatch). A queue message is a
    token that wakes one worker, whichever job it names: so the first job always runs first, a
    re-sent message never jumps the queue, and `queue_position` is the truth. None if nothing
    is queued."""
    while True:
        job_id = session.execute(next_claimable()).scalar()
        if job_id is None:
            return None
        claim = claim_job(session, job_id, worker=worker, lease_seconds=lease_seconds)
        if claim is not None:
            return claim


def claim_job(session: Session, job_id: int, *, worker: str, lease_seconds: float) -> Claim | None:
    """Take this queued job for this worker (attempt + 1). None if it is not claimable: running
    or finished already, or cancelled."""
    now = utcnow()
    token = uuid.uuid4().hex
    claimed = _move(
        session,
        job_id,
        Job.cancel_requested.is_(False),
        from_status=JobStatus.QUEUED,
        status=JobStatus.RUNNING,
        attempt=Job.attempt + 1,
        lease_token=token,
        worker=worker,
        started_at=func.coalesce(Job.started_at, now),
        updated_at=now,
        **_lease_values(now, lease_seconds),
    )
    if not claimed:
        return None
    job = session.execute(
        select(Job.attempt, Job.config, Job.experiment_id).where(Job.id == job_id)
    ).one()
    return Claim(job_id, job.attempt, token, worker, job.config, job.experiment_id)


def renew_lease(session: Session, claim: Claim, *, lease_seconds: float) -> LeaseState:
    """Heartbeat: extend the lease; tells whether it is still held and whether cancel was asked."""
    if not _transition(
        session, claim.job_id, *_fenced(claim), **_lease_values(utcnow(), lease_seconds)
    ):
        return LeaseState(held=False, cancel_requested=False)
    cancel = session.execute(select(Job.cancel_requested).where(Job.id == claim.job_id)).scalar()
    return LeaseState(held=True, cancel_requested=bool(cancel))


def cancel_requested(session: Session, claim: Claim) -> bool | None:
    """A cheap read for the training loop: None when the lease is no longer held."""
    row = session.execute(
        select(Job.cancel_requested).where(Job.id == claim.job_id, *_fenced(claim))
    ).scalar_one_or_none()
    return None if row is None else bool(row)


def _record_new_epochs(session: Session, job_id: int, rows: list[dict[str, Any]]) -> list[int]:
    """Store the epochs' metrics rows that are not stored yet, each with its epoch event (so an
    epoch recorded again makes no second event) and its time added to the job's; returns the
    epochs stored."""
    inserted = _insert_ignoring_duplicates(session, EpochMetric, rows, EpochMetric.epoch)
    stored = sorted(int(row.epoch) for row in inserted)
    by_epoch = {int(row["epoch"]): row for row in rows}
    for epoch in stored:
        record_epoch_event(session, job_id, {name: by_epoch[epoch][name] for name in METRIC_NAMES})
    if stored:
        seconds = sum(float(by_epoch[epoch]["seconds"]) for epoch in stored)
        _transition(session, job_id, **epoch_time_values(len(stored), seconds))
    add_to_counter(session, EPOCHS_RECORDED, len(stored))
    return stored


def _summary_values(session: Session, job_id: int) -> dict[str, Any]:
    """epochs_done, best and final figures from the job's metrics rows."""
    best = session.execute(
        select(func.max(EpochMetric.test_accuracy)).where(EpochMetric.job_id == job_id)
    ).scalar()
    last = session.execute(
        select(EpochMetric.epoch, EpochMetric.test_accuracy, EpochMetric.train_loss)
        .where(EpochMetric.job_id == job_id)
        .order_by(EpochMetric.epoch.desc())
        .limit(1)
    ).first()
    if last is None:
        return {}
    return {
        "epochs_done": last.epoch,
        "best_test_accuracy": best,
        "final_test_accuracy": last.test_accuracy,
        "final_train_loss": last.train_loss,
    }


def record_epoch(
    session: Session, claim: Claim, metrics: dict[str, Any], *, lease_seconds: float
) -> EpochDecision:
    """Store one epoch's metrics row and extend the lease, in the caller's transaction: one row
    written per epoch (recording an epoch again changes nothing). A newly stored epoch is
    announced (`EpochStored`) and what its receivers decide about the trial is written here,
    fenced by the lease, so an epoch is decided once. Returns whether the attempt goes on
    training; raises LeaseLost."""
    now = utcnow()
    if not _transition(session, claim.job_id, *_fenced(claim), **_lease_values(now, lease_seconds)):
        raise LeaseLost(f"job {claim.job_id} attempt {claim.attempt} lost its lease")
    epoch = int(metrics["epoch"])
    row = {name: metrics[name] for name in METRIC_NAMES}
    evaluation = evaluation_of(metrics)
    stored = _record_new_epochs(
        session,
        claim.job_id,
        [{**row, "evaluation": evaluation, "job_id": claim.job_id, "recorded_at": now}],
    )
    job = session.execute(
        select(Job.best_test_accuracy, Job.experiment_id, Job.epochs_total).where(
            Job.id == claim.job_id
        )
    ).one()
    best = job.best_test_accuracy
    _transition(
        session,
        claim.job_id,
        Job.epochs_done < epoch,
        epochs_done=epoch,
        best_test_accuracy=max(best if best is not None else 0.0, metrics["test_accuracy"]),
        final_test_accuracy=metrics["test_accuracy"],
        final_train_loss=metrics["train_loss"],
        updated_at=now,
    )
    if stored:
        announced = EpochStored(
            claim.job_id, job.experiment_id, epoch, job.epochs_total, row, evaluation
        )
        for decision in signals.epoch_stored(session, announced):
            _write_trial_decision(session, claim, decision)
    state = session.execute(
        select(Job.cancel_requested, Job.prune_requested, Job.pause_requested).where(
            Job.id == claim.job_id
        )
    ).one()
    if state.cancel_requested:
        return EpochDecision(StopReason.CANCELLED)
    if state.prune_requested:
        return EpochDecision(StopReason.PRUNED)
    return EpochDecision(StopReason.PAUSED) if state.pause_requested else GO_ON


def _write_trial_decision(session: Session, claim: Claim, decision: TrialDecision) -> None:
    """A search's decision after an epoch: the trial's state and rung, and the request to stop
    or to pause, written while this attempt holds the lease; its event explains it."""
    values: dict[str, Any] = {}
    if decision.state is not None:
        values.update(trial_state=decision.state, rung=decision.rung)
    if decision.prune:
        values["prune_requested"] = True
    elif decision.pause:
        values["pause_requested"] = True
    if not values:
        return
    if not _transition(session, claim.job_id, *_fenced(claim), **values):
        raise LeaseLost(f"job {claim.job_id} attempt {claim.attempt} lost its lease")
    if decision.event is not None:
        kind, data = decision.event
        record_event(session, claim.job_id, kind, data)


def repair_history(session: Session, claim: Claim, history: list[dict[str, Any]]) -> list[int]:
    """After a resume: store the epochs a checkpoint holds that the database lacks (a worker
    died between writing the file and recording the epoch). Returns the epochs added."""
    recorded = set(
        session.execute(
            select(EpochMetric.epoch).where(EpochMetric.job_id == claim.job_id)
        ).scalars()
    )
    now = utcnow()
    missing = [
        {
            **{name: item[name] for name in METRIC_NAMES},
            "evaluation": evaluation_of(item),
            "job_id": claim.job_id,
            "recorded_at": now,
        }
        for item in history
        if int(item["epoch"]) not in recorded
    ]
    if not missing:
        return []
    if not _transition(session, claim.job_id, *_fenced(claim)):
        raise LeaseLost(f"job {claim.job_id} attempt {claim.attempt} lost its lease")
    added = _record_new_epochs(session, claim.job_id, missing)
    _transition(session, claim.job_id, **_summary_values(session, claim.job_id))
    return added


def record_checkpoint(session: Session, claim: Claim, record: CheckpointRecord) -> None:
    """Point the job at a checkpoint file that is fully on disk, fenced by the lease."""
    if not _transition(session, claim.job_id, *_fenced(claim)):
        raise LeaseLost(f"job {claim.job_id} attempt {claim.attempt} lost its lease")
    _insert_ignoring_duplicates(
        session,
        Checkpoint,
        [
            {
                "job_id": claim.job_id,
                "epoch": record.epoch,
                "attempt": claim.attempt,
                "size_bytes": record.size_bytes,
                "sha256": record.sha256,
                "key": record.key,
                "store_url": record.store_url,
                "recorded_at": utcnow(),
            }
        ],
    )


def finish_job(
    session: Session,
    claim: Claim,
    status: JobStatus,
    *,
    error_reason: FailureReason | None = None,
    error: str | None = None,
) -> bool:
    """running → a final status, only while this claim holds the lease."""
    if not JobStatus(status).ended:
        raise ValueError(f"{status} is not a final status")
    now = utcnow()
    return _move(
        session,
        claim.job_id,
        *_fenced(claim),
        from_status=JobStatus.RUNNING,
        status=status,
        error_reason=error_reason,
        error=error,
        lease_token=None,
        lease_expires_at=None,
        finished_at=now,
        updated_at=now,
    )


def release_job(session: Session, claim: Claim) -> JobStatus | None:
    """running → queued for a worker that is shutting down: the job resumes elsewhere from its
    last checkpoint, and the attempt does not count against MAX_ATTEMPTS. A job whose cancel was
    asked meanwhile becomes cancelled instead, a trial its pruner stopped becomes pruned, one it
    paused becomes paused. None if the lease was already lost."""
    now = utcnow()
    released = _move(
        session,
        claim.job_id,
        *_fenced(claim),
        Job.cancel_requested.is_(False),
        Job.prune_requested.is_(False),
        Job.pause_requested.is_(False),
        from_status=JobStatus.RUNNING,
        status=JobStatus.QUEUED,
        attempt=Job.attempt - 1,
        lease_token=None,
        lease_expires_at=None,
        worker=None,
        enqueued_at=now,
        enqueue_count=Job.enqueue_count + 1,
        updated_at=now,
    )
    if released:
        return JobStatus.QUEUED
    asked = session.execute(
        select(Job.cancel_requested, Job.prune_requested).where(Job.id == claim.job_id)
    ).one()
    if not asked.cancel_requested and not asked.prune_requested:
        return JobStatus.PAUSED if pause_job(session, claim) else None
    final = JobStatus.CANCELLED if asked.cancel_requested else JobStatus.PRUNED
    if finish_job(session, claim, final):
        return final
    return None


def _paused_values(now: datetime) -> dict[str, Any]:
    """running → paused: the attempt ends without counting against MAX_ATTEMPTS, and the trial
    holds no worker and no lease while it waits."""
    return {
        "status": JobStatus.PAUSED,
        "pause_requested": False,
        "attempt": Job.attempt - 1,
        "lease_token": None,
        "lease_expires_at": None,
        "worker": None,
        "updated_at": now,
    }


def pause_job(session: Session, claim: Claim) -> bool:
    """running → paused, once the attempt has stopped at the rung its pruner paused it at and
    its checkpoints are recorded; only while this claim holds the lease. The search is told
    (`JobPaused`), and the paused trials it then resumes or stops are moved here too."""
    if not _move(
        session, claim.job_id, *_fenced(claim), Job.pause_requested.is_(True),
        from_status=JobStatus.RUNNING, **_paused_values(utcnow()),
    ):  # fmt: skip
        return False
    _announce_pause(session, claim.job_id)
    return True


def _announce_pause(session: Session, job_id: int) -> None:
    job = session.execute(select(Job.experiment_id, Job.epochs_done).where(Job.id == job_id)).one()
    moves = signals.job_paused(session, JobPaused(job_id, job.experiment_id, job.epochs_done))
    _make_moves(session, moves)


def cancel_job(
    session: Session,
    job_id: int,
    *,
    cause: EndCause = EndCause.CANCEL,
    actor: Identity | None = None,
    by: str | None = None,
) -> Job:
    """A queued job is cancelled at once; a running one is asked to stop at its next batch (the
    worker ends it `cancelled`). Cancelling twice is harmless; JobNotCancellable for a job that
    ended otherwise. `cause`: what asked (the job's `JobEnded` says it). `actor`: the caller,
    who must be allowed to (jobs.accounts) and is audited; None for the service's own cancels
    (an experiment's, checked and audited as the experiment's, whose caller is `by`). The
    status event names who asked (`by`)."""
    job = get_job(session, job_id)
    if actor is not None:
        ensure_may_change(actor, job.owner, f"Job {job_id}")
        by = actor.name
    now = utcnow()
    # Queued, or waiting at a rung: no attempt holds it.
    waiting = (
        _move(
            session,
            job_id,
            from_status=status,
            cause=cause,
            by=by,
            status=JobStatus.CANCELLED,
            cancel_requested=True,
            finished_at=now,
        )
        for status in (JobStatus.QUEUED, JobStatus.PAUSED)
    )
    if not any(waiting) and _transition(
        session,
        job_id,
        Job.status == JobStatus.RUNNING,
        # Asked again: nothing changes, so no event either.
        Job.cancel_requested.is_(False),
        cancel_requested=True,
    ):
        record_event(session, job_id, STATUS_EVENT, _asked_by(status_data(session, job_id), by))
    session.refresh(job)
    status = JobStatus(job.status)
    if status.ended and status != JobStatus.CANCELLED:
        raise JobNotCancellable(f"Job {job_id} already {status}; it cannot be cancelled.")
    if actor is not None:
        audit.record(
            session, actor.name, "job_cancelled", job_id=job_id, experiment_id=job.experiment_id
        )
    return job


def set_priority(session: Session, job_id: int, priority: int, *, actor: Identity) -> Job:
    """Change a queued job's priority; it keeps its fair-share key, so among its new peers it
    takes its turn as if it had been queued there. JobNotQueued once it has started or ended.
    Only its owner or an admin may (jobs.accounts); audited."""
    job = get_job(session, job_id)
    ensure_may_change(actor, job.owner, f"Job {job_id}")
    before = job.priority
    if not _transition(session, job_id, Job.status == JobStatus.QUEUED, priority=priority):
        session.refresh(job)
        raise JobNotQueued(
            f"Job {job_id} is {job.status}; only a queued job's priority can be changed."
        )
    session.refresh(job)
    audit.record(
        session,
        actor.name,
        "job_priority_changed",
        job_id=job_id,
        experiment_id=job.experiment_id,
        detail={"from": before, "to": priority},
    )
    return job


def set_experiment_priority(
    session: Session, experiment_id: int, priority: int, *, actor: Identity
) -> list[int]:
    """The experiment's priority, and that of each of its queued jobs and of its trials waiting
    at a rung (a search's later trials take it when they are made); returns their ids. Only
    its owner or an admin may (jobs.accounts); audited."""
    experiment = get_experiment(session, experiment_id)
    ensure_may_change(actor, experiment.owner, f"Experiment {experiment_id}")
    audit.record(
        session,
        actor.name,
        "experiment_priority_changed",
        experiment_id=experiment_id,
        detail={"from": experiment.priority, "to": priority},
    )
    experiment.priority = priority
    changed = session.execute(
        update(Job)
        .where(
            Job.experiment_id == experiment_id,
            Job.status.in_([JobStatus.QUEUED, JobStatus.PAUSED]),
        )
        .values(priority=priority, updated_at=utcnow())
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    ).scalars()
    return sorted(changed)


def reap_expired_leases(session: Session, *, now: datetime | None = None) -> list[int]:
    """Jobs whose worker stopped heartbeating: re-queue them (they resume from their last
    checkpoint), or end them when cancel was asked, their pruner stopped them, or the attempts
    are spent; a trial its pruner paused waits `paused`. Returns the ids re-queued."""
    now = now or utcnow()
    expired = session.execute(
        select(
            Job.id,
            Job.lease_token,
            Job.attempt,
            Job.max_attempts,
            Job.cancel_requested,
            Job.prune_requested,
            Job.pause_requested,
        ).where(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
    ).all()
    requeued = []
    for job in expired:
        if job.cancel_requested:
            values: dict[str, Any] = {"status": JobStatus.CANCELLED, "finished_at": now}
        elif job.prune_requested:
            # The decision was stored with its epoch; the worker died before carrying it out.
            values = {"status": JobStatus.PRUNED, "finished_at": now}
        elif job.pause_requested:
            values = _paused_values(now)
        elif job.attempt >= job.max_attempts:
            values = {
                "status": JobStatus.FAILED,
                "finished_at": now,
                "error_reason": FailureReason.WORKER_LOST,
                "error": f"The worker stopped responding on each of {job.attempt} attempts.",
            }
        else:
            values = {"status": JobStatus.QUEUED, "enqueued_at": None}
        moved = _move(
            session,
            job.id,
            Job.lease_token == job.lease_token,
            Job.lease_expires_at < now,
            # A cancel that lands after the read above must not be lost in a re-queue.
            Job.cancel_requested.is_(job.cancel_requested),
            from_status=JobStatus.RUNNING,
            cause=EndCause.LEASE_EXPIRED,
            **{**values, "lease_token": None, "lease_expires_at": None, "updated_at": now},
        )
        if not moved:
            continue
        add_to_counter(session, leases_reaped_counter(REAP_OUTCOMES[values["status"]]))
        if values["status"] == JobStatus.QUEUED:
            requeued.append(job.id)
        elif values["status"] == JobStatus.PAUSED:
            _announce_pause(session, job.id)
    return requeued


def take_due_sends(
    session: Session, *, lease_seconds: float, idle: bool = False, now: datetime | None = None
) -> list[int]:
    """Queued jobs whose message may be lost. Marks each as sent; the caller sends after
    committing.

    - never sent (the API could not reach the broker): sent now;
    - an idle worker (`idle=True`) sees a job that waited over a lease since its last send: the
      message is lost (an idle worker would have got it), so one token is sent at once, however
      long the job waited;
    - otherwise (every worker busy, messages are probably just waiting their turn): re-sent after
      a lease, then after 2, 4, ... up to 2**RESEND_BACKOFF_CAP leases.
    """
    now = now or utcnow()
    stale = now - timedelta(seconds=lease_seconds)
    candidates = session.execute(
        select(Job.id, Job.enqueued_at, Job.enqueue_count)
        .where(
            Job.status == JobStatus.QUEUED,
            or_(Job.enqueued_at.is_(None), Job.enqueued_at < stale),
        )
        .order_by(Job.id)
    ).all()
    due = []
    idle_token_sent = False
    for job in candidates:
        if job.enqueued_at is not None:
            if idle and not idle_token_sent:
                idle_token_sent = True
            else:
                exponent = min(max(job.enqueue_count - 1, 0), RESEND_BACKOFF_CAP)
                if job.enqueued_at > now - timedelta(seconds=lease_seconds * 2**exponent):
                    continue
        if _transition(
            session,
            job.id,
            Job.status == JobStatus.QUEUED,
            Job.enqueue_count == job.enqueue_count,
            enqueued_at=now,
            enqueue_count=job.enqueue_count + 1,
        ):
            due.append(job.id)
    add_to_counter(session, MESSAGES_RESENT, len(due))
    return due
