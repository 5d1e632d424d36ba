"""Finding jobs and experiments: one by id, or a page of them.

Pages are keyset pages: a page's `next_cursor` holds the sort value and id of its last row, and
the next page starts strictly after them in the list's order (ties broken by id, which is
unique). So paging never skips or repeats a row while jobs are being added (a new job is newer
than every cursor, so it lands on pages already read) or finished (a status filter can drop a
job from the list, never move others across the cursor), and each page is a range scan of one
index (jobs.tables) however deep it is. The cursor is opaque to clients: base64url of a small
JSON object, checked field by field when it comes back."""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

from sqlalchemy import Select, literal, null, select, tuple_
from sqlalchemy.orm import Session, defer

from jobs.db import index_order
from jobs.errors import ExperimentNotFound, InvalidFields, JobNotFound
from jobs.tables import AuditEvent, Experiment, Job, JobStatus, JobTag
from models.catalog import BLOCK_NAMES

# "created": newest first (ids grow with submission). "best_test_accuracy": highest first,
# jobs without one (not yet tested) after every job with one, newest first among them.
JobSort = Literal["created", "best_test_accuracy"]
JOB_SORTS: tuple[str, ...] = get_args(JobSort)
MAX_CURSOR_CHARS = 200
MAX_ID = 2**31 - 1


@dataclass(frozen=True)
class Cursor:
    """Where a page starts: after the row with this sort value (best test accuracy; None for a
    job without one, or a list sorted by id only) and this id."""

    of: str  # "jobs:<sort>" or "experiments"
    id: int
    value: float | None = None

    def encode(self) -> str:
        data: dict[str, Any] = {"of": self.of, "id": self.id}
        if _has_value(self.of):
            data["value"] = self.value
        raw = json.dumps(data, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _has_value(of: str) -> bool:
    """Whether a list's cursor holds a sort value besides the id."""
    sort = of.split(":")[1] if ":" in of else None
    return sort is not None and sort not in ("created", "job_id")


def _bad_cursor(message: str) -> InvalidFields:
    return InvalidFields([("cursor", message)])


def decode_cursor(text: str, of: str) -> Cursor:
    """The cursor a page handed out for this list; a clear error naming `cursor` for anything
    else (another list's or sort's cursor, a cursor edited or cut short)."""
    hint = "pass the `next` value of the page before, unchanged"
    if not text or len(text) > MAX_CURSOR_CHARS or not set(text) <= _ALPHABET:
        raise _bad_cursor(f"not a cursor of this list; {hint}")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError):
        raise _bad_cursor(f"not a cursor of this list; {hint}") from None
    expected = {"of", "id", "value"} if _has_value(of) else {"of", "id"}
    if not isinstance(data, dict) or set(data) != expected or data.get("of") != of:
        raise _bad_cursor(f"a cursor of another list or sort; {hint}")
    job_id, value = data["id"], data.get("value")
    if type(job_id) is not int or not 1 <= job_id <= MAX_ID:
        raise _bad_cursor(f"not a cursor of this list; {hint}")
    if value is not None and (type(value) not in (int, float) or not math.isfinite(value)):
        raise _bad_cursor(f"not a cursor of this list; {hint}")
    return Cursor(of, job_id, None if value is None else float(value))


_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job


def get_experiment(session: Session, experiment_id: int) -> Experiment:
    experiment = session.get(Experiment, experiment_id)
    if experiment is None:
        raise ExperimentNotFound(experiment_id)
    return experiment


def list_jobs(
    session: Session,
    *,
    status: str | None = None,
    block: str | None = None,
    experiment_id: int | None = None,
    tag: str | None = None,
    owner: str | None = None,
    sort: JobSort = "created",
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Job], str | None]:
    """A page of jobs in `sort` order and the cursor of the next page (None after the last).
    Every filter and the sort are columns of one index (jobs.tables): of the jobs for up to
    two of status, block and experiment, of the tag rows, which carry their job's copy of
    those columns, when filtering by tag. An owner's jobs, newest first, alone or of one
    status, are read from the (owner, id) and (owner, status, id) indexes; the owner with
    another filter (block, experiment, tag) or by accuracy has no index of its own: the
    owner's index (or the other filter's) is read and the rest filtered row by row."""
    of = f"jobs:{sort}"
    after = decode_cursor(cursor, of) if cursor is not None else None
    with index_order(session):
        jobs = _jobs_page(session, status, block, experiment_id, tag, owner, sort, after, limit + 1)
    if len(jobs) <= limit:
        return jobs, None
    jobs = jobs[:limit]
    last = jobs[-1]
    value = last.best_test_accuracy if sort == "best_test_accuracy" else None
    return jobs, Cursor(of, last.id, value).encode()


def _jobs_page(
    session: Session,
    status: str | None,
    block: str | None,
    experiment_id: int | None,
    tag: str | None,
    owner: str | None,
    sort: JobSort,
    after: Cursor | None,
    count: int,
) -> list[Job]:
    query = select(Job)
    if owner is not None:
        query = query.where(Job.owner == owner)
    columns: Any = Job
    order_id: Any = Job.id
    if tag is not None:
        query = query.join(JobTag, JobTag.job_id == Job.id).where(JobTag.tag == tag)
        columns, order_id = JobTag, JobTag.job_id
    if experiment_id is not None:
        query = query.where(columns.experiment_id == experiment_id)
    if status is not None:
        query = query.where(columns.status == status)
    if block is not None:
        query = query.where(columns.block == block)

    if sort == "created":
        if after is not None:
            query = query.where(order_id < after.id)
        return _fetch(session, query.order_by(order_id.desc()), count)
    return _by_accuracy(session, query, columns.best_test_accuracy, order_id, after, count)


def _fetch(session: Session, query: Select[Job], count: int) -> list[Job]:
    return list(session.execute(query.limit(count)).scalars())


def _by_accuracy(
    session: Session,
    query: Select[Job],
    accuracy: Any,
    order_id: Any,
    after: Cursor | None,
    count: int,
) -> list[Job]:
    """Highest best test accuracy first, ties newest first, then the jobs without one, newest
    first. Two range scans (jobs with a value, then those without) rather than one ORDER BY
    with NULLS LAST, which PostgreSQL cannot read from an ascending index."""
    jobs: list[Job] = []
    if after is None or after.value is not None:
        tested = query.where(accuracy.is_not(None))
        if after is not None:
            tested = tested.where(tuple_(accuracy, order_id) < tuple_(after.value, after.id))
        jobs = _fetch(session, tested.order_by(accuracy.desc(), order_id.desc()), count)
    if len(jobs) < count:
        untested = query.where(accuracy.is_(None))
        if after is not None and after.value is None:
            untested = untested.where(order_id < after.id)
        # Ordered by the null too: the index's own order, which the planner then reads.
        ordered = untested.order_by(accuracy.desc(), order_id.desc())
        jobs += _fetch(session, ordered, count - len(jobs))
    return jobs


# An experiment's jobs sort by one of these columns; block and status in their own order (the
# registry's, the lifecycle's), the others by value. Jobs without a value come last in either
# order, ties by job id.
EXPERIMENT_SORT_COLUMNS: dict[str, Any] = {
    "job_id": Job.id,
    "block": Job.block,
    "status": Job.status,
    "best_test_accuracy": Job.best_test_accuracy,
    "final_test_accuracy": Job.final_test_accuracy,
    "final_train_loss": Job.final_train_loss,
    "seconds_per_epoch": Job.seconds_per_epoch,
    "params": Job.params,
    "macs": Job.macs,
}
RANKED_VALUES: dict[str, tuple[str, ...]] = {
    "block": tuple(BLOCK_NAMES),
    "status": tuple(JobStatus),
}
EXPERIMENT_ORDERS = ("asc", "desc")
# A page of an experiment's jobs: 100 unless asked (at most the largest experiment).
EXPERIMENT_JOBS_PAGE = 100


@dataclass(frozen=True)
class JobKeys:
    """A page of an experiment's jobs in one sort: each job's id and its place in the sort (the
    value, or the rank of its block or status, that a cursor after it holds), and the cursor
    of the page after it."""

    of: str
    keys: list[tuple[int, float | None]]
    next_cursor: str | None

    @property
    def ids(self) -> list[int]:
        return [job_id for job_id, _ in self.keys]

    def cursor_after(self, index: int) -> str:
        """The cursor of the page that starts after the job at `index` of this one."""
        job_id, value = self.keys[index]
        return Cursor(self.of, job_id, value).encode()


def experiment_job_keys(
    session: Session,
    experiment_id: int,
    *,
    sort: str = "job_id",
    order: str = "asc",
    limit: int = EXPERIMENT_JOBS_PAGE,
    cursor: str | None = None,
) -> JobKeys:
    """A page of the experiment's jobs in `sort` order, read from one index (experiment,
    column, id) and nothing else: a ranked column one range per value in its order, another
    column the jobs with a value, then those without."""
    if sort not in EXPERIMENT_SORT_COLUMNS or order not in EXPERIMENT_ORDERS:
        raise InvalidFields([("sort", f"not a sort of an experiment's jobs: {sort} {order}")])
    of = f"experiment:{sort}:{order}"
    after = decode_cursor(cursor, of) if cursor is not None else None
    descending = order == "desc"
    with index_order(session):
        if sort == "job_id":
            query = select(Job.id, null()).where(Job.experiment_id == experiment_id)
            if after is not None:
                query = query.where(Job.id < after.id if descending else Job.id > after.id)
            ordered = query.order_by(Job.id.desc() if descending else Job.id)
            keys = _keys(session, ordered, limit + 1)
        elif sort in RANKED_VALUES:
            keys = _by_rank(session, experiment_id, sort, descending, after, limit + 1)
        else:
            keys = _by_value(session, experiment_id, sort, descending, after, limit + 1)
    if len(keys) <= limit:
        return JobKeys(of, keys, None)
    page = JobKeys(of, keys[:limit], None)
    return JobKeys(of, page.keys, page.cursor_after(limit - 1))


def list_experiment_jobs(
    session: Session,
    experiment_id: int,
    *,
    sort: str = "job_id",
    order: str = "asc",
    limit: int = EXPERIMENT_JOBS_PAGE,
    cursor: str | None = None,
) -> tuple[list[Job], str | None]:
    """A page of the experiment's jobs (experiment_job_keys), as rows, and the cursor of the
    next page."""
    page = experiment_job_keys(
        session, experiment_id, sort=sort, order=order, limit=limit, cursor=cursor
    )
    # The training config and a trial's Optuna attributes are no row's to show: read if asked.
    query = (
        select(Job).where(Job.id.in_(page.ids)).options(defer(Job.config), defer(Job.trial_attrs))
    )
    rows = {job.id: job for job in session.execute(query).scalars()}
    return [rows[job_id] for job_id in page.ids if job_id in rows], page.next_cursor


def _keys(session: Session, query: Select[int, Any], count: int) -> list[tuple[int, float | None]]:
    return [
        (int(job_id), None if value is None else float(value))
        for job_id, value in session.execute(query.limit(count))
    ]


def _by_rank(
    session: Session,
    experiment_id: int,
    sort: str,
    descending: bool,
    after: Cursor | None,
    count: int,
) -> list[tuple[int, float | None]]:
    """One range per value of the column, in its order (reversed when descending), each by id."""
    column = EXPERIMENT_SORT_COLUMNS[sort]
    ranked = list(enumerate(RANKED_VALUES[sort]))
    start = None if after is None else after.value
    keys: list[tuple[int, float | None]] = []
    for rank, value in reversed(ranked) if descending else ranked:
        if start is not None and ((rank > start) if descending else (rank < start)):
            continue  # a group the pages before have read
        group = select(Job.id, literal(rank)).where(
            Job.experiment_id == experiment_id, column == value
        )
        if after is not None and rank == start:
            group = group.where(Job.id > after.id)
        keys += _keys(session, group.order_by(column, Job.id), count - len(keys))
        if len(keys) == count:
            break
    return keys


def _by_value(
    session: Session,
    experiment_id: int,
    sort: str,
    descending: bool,
    after: Cursor | None,
    count: int,
) -> list[tuple[int, float | None]]:
    """The jobs with a value by value (ties by id), then those without, by id. Descending, the
    rest of the cursor's tie is one range and the lower values another, whose ties the database
    puts in id order (reading at most one tie's index entries beyond the page). Each is ordered
    by every column of the index after its equalities (a tie's value, a null), so that its
    order is the index's."""
    column = EXPERIMENT_SORT_COLUMNS[sort]
    query = select(Job.id, column).where(Job.experiment_id == experiment_id)
    keys: list[tuple[int, float | None]] = []
    if after is None or after.value is not None:
        valued = query.where(column.is_not(None))
        if after is None:
            ordered = valued.order_by(column.desc() if descending else column, Job.id)
            keys = _keys(session, ordered, count)
        elif descending:
            tie = valued.where(column == after.value, Job.id > after.id)
            keys = _keys(session, tie.order_by(column, Job.id), count)
            if len(keys) < count:
                lower = valued.where(column < after.value).order_by(column.desc(), Job.id)
                keys += _keys(session, lower, count - len(keys))
        else:
            later = valued.where(tuple_(column, Job.id) > tuple_(after.value, after.id))
            keys = _keys(session, later.order_by(column, Job.id), count)
    if len(keys) < count and column.nullable:
        missing = query.where(column.is_(None))
        if after is not None and after.value is None:
            missing = missing.where(Job.id > after.id)
        keys += _keys(session, missing.order_by(column, Job.id), count - len(keys))
    return keys


def list_experiments(
    session: Session, *, owner: str | None = None, limit: int = 50, cursor: str | None = None
) -> tuple[list[Experiment], str | None]:
    """A page of experiments, newest first (an owner's: from the (owner, id) index), and the
    cursor of the next page."""
    query = select(Experiment)
    if owner is not None:
        query = query.where(Experiment.owner == owner)
    return _newest_first(session, query, Experiment.id, "experiments", limit, cursor)


def _newest_first(
    session: Session, query: Select[Any], id_column: Any, of: str, limit: int, cursor: str | None
) -> tuple[list[Any], str | None]:
    """A keyset page of `query`'s rows by id, newest first, and the next page's cursor."""
    if cursor is not None:
        query = query.where(id_column < decode_cursor(cursor, of).id)
    with index_order(session):
        rows = list(session.execute(query.order_by(id_column.desc()).limit(limit + 1)).scalars())
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, Cursor(of, rows[-1].id).encode()


def list_audit_events(
    session: Session,
    *,
    job_id: int | None = None,
    experiment_id: int | None = None,
    actor: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[AuditEvent], str | None]:
    """A page of the audit trail, newest first, of a job, an experiment or an actor (each an
    index of its own, (x, id); given together, the first of them is read and the others
    filtered), and the cursor of the next page. It names deleted jobs and experiments too."""
    query = select(AuditEvent)
    if job_id is not None:
        query = query.where(AuditEvent.job_id == job_id)
    if experiment_id is not None:
        query = query.where(AuditEvent.experiment_id == experiment_id)
    if actor is not None:
        query = query.where(AuditEvent.actor == actor)
    return _newest_first(session, query, AuditEvent.id, "audit", limit, cursor)
