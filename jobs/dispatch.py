"""The order in which free workers take queued jobs, stated once: the claim takes the first job
in it, and a queued job's position is the number of claimable jobs before it, plus one."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, Select, and_, false, func, or_, select
from sqlalchemy.orm import Session, aliased

from jobs.tables import Job, JobStatus

# The sort keys, first to last; each ascending. Job ids grow with submission: first in, first out.
DISPATCH_ORDER: tuple[str, ...] = ("id",)


def _claimable(table: type[Job] = Job) -> ColumnElement[bool]:
    return and_(table.status == JobStatus.QUEUED, table.cancel_requested.is_(False))


def next_claimable() -> Select[int]:
    """The id of the job a free worker takes next."""
    return (
        select(Job.id)
        .where(_claimable())
        .order_by(*(getattr(Job, key) for key in DISPATCH_ORDER))
        .limit(1)
    )


def _ahead_of(ahead: type[Job], job: type[Job]) -> ColumnElement[bool]:
    """`ahead` comes before `job` in DISPATCH_ORDER (a lexicographic comparison)."""
    before: ColumnElement[bool] = false()
    for index in reversed(range(len(DISPATCH_ORDER))):
        key = DISPATCH_ORDER[index]
        earlier_keys_equal = [
            getattr(ahead, name) == getattr(job, name) for name in DISPATCH_ORDER[:index]
        ]
        this_key_first = and_(*earlier_keys_equal, getattr(ahead, key) < getattr(job, key))
        before = or_(this_key_first, before)
    return before


def queue_positions(session: Session, job_ids: Sequence[int]) -> dict[int, int]:
    """{job id: position} for those of the jobs that are claimable; 1 is taken next. One query,
    a count of the jobs ahead per job asked about (never a read of the whole queue)."""
    if not job_ids:
        return {}
    ahead = aliased(Job)
    count_ahead = (
        select(func.count())
        .select_from(ahead)
        .where(_claimable(ahead), _ahead_of(ahead, Job))
        .scalar_subquery()
    )
    rows = session.execute(
        select(Job.id, count_ahead).where(Job.id.in_(sorted(set(job_ids))), _claimable())
    )
    return {job_id: int(count) + 1 for job_id, count in rows}


def queue_position(session: Session, job_id: int) -> int | None:
    """1 for the next job a free worker takes; None unless the job is queued."""
    return queue_positions(session, [job_id]).get(job_id)
