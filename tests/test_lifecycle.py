"""Job state transitions on SQLite and PostgreSQL: claims, leases, terminal states, the reaper."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from app.config import get_settings
from app.db import session_scope
from app.schemas import JobCreate
from app.services import jobs as job_service
from app.services.lifecycle import (
    CheckpointRecord,
    LeaseLost,
    claim_job,
    finish_job,
    reap_expired_leases,
    record_epoch,
    renew_lease,
    take_due_sends,
)
from app.tables import Checkpoint, EpochMetric, Job, utcnow

SPEC = JobCreate(block="mobile", hyperparameters={"epochs": 3}, train_samples=10)


def epoch_row(epoch: int, accuracy: float = 0.5) -> dict:
    return {
        "epoch": epoch,
        "train_loss": 1.0 / epoch,
        "train_accuracy": 0.4,
        "test_loss": 1.2,
        "test_accuracy": accuracy,
        "learning_rate": 0.01,
        "seconds": 1.0,
        "images_per_second": 10.0,
    }


@pytest.fixture
def job_id(configure, database_url: str) -> int:  # type: ignore[no-untyped-def]
    configure(database_url, MAX_ATTEMPTS="2")
    with session_scope() as session:
        return job_service.create_job(session, SPEC, settings=get_settings()).job.id


def load(job_id: int) -> Job:
    with session_scope() as session:
        return session.get(Job, job_id)  # type: ignore[return-value]


def test_a_job_is_claimed_once(job_id: int) -> None:
    with session_scope() as session:
        first = claim_job(session, job_id, worker="a", lease_seconds=30)
    with session_scope() as session:
        second = claim_job(session, job_id, worker="b", lease_seconds=30)
    assert first is not None and first.attempt == 1
    assert second is None  # a duplicate delivery is a no-op
    job = load(job_id)
    assert (job.status, job.worker, job.attempt) == ("running", "a", 1)


def test_epochs_are_recorded_once_each_and_fenced_by_the_lease(job_id: int) -> None:
    with session_scope() as session:
        claim = claim_job(session, job_id, worker="a", lease_seconds=30)
    assert claim is not None
    record = CheckpointRecord("latest", 1, 10, "ab" * 32, "jobs/1/attempt-1/latest.pt")
    for _ in range(2):  # re-recording the same history is harmless
        with session_scope() as session:
            record_epoch(session, claim, [epoch_row(1)], [record], lease_seconds=30)
    with session_scope() as session:
        record_epoch(
            session,
            claim,
            [epoch_row(1), epoch_row(2, 0.7)],
            [CheckpointRecord("latest", 2, 11, "cd" * 32, "jobs/1/attempt-1/latest.pt")],
            lease_seconds=30,
        )
        rows = session.execute(select(EpochMetric.epoch).where(EpochMetric.job_id == job_id))
        assert sorted(rows.scalars()) == [1, 2]
        latest = session.execute(select(Checkpoint).where(Checkpoint.job_id == job_id)).scalar_one()
        assert (latest.epoch, latest.sha256) == (2, "cd" * 32)
    job = load(job_id)
    assert job.epochs_done == 2 and job.best_test_accuracy == 0.7

    # The lease expires and the reaper re-queues the job; another worker takes it over.
    with session_scope() as session:
        session.get(Job, job_id).lease_expires_at = utcnow() - timedelta(seconds=1)  # type: ignore[union-attr]
    with session_scope() as session:
        assert reap_expired_leases(session) == [job_id]
    with session_scope() as session:
        takeover = claim_job(session, job_id, worker="b", lease_seconds=30)
    assert takeover is not None and takeover.attempt == 2

    # The old worker can write nothing more.
    with pytest.raises(LeaseLost), session_scope() as session:
        record_epoch(session, claim, [epoch_row(3)], [], lease_seconds=30)
    with session_scope() as session:
        assert not renew_lease(session, claim, lease_seconds=30).held
        assert not finish_job(session, claim, "succeeded")
    assert load(job_id).epochs_done == 2
    with session_scope() as session:
        assert finish_job(session, takeover, "succeeded")
    assert load(job_id).status == "succeeded"


def test_terminal_states_never_change(job_id: int) -> None:
    with session_scope() as session:
        claim = claim_job(session, job_id, worker="a", lease_seconds=30)
        assert claim is not None
    with session_scope() as session:
        assert finish_job(session, claim, "failed", error_reason="training_error", error="boom")
    with session_scope() as session:
        assert not finish_job(session, claim, "succeeded")
        assert claim_job(session, job_id, worker="b", lease_seconds=30) is None
        assert reap_expired_leases(session, now=utcnow() + timedelta(days=1)) == []
    with pytest.raises(Exception, match="cannot be cancelled"), session_scope() as session:
        job_service.cancel_job(session, job_id)
    job = load(job_id)
    assert (job.status, job.error_reason, job.error) == ("failed", "training_error", "boom")


def test_the_reaper_fails_a_job_after_its_attempts(job_id: int) -> None:
    for attempt in (1, 2):
        with session_scope() as session:
            claim = claim_job(session, job_id, worker=f"w{attempt}", lease_seconds=0.01)
            assert claim is not None and claim.attempt == attempt
        with session_scope() as session:
            reap_expired_leases(session, now=utcnow() + timedelta(seconds=1))
    job = load(job_id)
    assert (job.status, job.error_reason, job.attempt) == ("failed", "worker_lost", 2)


def test_the_reaper_cancels_a_dead_job_whose_cancel_was_asked(job_id: int) -> None:
    with session_scope() as session:
        assert claim_job(session, job_id, worker="a", lease_seconds=0.01) is not None
    with session_scope() as session:
        assert job_service.cancel_job(session, job_id).status == "running"
    with session_scope() as session:
        assert reap_expired_leases(session, now=utcnow() + timedelta(seconds=1)) == []
    assert load(job_id).status == "cancelled"


def test_a_cancelled_queued_job_is_never_claimed(job_id: int) -> None:
    with session_scope() as session:
        assert job_service.cancel_job(session, job_id).status == "cancelled"
    with session_scope() as session:
        assert job_service.cancel_job(session, job_id).status == "cancelled"  # twice: harmless
        assert claim_job(session, job_id, worker="a", lease_seconds=30) is None


def test_lost_messages_are_resent_with_backoff(job_id: int) -> None:
    now = utcnow()
    with session_scope() as session:
        assert take_due_sends(session, lease_seconds=10, now=now) == []  # just sent at submit
    with session_scope() as session:
        assert take_due_sends(session, lease_seconds=10, now=now + timedelta(seconds=11)) == [
            job_id
        ]
    with session_scope() as session:  # the next re-send waits twice as long
        later = now + timedelta(seconds=11)
        assert take_due_sends(session, lease_seconds=10, now=later + timedelta(seconds=15)) == []
        assert take_due_sends(session, lease_seconds=10, now=later + timedelta(seconds=21)) == [
            job_id
        ]
    assert load(job_id).enqueue_count == 3
