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

from sqlalchemy import Select, select, tuple_
from sqlalchemy.orm import Session

from jobs.errors import ExperimentNotFound, InvalidFields, JobNotFound
from jobs.tables import Experiment, Job, JobTag

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
        if self.of == "jobs:best_test_accuracy":
            data["value"] = self.value
        raw = json.dumps(data, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")


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
    expected = {"of", "id", "value"} if of == "jobs:best_test_accuracy" else {"of", "id"}
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
    sort: JobSort = "created",
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Job], str | None]:
    """A page of jobs in `sort` order and the cursor of the next page (None after the last)."""
    of = f"jobs:{sort}"
    after = decode_cursor(cursor, of) if cursor is not None else None
    query = select(Job)
    # The id column the page is ordered by: the tag's rows when filtering by tag, so that the
    # scan runs over job_tags' primary key (tag, job_id) instead of every job.
    order_id: Any = Job.id
    if tag is not None:
        query = query.join(JobTag, JobTag.job_id == Job.id).where(JobTag.tag == tag)
        order_id = JobTag.job_id
    if experiment_id is not None:
        query = query.where(Job.experiment_id == experiment_id)
    if status is not None:
        query = query.where(Job.status == status)
    if block is not None:
        query = query.where(Job.block == block)

    if sort == "created":
        if after is not None:
            query = query.where(order_id < after.id)
        jobs = _fetch(session, query.order_by(order_id.desc()), limit + 1)
    else:
        jobs = _by_accuracy(session, query, order_id, after, limit + 1)
    if len(jobs) <= limit:
        return jobs, None
    jobs = jobs[:limit]
    last = jobs[-1]
    value = last.best_test_accuracy if sort == "best_test_accuracy" else None
    return jobs, Cursor(of, last.id, value).encode()


def _fetch(session: Session, query: Select[Job], count: int) -> list[Job]:
    return list(session.execute(query.limit(count)).scalars())


def _by_accuracy(
    session: Session, query: Select[Job], order_id: Any, after: Cursor | None, count: int
) -> list[Job]:
    """Highest best test accuracy first, ties newest first, then the jobs without one, newest
    first. Two range scans (jobs with a value, then those without) rather than one ORDER BY
    with NULLS LAST, which PostgreSQL cannot read from an ascending index."""
    accuracy = Job.best_test_accuracy
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
        jobs += _fetch(session, untested.order_by(order_id.desc()), count - len(jobs))
    return jobs


def list_experiments(
    session: Session, *, limit: int = 50, cursor: str | None = None
) -> tuple[list[Experiment], str | None]:
    """A page of experiments, newest first, and the cursor of the next page."""
    query = select(Experiment)
    if cursor is not None:
        query = query.where(Experiment.id < decode_cursor(cursor, "experiments").id)
    experiments = list(
        session.execute(query.order_by(Experiment.id.desc()).limit(limit + 1)).scalars()
    )
    if len(experiments) <= limit:
        return experiments, None
    experiments = experiments[:limit]
    return experiments, Cursor("experiments", experiments[-1].id).encode()
