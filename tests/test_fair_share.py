"""Fair share by person: among equal priorities people take turns, one job each per turn, and
each person's experiments and lone jobs take turns within theirs; jobs without an owner are one
person's. Positions tell the order the claims take, after claims, cancels and priority changes.
A person's running-jobs limit: a claim passes over their jobs while they are at it, under
concurrent claims too; and with a real worker process."""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from jobs import dispatch, experiments, submission
from jobs.accounts import NO_ACCOUNTS
from jobs.db import session_scope
from jobs.lifecycle import (
    Claim,
    cancel_job,
    claim_next_job,
    finish_job,
    release_job,
    set_priority,
)
from jobs.settings import get_settings
from jobs.specs import ExperimentCreate, JobCreate
from jobs.tables import Job, JobStatus, User, utcnow
from tests.support import start_worker, wait_for
from tests.test_priorities import positions_then_claims

SPEC = {"block": "mobile", "hyperparameters": {"epochs": 1}, "train_samples": 10}


@pytest.fixture
def db_settings() -> dict[str, str]:
    return {"MAX_QUEUED_JOBS": "2000"}


def lone(owner: str | None, priority: int = 0) -> int:
    with session_scope() as session:
        spec = JobCreate.model_validate({**SPEC, "priority": priority})
        return submission.create_job(session, spec, settings=get_settings(), owner=owner).job.id


def experiment(owner: str | None, jobs: int) -> list[int]:
    spec = ExperimentCreate.model_validate(
        {"name": "sweep", "blocks": ["mobile"], "hyperparameters": {"epochs": 1}}
        | {"seeds": list(range(jobs))}
    )
    with session_scope() as session:
        made = experiments.create_experiment(session, spec, settings=get_settings(), owner=owner)
        return [job.id for job in made.experiment.jobs]


def claim(worker: str = "w") -> int | None:
    with session_scope() as session:
        claimed = claim_next_job(session, worker=worker, lease_seconds=60)
        return None if claimed is None else claimed.job_id


def place(job_id: int) -> dispatch.QueuePlace:
    with session_scope(write=False) as session:
        found = dispatch.queue_place(session, job_id)
        assert found is not None
        assert dispatch.queue_position(session, job_id) == found.position
        return found


@pytest.mark.slow
def test_a_later_persons_first_job_waits_for_one_job_not_for_all_of_anothers(db: str) -> None:
    """alice's 300-job experiment and 20 lone jobs are queued; bob's one job is 2nd (it used to
    wait behind every lone job of alice's at the queue's head turn), and the claims agree."""
    sweep = experiment("alice", 300)
    singles = [lone("alice") for _ in range(20)]
    bobs = lone("bob")
    with session_scope(write=False) as session:
        assert dispatch.queue_position(session, bobs) == 2
    assert place(bobs).reason == (
        "2nd: after 1 job of other people's turns at priority 0 "
        "(people take turns, one job each per turn)."
    )
    order, claimed = positions_then_claims(5)
    # alice's own order is today's: her experiment and her lone jobs take turns.
    assert claimed == order[:5] == [sweep[0], bobs, singles[0], singles[1], singles[2]]
    assert order[-1] == sweep[-1]


def test_three_people_take_turns_through_claims_cancels_and_a_priority_change(db: str) -> None:
    """alice (an experiment of 3, then two lone jobs), bob (an experiment of 2) and jobs
    without an owner (one person): one job each per turn, the order the positions tell and
    the claims take; a cancelled job's turn goes to its owner's next job; a raised job goes
    first and its owner's turns close up behind it."""
    alice = experiment("alice", 3)
    alice_lone = [lone("alice"), lone("alice")]
    bob = experiment("bob", 2)
    nobody = lone(None)
    order, _ = positions_then_claims(0)
    # Turn 0: each person's first; turn 1: alice's first lone job (her experiment's turn-mate),
    # bob's second; then alice's.
    expected = [alice[0], bob[0], nobody, alice_lone[0], bob[1], alice_lone[1], alice[1], alice[2]]
    assert order == expected
    _, claimed = positions_then_claims(2)
    assert claimed == expected[:2]

    with session_scope() as session:
        cancel_job(session, alice_lone[0])
    order, _ = positions_then_claims(0)
    assert order == [nobody, alice_lone[1], bob[1], alice[1], alice[2]]
    assert place(alice_lone[1]).reason == (
        "2nd: after 1 job of other people's turns at priority 0 "
        "(people take turns, one job each per turn)."
    )
    assert place(alice[1]).reason == (
        "4th: after 2 jobs of other people's turns at priority 0 and 1 job of alice's at "
        "priority 0 with an earlier turn (people take turns, one job each per turn, and so do "
        "each one's experiments and lone jobs)."
    )

    with session_scope() as session:
        set_priority(session, alice[2], 5, actor=NO_ACCOUNTS)
    order, claimed = positions_then_claims(5)
    assert claimed == order == [alice[2], nobody, alice_lone[1], bob[1], alice[1]]
    assert claim() is None


def test_a_released_job_keeps_its_place(db: str) -> None:
    """A job given back to the queue (its worker stopped) is taken first again: it keeps its
    turn, ahead of the turns taken after it."""
    alice = experiment("alice", 3)
    bob = experiment("bob", 3)
    with session_scope() as session:
        taken = claim_next_job(session, worker="w", lease_seconds=60)
        assert taken is not None and taken.job_id == alice[0]
    lone("alice")
    with session_scope() as session:
        assert release_job(session, taken) == JobStatus.QUEUED
    order, claimed = positions_then_claims(3)
    assert claimed == order[:3] == [alice[0], bob[0], alice[1]]


def test_jobs_without_an_owner_keep_the_order_of_experiments_and_lone_jobs(db: str) -> None:
    """No accounts: one person, whose experiments and lone jobs take turns as they always did."""
    first = experiment(None, 3)
    single = lone(None)
    second = experiment(None, 2)
    order, claimed = positions_then_claims(6)
    assert claimed == order == [first[0], single, second[0], first[1], second[1], first[2]]


@pytest.fixture
def limited() -> dict[str, str]:
    return {"MAX_QUEUED_JOBS": "2000", "MAX_RUNNING_JOBS_PER_USER": "1"}


def test_a_person_at_the_running_limit_is_passed_over_until_a_job_of_theirs_ends(
    configure, database_url: str, limited: dict[str, str]
) -> None:
    configure(database_url, **limited)
    alice = [lone("alice") for _ in range(3)]
    bob = [lone("bob") for _ in range(3)]
    nobody = [lone(None) for _ in range(2)]
    with session_scope() as session:
        # bob's own limit overrides the service's.
        session.execute(
            insert(User).values(name="bob", role="user", max_running_jobs=2, created_at=utcnow())
        )
    waits = (
        " It waits for one of alice's running jobs to end (their limit: 1 at once); "
        "free workers take the jobs after it meanwhile."
    )
    assert claim() == alice[0]
    assert claim() == bob[0]
    waiting = place(alice[1])
    assert (waiting.position, waiting.running_limit) == (2, 1)
    assert waiting.reason == (
        "2nd: after 1 job of other people's turns at priority 0 "
        "(people take turns, one job each per turn)." + waits
    )
    assert claim() == nobody[0]
    assert claim() == bob[1]  # alice's is passed over
    assert claim() == nobody[1]  # jobs without an owner have no limit
    assert claim() is None  # alice at 1, bob at 2
    with session_scope(write=False) as session:
        assert dispatch.queue_positions(session, [alice[1], bob[2], alice[2]]) == {
            alice[1]: 1,
            alice[2]: 2,
            bob[2]: 3,
        }
    assert place(alice[1]).reason == "1st." + waits
    with session_scope() as session:
        running = session.execute(
            select(Job.lease_token, Job.attempt).where(Job.id == alice[0])
        ).one()
        ended = Claim(alice[0], running.attempt, running.lease_token, "w", {})
        assert finish_job(session, ended, JobStatus.SUCCEEDED)
    assert place(alice[1]).reason == "1st: a free worker takes it next."
    assert claim() == alice[1]
    assert claim() is None


def test_concurrent_claims_never_start_more_than_the_limit(
    configure, database_url: str, limited: dict[str, str]
) -> None:
    """Eight threads claim at once, each in its own transaction, from 20 queued jobs of one
    person whose limit is 2 (then of another with none): exactly 2 of hers start."""
    configure(database_url, **{**limited, "MAX_RUNNING_JOBS_PER_USER": "2"})
    hers = set(experiment("alice", 20))
    others = {lone(None) for _ in range(6)}
    start = threading.Barrier(8)
    claimed: list[int] = []
    errors: list[BaseException] = []

    def worker(number: int) -> None:
        try:
            start.wait()
            for _ in range(3):
                job_id = claim(f"w{number}")
                if job_id is not None:
                    claimed.append(job_id)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(set(claimed)) == len(claimed)
    assert len(hers & set(claimed)) == 2
    assert others <= set(claimed)


@pytest.mark.e2e
def test_a_real_worker_keeps_a_person_to_their_running_limit(
    configure, database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """One worker process with two slots, MAX_RUNNING_JOBS_PER_USER=1, on the embedded default
    and on PostgreSQL with Redis: alice's three jobs run one at a time, bob's runs beside her
    first, and every job succeeds (a job of alice's that ends wakes a worker for her next)."""
    broker = None if database_url.startswith("sqlite") else request.getfixturevalue("redis_url")
    env = configure(
        database_url,
        broker,
        MAX_RUNNING_JOBS_PER_USER="1",
        WORKER_CONCURRENCY="2",
        TORCH_THREADS="1",
    )
    tiny = {**SPEC, "train_samples": 16, "test_samples": 8}
    tiny["hyperparameters"] = {"epochs": 1, "batch_size": 8}
    ids: dict[str, list[int]] = {"alice": [], "bob": []}
    for owner in ("alice", "alice", "bob", "alice"):
        with session_scope() as session:
            spec = JobCreate.model_validate(tiny)
            made = submission.create_job(session, spec, settings=get_settings(), owner=owner)
            ids[owner].append(made.job.id)
    worker = start_worker(env, tmp_path)
    try:

        def ended() -> list[tuple[int, str, str, datetime, datetime]] | None:
            with session_scope(write=False) as session:
                rows = session.execute(
                    select(Job.id, Job.owner, Job.status, Job.started_at, Job.finished_at)
                ).all()
            if all(row.status in ("succeeded", "failed", "cancelled") for row in rows):
                return [tuple(row) for row in rows]  # type: ignore[misc]
            return None

        rows = wait_for(ended, timeout=180, interval=0.5, what="the jobs to end")
    finally:
        worker.stop()
    assert {row[2] for row in rows} == {"succeeded"}, worker.output()
    spans = {row[0]: (row[3], row[4]) for row in rows}
    hers = sorted((spans[job_id] for job_id in ids["alice"]), key=lambda span: span[0])
    for earlier, later in zip(hers, hers[1:], strict=False):
        assert earlier[1] <= later[0], hers  # never two of hers at once
    bobs = spans[ids["bob"][0]]
    assert bobs[0] < hers[1][0]  # bob's job did not wait for alice's second


def test_a_count_against_the_limit_waits_for_the_claim_that_holds_it(
    configure, database_url: str, limited: dict[str, str]
) -> None:
    """The fence: while one transaction has counted alice's running jobs and claims her second
    (limit 2), another's count waits for it to commit, then sees both. Without it, the other
    would count one and start a third."""
    configure(database_url, **{**limited, "MAX_RUNNING_JOBS_PER_USER": "2"})
    hers = experiment("alice", 3)
    assert claim() == hers[0]
    answer: list[bool] = []
    with session_scope() as session:
        taken = claim_next_job(session, worker="a", lease_seconds=60)
        assert taken is not None and taken.job_id == hers[1]

        def count() -> None:
            with session_scope() as other:
                answer.append(dispatch.has_running_room(other, "alice"))

        counting = threading.Thread(target=count)
        counting.start()
        counting.join(timeout=1.0)
        assert counting.is_alive() and answer == []  # it waits for this claim
    counting.join(timeout=30)
    assert answer == [False]
    assert claim() is None


def test_a_job_whose_owner_never_joined_the_turns_still_runs(db: str) -> None:
    """Rows written behind the service's back (no owner_turns row): the job is still claimed."""
    from sqlalchemy import delete

    from jobs.tables import OwnerTurn

    waiting = lone("alice")
    with session_scope() as session:
        session.execute(delete(OwnerTurn))
    with session_scope(write=False) as session:
        assert dispatch.queue_position(session, waiting) == 1
    assert claim() == waiting
