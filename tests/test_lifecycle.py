"""Job state transitions on SQLite and PostgreSQL: claims, leases, terminal states, the reaper."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from jobs import lifecycle, submission
from jobs.db import session_scope
from jobs.lifecycle import (
    CheckpointRecord,
    LeaseLost,
    claim_job,
    finish_job,
    reap_expired_leases,
    record_checkpoint,
    record_epoch,
    release_job,
    renew_lease,
    repair_history,
    take_due_sends,
)
from jobs.settings import get_settings
from jobs.specs import JobCreate
from jobs.tables import Checkpoint, EpochMetric, Job, utcnow
from tests.builders import job_spec, new_job_id
from tests.support import epoch_row


@pytest.fixture
def db_settings() -> dict[str, str]:
    return {"MAX_ATTEMPTS": "2"}


@pytest.fixture
def job_id(db: str) -> int:
    return new_job_id()


def load(job_id: int) -> Job:
    with session_scope() as session:
        return session.get(Job, job_id)


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
    for _ in range(2):  # recording the same epoch again changes nothing
        with session_scope() as session:
            record_epoch(session, claim, epoch_row(1), lease_seconds=30)
    with session_scope() as session:
        record_epoch(session, claim, epoch_row(2, 0.7), lease_seconds=30)
        record_checkpoint(
            session,
            claim,
            CheckpointRecord(2, 11, "cd" * 32, "jobs/1/attempt-1/epoch-0002.pt", "file:///srv"),
        )
    with session_scope() as session:
        rows = session.execute(select(EpochMetric.epoch).where(EpochMetric.job_id == job_id))
        assert sorted(rows.scalars()) == [1, 2]
        latest = session.execute(select(Checkpoint).where(Checkpoint.job_id == job_id)).scalar_one()
        assert (latest.epoch, latest.sha256, latest.attempt) == (2, "cd" * 32, 1)
    job = load(job_id)
    assert job.epochs_done == 2 and job.best_test_accuracy == 0.7

    # The lease expires and the reaper re-queues the job; another worker takes it over.
    with session_scope() as session:
        session.get(Job, job_id).lease_expires_at = utcnow() - timedelta(seconds=1)
    with session_scope() as session:
        assert reap_expired_leases(session) == [job_id]
    with session_scope() as session:
        takeover = claim_job(session, job_id, worker="b", lease_seconds=30)
    assert takeover is not None and takeover.attempt == 2

    # The old worker can write nothing more.
    with pytest.raises(LeaseLost), session_scope() as session:
        record_epoch(session, claim, epoch_row(3), lease_seconds=30)
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
        lifecycle.cancel_job(session, job_id)
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
        assert lifecycle.cancel_job(session, job_id).status == "running"
    with session_scope() as session:
        assert reap_expired_leases(session, now=utcnow() + timedelta(seconds=1)) == []
    assert load(job_id).status == "cancelled"


def test_a_cancelled_queued_job_is_never_claimed(job_id: int) -> None:
    with session_scope() as session:
        assert lifecycle.cancel_job(session, job_id).status == "cancelled"
    with session_scope() as session:
        assert lifecycle.cancel_job(session, job_id).status == "cancelled"  # twice: harmless
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


@pytest.mark.slow
def test_a_long_job_writes_one_metrics_row_per_epoch(configure, database_url: str) -> None:
    """100 epochs: exactly 100 rows inserted in total, each keeping its own recorded_at."""
    from sqlalchemy import event

    configure(database_url)
    spec = JobCreate(block="mobile", hyperparameters={"epochs": 100})
    with session_scope() as session:
        long_job = submission.create_job(session, spec, settings=get_settings()).job.id
    with session_scope() as session:
        claim = claim_job(session, long_job, worker="a", lease_seconds=30)
    assert claim is not None
    inserted_rows = 0

    def count(conn, cursor, statement, parameters, context, executemany):
        nonlocal inserted_rows
        if statement.lstrip().upper().startswith("INSERT INTO EPOCH_METRICS"):
            inserted_rows += len(parameters) if executemany else 1

    from jobs.db import get_engine

    event.listen(get_engine(), "before_cursor_execute", count)
    try:
        for epoch in range(1, 101):
            with session_scope() as session:
                record_epoch(session, claim, epoch_row(epoch, epoch / 200), lease_seconds=30)
    finally:
        event.remove(get_engine(), "before_cursor_execute", count)
    assert inserted_rows == 100
    with session_scope() as session:
        stamps = session.execute(
            select(EpochMetric.recorded_at).where(EpochMetric.job_id == long_job)
        ).scalars()
        assert len(set(stamps)) == 100  # each row keeps the time its epoch was recorded
    job = load(long_job)
    assert (job.epochs_done, job.best_test_accuracy, job.final_test_accuracy) == (100, 0.5, 0.5)


def test_repair_history_adds_only_the_missing_epochs(job_id: int) -> None:
    with session_scope() as session:
        claim = claim_job(session, job_id, worker="a", lease_seconds=30)
        assert claim is not None
        record_epoch(session, claim, epoch_row(1), lease_seconds=30)
    with session_scope() as session:
        added = repair_history(session, claim, [epoch_row(1, 0.9), epoch_row(2, 0.6)])
    assert added == [2]
    job = load(job_id)
    assert (job.epochs_done, job.best_test_accuracy) == (2, 0.6)  # epoch 1 kept as recorded


def test_release_honours_a_cancel_that_landed_meanwhile(job_id: int) -> None:
    with session_scope() as session:
        claim = claim_job(session, job_id, worker="a", lease_seconds=30)
        assert claim is not None
    with session_scope() as session:
        assert lifecycle.cancel_job(session, job_id).cancel_requested
    with session_scope() as session:
        assert release_job(session, claim) == "cancelled"
    job = load(job_id)
    assert job.status == "cancelled" and job.attempt == 1


def test_the_reaper_does_not_requeue_over_a_concurrent_cancel(job_id: int) -> None:
    """The reaper reads the expired job, then a cancel lands before its update."""
    with session_scope() as session:
        assert claim_job(session, job_id, worker="a", lease_seconds=0.01) is not None
    later = utcnow() + timedelta(seconds=1)
    with session_scope() as session:
        from sqlalchemy import event

        cancelled = []

        def cancel_before_update(orm_execute_state):
            if orm_execute_state.is_update and not cancelled:
                cancelled.append(True)
                with session_scope() as other:
                    lifecycle.cancel_job(other, job_id)

        event.listen(session, "do_orm_execute", cancel_before_update)
        if session.get_bind().dialect.name == "sqlite":
            pytest.skip("SQLite serialises the two writers: the race cannot happen there")
        assert reap_expired_leases(session, now=later) == []
    with session_scope() as session:
        reap_expired_leases(session, now=later)
    assert load(job_id).status == "cancelled"


def test_any_message_claims_the_oldest_queued_job(configure, database_url: str) -> None:
    from jobs.lifecycle import claim_next_job

    configure(database_url)
    with session_scope() as session:
        ids = [
            submission.create_job(session, job_spec(), settings=get_settings()).job.id
            for _ in range(3)
        ]
    with session_scope() as session:
        lifecycle.cancel_job(session, ids[0])
    with session_scope() as session:
        first = claim_next_job(session, worker="a", lease_seconds=30)
        second = claim_next_job(session, worker="b", lease_seconds=30)
        assert claim_next_job(session, worker="c", lease_seconds=30) is None
    assert first is not None and second is not None
    assert (first.job_id, second.job_id) == (ids[1], ids[2])


def test_an_idle_worker_resends_a_long_waiting_job_within_a_lease(job_id: int) -> None:
    now = utcnow()
    for step in range(1, 6):  # five re-sends while workers were busy: backoff grew to 16 leases
        with session_scope() as session:
            take_due_sends(session, lease_seconds=10, now=now + timedelta(seconds=1000 * step))
    last_send = now + timedelta(seconds=5000)
    with session_scope() as session:  # busy: waits out the backoff
        assert (
            take_due_sends(session, lease_seconds=10, now=last_send + timedelta(seconds=11)) == []
        )
    with session_scope() as session:  # idle: the message is lost, send a token at once
        assert take_due_sends(
            session, lease_seconds=10, idle=True, now=last_send + timedelta(seconds=11)
        ) == [job_id]
