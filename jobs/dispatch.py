"""The order in which free workers take queued jobs, stated once: the claim takes the first job
in it, and a queued job's position is the number of claimable jobs before it, plus one.
docs/design/dispatch-order.md states the rule (priority, then fair share, then id) and why.
The same counts, kept apart by key, say why a job is where it is (`queue_place`): a position can
get worse while a job waits, as jobs of higher priority arrive and later submissions join the
turns ahead of it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, false, func, literal, select, text
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


def _count_ahead(job: type[Job], keys: range = range(len(DISPATCH_ORDER))) -> ColumnElement[int]:
    """The claimable jobs before `job` in DISPATCH_ORDER by one of `keys`: one count per key
    (ahead on that key, equal on those before), each a range of ix_jobs_dispatch; an OR of the
    terms would not be one range on every backend."""
    total: ColumnElement[int] = literal(0)
    for index in keys:
        ahead = aliased(Job)
        total = total + (
            select(func.count())
            .select_from(ahead)
            .where(_claimable(ahead), *_ahead_on_key(ahead, job, index))
            .scalar_subquery()
        )
    return total


@dataclass(frozen=True)
class _Place:
    """A claimable job's keys in DISPATCH_ORDER."""

    id: int
    priority: int
    fair_share_key: int


# A count of claimable jobs (as _claimable states them, "= false" included) in one range of
# ix_jobs_dispatch. The positions of a page take one such count or a few per job, so they are
# written as SQL text: building and compiling 150 subqueries as expressions cost 15 ms a page.
_COUNT = (
    "(SELECT count(*) FROM jobs WHERE status = :queued AND cancel_requested = :unrequested AND {})"
)


def _after(k: str) -> list[str]:
    """At a priority, after the job (fa, ia) in (fair_share_key, id) order: two ranges (a row
    value comparison is one range on PostgreSQL but not on SQLite, which would read every entry
    of the key)."""
    return [f"fair_share_key = :{k}fa AND id > :{k}ia", f"fair_share_key > :{k}fa"]


def _before(k: str) -> list[str]:
    """At a priority, before the job (fb, ib) in (fair_share_key, id) order: two ranges."""
    return [f"fair_share_key < :{k}fb", f"fair_share_key = :{k}fb AND id < :{k}ib"]


def _between(before: _Place | None, job: _Place, k: str) -> tuple[list[str], dict[str, int]]:
    """Conditions whose counts add up to the claimable jobs after `before` (None: from the
    queue's head) and before `job` in DISPATCH_ORDER (priority highest first, then
    fair_share_key and id lowest first), each one range of ix_jobs_dispatch, and their
    parameters, named after `k`."""
    parameters = {f"{k}pb": job.priority, f"{k}fb": job.fair_share_key, f"{k}ib": job.id}
    at_job = f"priority = :{k}pb AND "
    if before is None:
        return [f"priority > :{k}pb", *(at_job + part for part in _before(k))], parameters
    parameters |= {
        f"{k}pa": before.priority,
        f"{k}fa": before.fair_share_key,
        f"{k}ia": before.id,
    }
    if before.priority != job.priority:
        return [
            *(f"priority = :{k}pa AND " + part for part in _after(k)),
            f"priority < :{k}pa AND priority > :{k}pb",
            *(at_job + part for part in _before(k)),
        ], parameters
    if before.fair_share_key == job.fair_share_key:
        return [at_job + f"fair_share_key = :{k}fb AND id > :{k}ia AND id < :{k}ib"], parameters
    return [
        at_job + f"fair_share_key = :{k}fa AND id > :{k}ia",
        at_job + f"fair_share_key > :{k}fa AND fair_share_key < :{k}fb",
        at_job + f"fair_share_key = :{k}fb AND id < :{k}ib",
    ], parameters


# Jobs whose places one statement counts (a page's most; each takes up to 5 columns, and SQLite
# answers at most 2,000).
PLACES_PER_STATEMENT = 200


def queue_positions(session: Session, job_ids: Sequence[int]) -> dict[int, int]:
    """{job id: position} for those of the jobs that are claimable; 1 is taken next. Two
    queries for a page: the jobs' keys, then, in DISPATCH_ORDER, the count of the claimable
    jobs before the first and between each and the next, each a range of ix_jobs_dispatch.
    Each index entry up to the last of the jobs is read once, and no row: the whole queue is
    neither read beyond them nor numbered (a window over it would sort it)."""
    wanted = sorted(set(job_ids))
    if not wanted:
        return {}
    # Found by id, claimable or not (a planner without statistics would rather read the
    # queue's index for the status than the few ids).
    places = [
        _Place(row.id, row.priority, row.fair_share_key)
        for row in session.execute(
            select(
                Job.id, Job.priority, Job.fair_share_key, Job.status, Job.cancel_requested
            ).where(Job.id.in_(wanted))
        )
        if row.status == JobStatus.QUEUED and not row.cancel_requested
    ]
    if not places:
        return {}
    places.sort(key=lambda place: (-place.priority, place.fair_share_key, place.id))
    positions: dict[int, int] = {}
    position = 0
    before: _Place | None = None
    for start in range(0, len(places), PLACES_PER_STATEMENT):
        batch = places[start : start + PLACES_PER_STATEMENT]
        counts: list[str] = []
        parameters: dict[str, Any] = {"queued": JobStatus.QUEUED.value, "unrequested": False}
        sizes = []
        for number, place in enumerate(batch):
            segments, named = _between(before, place, f"j{number}")
            counts += [_COUNT.format(segment) for segment in segments]
            parameters |= named
            sizes.append(len(segments))
            before = place
        row = list(session.execute(text(f"SELECT {', '.join(counts)}"), parameters).one())
        for place, size in zip(batch, sizes, strict=True):
            position += sum(int(count) for count in row[:size]) + 1
            row = row[size:]
            positions[place.id] = position
    return positions


def queue_position(session: Session, job_id: int) -> int | None:
    """1 for the next job a free worker takes; None unless the job is queued."""
    return queue_positions(session, [job_id]).get(job_id)


@dataclass(frozen=True)
class QueuePlace:
    """Why a queued job is where it is: the claimable jobs ahead of it, by the key of the
    dispatch order that puts each there (they add up to position - 1)."""

    position: int
    priority: int
    higher_priority: int  # of a higher priority
    earlier_turns: int  # at its priority, with a lower fair-share key: their turn comes first
    same_turn: int  # at its priority and key, queued before it

    @property
    def reason(self) -> str:
        """One sentence, e.g. "3rd: after 1 job of higher priority and 1 job at priority 0 with
        an earlier turn (experiments and lone jobs take turns, one job each per turn)." """
        if self.position == 1:
            return "1st: a free worker takes it next."
        parts = []
        if self.higher_priority:
            parts.append(f"{_jobs(self.higher_priority)} of higher priority")
        if self.earlier_turns:
            parts.append(
                f"{_jobs(self.earlier_turns)} at priority {self.priority} with an earlier turn"
            )
        if self.same_turn:
            parts.append(f"{_jobs(self.same_turn)} queued before it for the same turn")
        listed = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
        turns = self.earlier_turns or self.same_turn
        rule = " (experiments and lone jobs take turns, one job each per turn)" if turns else ""
        return f"{_ordinal(self.position)}: after {listed}{rule}."


def _jobs(count: int) -> str:
    return f"{count} job{'' if count == 1 else 's'}"


def _ordinal(number: int) -> str:
    suffix = (
        "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    )
    return f"{number}{suffix}"


def queue_place(session: Session, job_id: int) -> QueuePlace | None:
    """The job's position and what puts it there; None unless the job is claimable. One query:
    the counts queue_position makes, kept apart (ranges of ix_jobs_dispatch, no row read)."""
    row = session.execute(
        select(
            Job.priority,
            _count_ahead(Job, range(0, 1)).label("higher"),
            _count_ahead(Job, range(1, 2)).label("earlier"),
            _count_ahead(Job, range(2, 3)).label("same"),
        ).where(Job.id == job_id, _claimable())
    ).first()
    if row is None:
        return None
    higher, earlier, same = int(row.higher), int(row.earlier), int(row.same)
    return QueuePlace(
        position=higher + earlier + same + 1,
        priority=int(row.priority),
        higher_priority=higher,
        earlier_turns=earlier,
        same_turn=same,
    )
