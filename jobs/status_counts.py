"""How many jobs have each status, for the whole service and per experiment: the `job_counts`
rows, kept by the transactions that make, move and delete jobs, so that a page of experiments
and a scrape read a few rows instead of counting jobs (docs/design/kept-counts.md).

A change is noted in the session (`note`, `moved`) and written just before the transaction
commits, summed per row, as one upsert that takes its rows in one order. So a transaction holds
a count's row lock only while it commits and never waits for a job row while holding one, and
two transactions never wait for each other's counts in a cycle; the counts commit or roll back
with the jobs they count. A savepoint rolled back takes its notes with it. Reads add the notes
of their own session not yet written."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, delete, event, func, insert, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, SessionTransaction

from jobs.tables import ALL_JOBS, Job, JobCount, JobStatus

_NOTES = "job_count_notes"

# (experiment id, or ALL_JOBS for the whole service; status)
CountKey = tuple[int, str]
StatusCounts = dict[JobStatus, int]


@dataclass(frozen=True)
class _Note:
    savepoint: SessionTransaction | None  # the innermost savepoint open when it was noted
    key: CountKey
    jobs: int


def _notes(session: Session) -> list[_Note]:
    notes: list[_Note] = session.info.setdefault(_NOTES, [])
    return notes


def note(session: Session, experiment_id: int | None, status: str, jobs: int) -> None:
    """`jobs` more jobs (fewer when negative) with `status`, service-wide and in the experiment
    (None: a job of no experiment), counted when the session's transaction commits."""
    savepoint = session.get_nested_transaction()
    scopes = [ALL_JOBS] if experiment_id is None else [ALL_JOBS, experiment_id]
    _notes(session).extend(_Note(savepoint, (scope, str(status)), jobs) for scope in scopes)


def moved(session: Session, experiment_id: int | None, before: str, after: str) -> None:
    """One job went from status `before` to `after`."""
    note(session, experiment_id, before, -1)
    note(session, experiment_id, after, 1)


def _pending(session: Session) -> Counter[CountKey]:
    summed: Counter[CountKey] = Counter()
    for item in session.info.get(_NOTES, ()):
        summed[item.key] += item.jobs
    return summed


def _upsert(session: Session) -> Any:
    dialect = session.get_bind().dialect.name
    statement: Any = (postgresql if dialect == "postgresql" else sqlite).insert(JobCount)
    return statement.on_conflict_do_update(
        index_elements=[JobCount.experiment_id, JobCount.status],
        set_={"jobs": JobCount.jobs + statement.excluded.jobs},
    )


@event.listens_for(Session, "before_commit")
def _write_notes(session: Session) -> None:
    """Add the transaction's notes to their rows, in key order, as it commits."""
    if session.in_nested_transaction():
        return
    changes = sorted((key, jobs) for key, jobs in _pending(session).items() if jobs)
    session.info.pop(_NOTES, None)
    if changes:
        rows = [{"experiment_id": key[0], "status": key[1], "jobs": jobs} for key, jobs in changes]
        session.execute(_upsert(session).values(rows))


def _inside(savepoint: SessionTransaction | None, ended: SessionTransaction) -> bool:
    while savepoint is not None:
        if savepoint is ended:
            return True
        savepoint = savepoint.parent
    return False


@event.listens_for(Session, "after_soft_rollback")
def _forget_rolled_back(session: Session, transaction: SessionTransaction) -> None:
    if not transaction.nested:
        session.info.pop(_NOTES, None)
        return
    kept = [item for item in _notes(session) if not _inside(item.savepoint, transaction)]
    session.info[_NOTES] = kept


@event.listens_for(Session, "after_transaction_end")
def _forget_ended(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(_NOTES, None)


def _empty() -> StatusCounts:
    return dict.fromkeys(JobStatus, 0)


def experiment_counts(session: Session, experiment_ids: Iterable[int]) -> dict[int, StatusCounts]:
    """Each experiment's jobs per status (every status present), read from its kept rows."""
    wanted = sorted(set(experiment_ids))
    counts = {experiment_id: _empty() for experiment_id in wanted}
    if not wanted:
        return counts
    rows = session.execute(
        select(JobCount.experiment_id, JobCount.status, JobCount.jobs).where(
            JobCount.experiment_id.in_(wanted)
        )
    )
    pending = _pending(session)
    for experiment_id, status, jobs in rows:
        counts[experiment_id][JobStatus(status)] += int(jobs)
    for (scope, status), jobs in pending.items():
        if scope in counts:
            counts[scope][JobStatus(status)] += jobs
    return counts


def service_counts(session: Session) -> StatusCounts:
    """Every job of the service per status (every status present)."""
    return experiment_counts(session, [ALL_JOBS])[ALL_JOBS]


def forget_experiment(session: Session, experiment_id: int) -> None:
    """An experiment deleted in this transaction: its rows go, and its notes with them."""
    notes = _notes(session)
    session.info[_NOTES] = [item for item in notes if item.key[0] != experiment_id]
    session.execute(delete(JobCount).where(JobCount.experiment_id == experiment_id))


def recount(session: Session) -> None:
    """Every kept count made again from the job rows, in the caller's transaction: for rows
    written outside the service (a bulk load, a repair), and as the measure the kept counts
    are tested against."""
    session.info.pop(_NOTES, None)
    session.execute(delete(JobCount))
    session.execute(
        insert(JobCount).from_select(
            ["experiment_id", "status", "jobs"],
            select(literal(ALL_JOBS, Integer), Job.status, func.count()).group_by(Job.status),
        )
    )
    session.execute(
        insert(JobCount).from_select(
            ["experiment_id", "status", "jobs"],
            select(Job.experiment_id, Job.status, func.count())
            .where(Job.experiment_id.is_not(None))
            .group_by(Job.experiment_id, Job.status),
        )
    )
