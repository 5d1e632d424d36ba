"""The kept status counts (jobs.status_counts) always equal a count of the job rows: after every
kind of change the core makes, under concurrent transactions, after savepoints and transactions
rolled back, after deletions, and after the migration that makes them on an existing database.
So do each job's kept epoch times and the tag rows' copy of their job's columns."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import MetaData, create_engine, func, insert, select, update

from jobs import experiments, lifecycle, retention, submission
from jobs.db import session_scope
from jobs.lifecycle import claim_job, claim_next_job, finish_job, record_epoch, release_job
from jobs.settings import get_settings
from jobs.specs import ExperimentCreate
from jobs.status_counts import experiment_counts, recount, service_counts
from jobs.tables import ALL_JOBS, EpochMetric, Job, JobCount, JobStatus, JobTag, utcnow
from tests.builders import job_spec, new_jobs
from tests.support import epoch_row, statements_of


def kept(session: Any) -> Counter[tuple[int, str]]:
    rows = session.execute(select(JobCount.experiment_id, JobCount.status, JobCount.jobs))
    return Counter({(scope, status): jobs for scope, status, jobs in rows if jobs})


def counted(session: Any) -> Counter[tuple[int, str]]:
    """The same figures counted from the job rows."""
    found: Counter[tuple[int, str]] = Counter()
    for experiment_id, status, jobs in session.execute(
        select(Job.experiment_id, Job.status, func.count()).group_by(Job.experiment_id, Job.status)
    ):
        found[(ALL_JOBS, status)] += jobs
        if experiment_id is not None:
            found[(experiment_id, status)] += jobs
    return found


def assert_counts_exact() -> None:
    with session_scope(write=False) as session:
        assert kept(session) == counted(session)


def new_experiment(jobs: int, tags: list[str] | None = None) -> list[int]:
    spec = ExperimentCreate.model_validate(
        {
            "name": "sweep",
            "blocks": ["mobile"],
            "hyperparameters": {"epochs": 2},
            "seeds": list(range(jobs)),
            "tags": tags or [],
        }
    )
    with session_scope() as session:
        made = experiments.create_experiment(session, spec, settings=get_settings())
        return experiments.experiment_job_ids(session, made.experiment.id)


def experiment_of(job_id: int) -> int:
    with session_scope(write=False) as session:
        experiment_id = session.get(Job, job_id).experiment_id
        assert experiment_id is not None
        return experiment_id


def test_every_change_the_core_makes_keeps_the_counts_exact(db: str) -> None:
    lone = new_jobs(4, tags=["a"])
    grid = new_experiment(5, tags=["a", "b"])
    experiment_id = experiment_of(grid[0])
    assert_counts_exact()
    with session_scope(write=False) as session:
        assert service_counts(session)[JobStatus.QUEUED] == 9
        assert experiment_counts(session, [experiment_id])[experiment_id] == {
            **dict.fromkeys(JobStatus, 0),
            JobStatus.QUEUED: 5,
        }

    with session_scope() as session:
        first = claim_job(session, grid[0], worker="w", lease_seconds=60)
        second = claim_job(session, lone[0], worker="w", lease_seconds=60)
        third = claim_job(session, lone[1], worker="w", lease_seconds=60)
    assert first and second and third
    with session_scope() as session:
        record_epoch(session, first, epoch_row(1), lease_seconds=60)
        assert finish_job(session, first, JobStatus.SUCCEEDED)
        assert release_job(session, second) == JobStatus.QUEUED
        lifecycle.cancel_job(session, lone[2])  # queued: cancelled at once
        lifecycle.cancel_job(session, grid[1])
    with session_scope() as session:
        # A silent worker: its job goes back to the queue.
        lifecycle.reap_expired_leases(session, now=utcnow() + timedelta(minutes=5))
    assert_counts_exact()
    with session_scope() as session:
        experiments.cancel_experiment(session, experiment_id)
    with session_scope() as session:
        retention.delete_job(session, lone[2])
    assert_counts_exact()
    with session_scope() as session:
        retention.delete_experiment(session, experiment_id)
    assert_counts_exact()
    with session_scope(write=False) as session:
        assert experiment_counts(session, [experiment_id])[experiment_id] == dict.fromkeys(
            JobStatus, 0
        )
        assert (
            session.execute(
                select(func.count()).where(JobCount.experiment_id == experiment_id)
            ).scalar_one()
            == 0
        )


def test_a_rolled_back_savepoint_or_transaction_counts_nothing(db: str) -> None:
    settings = get_settings()
    with session_scope() as session:
        kept_job = submission.add_job(session, job_spec(), settings=settings).id
        savepoint = session.begin_nested()
        submission.add_job(session, job_spec(), settings=settings)
        inner = session.begin_nested()
        submission.add_job(session, job_spec(), settings=settings)
        inner.commit()
        # Noted, not yet written: the session's own reads see them.
        assert service_counts(session)[JobStatus.QUEUED] == 3
        savepoint.rollback()
        assert service_counts(session)[JobStatus.QUEUED] == 1
    with pytest.raises(RuntimeError), session_scope() as session:
        submission.add_job(session, job_spec(), settings=settings)
        raise RuntimeError("the request failed")
    with session_scope(write=False) as session:
        assert service_counts(session)[JobStatus.QUEUED] == 1
        assert session.get(Job, kept_job) is not None
    assert_counts_exact()


def test_the_counts_stay_exact_under_concurrent_transitions(db: str) -> None:
    """Workers claim, record, finish and hand back jobs while a user cancels a whole experiment
    (one transaction moving many jobs), more jobs are submitted and ended ones deleted, each in
    real concurrent sessions: no transaction fails (no deadlock on the counts' rows) and the
    counts equal a count of the rows."""
    grid = new_experiment(30, tags=["t"])
    cancelled_experiment = experiment_of(grid[0])
    new_experiment(20)
    new_jobs(20, tags=["t"])
    errors: list[BaseException] = []
    start = threading.Barrier(7)

    def guarded(work: Any) -> Any:
        def run() -> None:
            try:
                start.wait()
                work()
            except BaseException as error:  # noqa: BLE001 - reported by the test
                errors.append(error)

        return run

    def worker(index: int) -> None:
        for turn in range(12):
            with session_scope() as session:
                claim = claim_next_job(session, worker=f"w{index}", lease_seconds=60)
            if claim is None:
                return
            with session_scope() as session:
                record_epoch(session, claim, epoch_row(1), lease_seconds=60)
            with session_scope() as session:
                if turn % 3 == 2:
                    release_job(session, claim)
                else:
                    finish_job(session, claim, JobStatus.SUCCEEDED)

    def canceller() -> None:
        with session_scope() as session:
            experiments.cancel_experiment(session, cancelled_experiment)

    def submitter() -> None:
        for _ in range(5):
            new_jobs(2, tags=["t"])
            new_experiment(3)

    def deleter() -> None:
        for _ in range(10):
            with session_scope() as session:
                ended = session.execute(
                    select(Job.id).where(Job.status == JobStatus.SUCCEEDED).limit(2)
                ).scalars()
                for job_id in list(ended):
                    retention.delete_job(session, job_id)

    threads = [
        threading.Thread(target=guarded(lambda index=index: worker(index))) for index in range(4)
    ]
    threads += [threading.Thread(target=guarded(work)) for work in (canceller, submitter, deleter)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    assert_counts_exact()


def test_recount_repairs_rows_written_outside_the_service(db: str) -> None:
    new_jobs(3)
    with session_scope() as session:
        session.execute(update(Job).values(status=JobStatus.FAILED))
    with session_scope(write=False) as session:
        assert kept(session) != counted(session)
    with session_scope() as session:
        recount(session)
    assert_counts_exact()


def test_each_job_keeps_its_epoch_times_and_their_mean(db: str) -> None:
    (job_id,) = new_jobs(1)
    with session_scope() as session:
        claim = claim_job(session, job_id, worker="w", lease_seconds=60)
    assert claim is not None
    for epoch, seconds in ((1, 3.0), (2, 5.0), (2, 9.0)):  # epoch 2 twice: stored once
        with session_scope() as session:
            figures = {**epoch_row(epoch), "seconds": seconds}
            record_epoch(session, claim, figures, lease_seconds=60)
    with session_scope() as session:
        # A resume fills an epoch the database lacked.
        lifecycle.repair_history(session, claim, [{**epoch_row(3), "seconds": 7.0}])
    with session_scope(write=False) as session:
        job = session.get(Job, job_id)
        assert (job.epoch_seconds, job.epochs_recorded) == (15.0, 3)
        mean = session.execute(
            select(func.avg(EpochMetric.seconds)).where(EpochMetric.job_id == job_id)
        ).scalar_one()
        assert job.seconds_per_epoch == pytest.approx(5.0) == pytest.approx(mean)


def tag_copies(job_id: int) -> set[tuple[Any, ...]]:
    with session_scope(write=False) as session:
        return {
            tuple(row)
            for row in session.execute(
                select(
                    JobTag.tag,
                    JobTag.status,
                    JobTag.block,
                    JobTag.experiment_id,
                    JobTag.best_test_accuracy,
                ).where(JobTag.job_id == job_id)
            )
        }


def test_tag_rows_carry_their_jobs_filter_columns_as_they_change(db: str) -> None:
    (job_id,) = new_jobs(1, tags=["x", "y"])
    assert tag_copies(job_id) == {
        ("x", "queued", "mobile", None, None),
        ("y", "queued", "mobile", None, None),
    }
    grid = new_experiment(1, tags=["z"])
    experiment_id = experiment_of(grid[0])
    assert tag_copies(grid[0]) == {("z", "queued", "mobile", experiment_id, None)}
    with session_scope() as session:
        claim = claim_job(session, job_id, worker="w", lease_seconds=60)
    assert claim is not None
    with session_scope() as session:
        record_epoch(session, claim, epoch_row(1, accuracy=0.25), lease_seconds=60)
    assert tag_copies(job_id) == {
        ("x", "running", "mobile", None, 0.25),
        ("y", "running", "mobile", None, 0.25),
    }
    with session_scope() as session:
        finish_job(session, claim, JobStatus.FAILED)
    assert {row[1] for row in tag_copies(job_id)} == {"failed"}


def test_the_migration_counts_an_existing_databases_jobs(empty_database_url: str) -> None:
    """Rows made at revision 0008 (jobs of two experiments and alone, in several statuses,
    tagged, with epochs): after the upgrade the kept counts equal a count of the rows, each job
    has its epoch times, and each tag row its job's columns."""
    from jobs.migrations import upgrade

    url = empty_database_url
    upgrade(url, "0008")
    engine = create_engine(url)
    old = MetaData()
    old.reflect(engine)
    now = utcnow()
    statuses = ["queued", "running", "succeeded", "failed", "cancelled", "succeeded", "queued"]
    jobs = [
        {
            "id": index,
            "experiment_id": (None, 1, 2)[index % 3],
            "tags": [],
            "block": ("plain", "mobile")[index % 2],
            "dataset": "cifar100",
            "spec": {},
            "config": {},
            "status": status,
            "cancel_requested": False,
            "priority": 0,
            "fair_share_key": 0,
            "params": 1,
            "macs": 1,
            "epochs_total": 5,
            "epochs_done": 0,
            "best_test_accuracy": 0.1 * (index % 4) if index % 4 else None,
            "attempt": 0,
            "max_attempts": 3,
            "enqueue_count": 1,
            "created_at": now,
            "updated_at": now,
            "prune_requested": False,
            "event_seq": 0,
        }
        for index, status in enumerate(statuses * 3, start=1)
    ]
    epochs = [
        {
            **epoch_row(epoch),
            "seconds": float(job["id"] + epoch),
            "job_id": job["id"],
            "recorded_at": now,
        }
        for job in jobs
        for epoch in range(1, job["id"] % 4 + 1)
    ]
    with engine.begin() as connection:
        connection.execute(
            insert(old.tables["experiments"]),
            [
                {
                    "id": experiment_id,
                    "name": "e",
                    "tags": [],
                    "spec": {},
                    "created_at": now,
                    "priority": 0,
                    "trials_created": 0,
                    "cancel_requested": False,
                }
                for experiment_id in (1, 2)
            ],
        )
        connection.execute(insert(old.tables["jobs"]), jobs)
        connection.execute(
            insert(old.tables["job_tags"]),
            [{"tag": "old", "job_id": job["id"]} for job in jobs if job["id"] % 2],
        )
        connection.execute(insert(old.tables["epoch_metrics"]), epochs)
    engine.dispose()
    upgrade(url)
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(JobCount.experiment_id, JobCount.status, JobCount.jobs)
            )
            assert Counter({(scope, status): n for scope, status, n in rows if n}) == counted(
                connection
            )
            times: dict[int, list[float]] = {job["id"]: [] for job in jobs}
            for epoch in epochs:
                times[epoch["job_id"]].append(epoch["seconds"])
            for job in connection.execute(
                select(Job.id, Job.epoch_seconds, Job.epochs_recorded, Job.seconds_per_epoch)
            ):
                recorded = times[job.id]
                assert (job.epoch_seconds, job.epochs_recorded) == (sum(recorded), len(recorded))
                mean = sum(recorded) / len(recorded) if recorded else None
                assert job.seconds_per_epoch == (pytest.approx(mean) if recorded else None)
            copies = connection.execute(
                select(
                    JobTag, Job.status, Job.block, Job.experiment_id, Job.best_test_accuracy
                ).join(Job, Job.id == JobTag.job_id)
            ).all()
            assert len(copies) == len([job for job in jobs if job["id"] % 2])
            for row in copies:
                assert (row.status, row.block, row.experiment_id, row.best_test_accuracy) == tuple(
                    row
                )[-4:], row
    finally:
        engine.dispose()


def test_the_scrape_and_the_queue_limit_read_the_kept_counts(client: Any) -> None:
    """Rows written behind the service's back (no kept count moved) change neither the scrape's
    jobs nor the queue's depth, and the scrape counts no job by status."""
    from tests.test_metrics import samples, value

    new_jobs(3)
    with session_scope() as session:
        session.execute(update(Job).values(status=JobStatus.FAILED))
    with statements_of(write=False) as seen:
        scrape = samples(client.get("/metrics").text)
    assert value(scrape, "cifar_jobs_queue_depth") == 3
    assert value(scrape, "cifar_jobs_jobs", status="failed") == 0
    assert not [sql for sql in seen if "GROUP BY jobs.status" in sql], seen


def test_a_pages_queue_positions_number_no_queue(client: Any) -> None:
    """Positions of a page count the entries between its jobs in the dispatch order; no
    window numbers the queue."""
    new_jobs(30)
    new_experiment(30)
    with statements_of(write=False) as seen:
        page = client.get("/jobs", params={"status": "queued", "limit": 20}).json()
    positions = sorted(item["queue_position"] for item in page["items"])
    assert len(set(positions)) == 20 and positions[-1] <= 60
    assert not [sql for sql in seen if "row_number" in sql.lower() or " OVER " in sql], seen
