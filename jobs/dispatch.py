"""The order in which free workers take queued jobs, stated once: the claim takes the first job
in it, and a queued job's position is the number of claimable jobs before it, plus one.
docs/design/dispatch-order.md states the rule (priority, then fair share, then id) and why."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, Select, and_, false, func, literal, select
from sqlalchemy.orm import Session, aliased

from jobs.tables import Job, JobStatus

PRIORITY_MIN = -100
PRIORITY_MAX = 100
DEFAULT_PRIORITY = 0

# The sort keys, first to last, and whether each sorts highest first.
DISPATCH_ORDER: tuple[tuple[str, bool], ...] = (
    ("priority", True),
    ("fair_share_key", False),
    ("id", False),
)


def _claimable(table: type[Job] = Job) -> ColumnElement[bool]:
    # "= false", not "IS false": only an equality is a range of the index on PostgreSQL.
    return and_(table.status == JobStatus.QUEUED, table.cancel_requested == false())


def next_claimable() -> Select[int]:
    """The id of the job a free worker takes next: the highest priority among the claimable
    jobs (one seek), then the lowest (fair_share_key, id) at that priority (one more)."""
    top = select(func.max(Job.priority)).where(_claimable()).scalar_subquery()
    return (
        select(Job.id)
        .where(_claimable(), Job.priority == top)
        .order_by(Job.fair_share_key, Job.id)
        .limit(1)
    )


def head_fair_share_key(session: Session, priority: int) -> int:
    """The fair-share key a job submitted now at this priority starts from: the lowest key
    queued at that priority, else the highest key of a running job (the queue has just
    drained), else 0."""
    queued = session.execute(
        select(func.min(Job.fair_share_key)).where(_claimable(), Job.priority == priority)
    ).scalar()
    if queued is not None:
        return int(queued)
    running = session.execute(
        select(func.max(Job.fair_share_key)).where(Job.status == JobStatus.RUNNING)
    ).scalar()
    return int(running) + 1 if running is not None else 0


def _ahead_on_key(ahead: type[Job], job: type[Job], index: int) -> list[ColumnElement[bool]]:
    """`ahead` equals `job` on the keys before DISPATCH_ORDER[index] and comes first on it."""
    key, highest_first = DISPATCH_ORDER[index]
    mine, theirs = getattr(ahead, key), getattr(job, key)
    equal = [getattr(ahead, name) == getattr(job, name) for name, _ in DISPATCH_ORDER[:index]]
    return [*equal, mine > theirs if highest_first else mine < theirs]


def _count_ahead(job: type[Job]) -> ColumnElement[int]:
    """The claimable jobs before `job` in DISPATCH_ORDER: one count per key (ahead on that key,
    equal on those before), each a range of ix_jobs_dispatch; an OR of the terms would not be
    one range on every backend."""
    total: ColumnElement[int] = literal(0)
    for index in range(len(DISPATCH_ORDER)):
        ahead = aliased(Job)
        total = total + (
            select(func.count())
            .select_from(ahead)
            .where(_claimable(ahead), *_ahead_on_key(ahead, job, index))
            .scalar_subquery()
        )
    return total


# Above this many jobs asked about at once, numbering the whole queue once is cheaper than
# counting the entries ahead of each job (a page of 50 queued jobs near the end of a queue of
# 1,000 would count 50,000 index entries; numbering reads 1,000).
RANK_WHOLE_QUEUE_ABOVE = 2


def queue_positions(session: Session, job_ids: Sequence[int]) -> dict[int, int]:
    """{job id: position} for those of the jobs that are claimable; 1 is taken next. One query:
    for a few jobs it counts the index entries ahead of each; for more (a page), it numbers the
    claimable jobs in DISPATCH_ORDER once, reading only the index. Either way the cost follows
    the queue's length (at most MAX_QUEUED_JOBS), not the table's."""
    wanted = sorted(set(job_ids))
    if not wanted:
        return {}
    if len(wanted) <= RANK_WHOLE_QUEUE_ABOVE:
        rows = session.execute(
            select(Job.id, _count_ahead(Job)).where(Job.id.in_(wanted), _claimable())
        )
        return {job_id: int(count) + 1 for job_id, count in rows}
    order = [
        getattr(Job, key).desc() if highest_first else getattr(Job, key)
        for key, highest_first in DISPATCH_ORDER
    ]
    ranked = (
        select(Job.id.label("id"), func.row_number().over(order_by=order).label("position"))
        .where(_claimable())
        .subquery()
    )
    rows = session.execute(select(ranked.c.id, ranked.c.position).where(ranked.c.id.in_(wanted)))
    return {job_id: int(position) for job_id, position in rows}


def queue_position(session: Session, job_id: int) -> int | None:
    """1 for the next job a free worker takes; None unless the job is queued."""
    return queue_positions(session, [job_id]).get(job_id)
