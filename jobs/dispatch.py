"""The order in which free workers take queued jobs, stated once: the claim takes the first job
in it, and a queued job's position is the number of claimable jobs before it, plus one.
docs/design/dispatch-order.md states the rule (priority, then the owners' turns, then fair
share within an owner, then id) and why, and how the turns are kept.
The same counts, kept apart by key, say why a job is where it is (`queue_place`): a position can
get worse while a job waits, as jobs of higher priority arrive and later submissions join the
turns ahead of it. A person at their running-jobs limit keeps their places; a claim passes over
their jobs until one of theirs ends (`has_running_room`)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, false, func, or_, select, text, update
from sqlalchemy.orm import Session

from jobs.settings import get_settings
from jobs.tables import Job, JobStatus, User

PRIORITY_MIN = -100
PRIORITY_MAX = 100
DEFAULT_PRIORITY = 0

# The sort keys, first to last, and whether each sorts highest first.
DISPATCH_ORDER: tuple[tuple[str, bool], ...] = (
    ("priority", True),
    ("owner_turn", False),
    ("fair_share_key", False),
    ("id", False),
)
# PostgreSQL: the advisory lock every claim of a job whose owner has a running limit holds until
# it commits, so that two workers cannot both count the owner's running jobs below the limit
# and both start one. Claims are short; one lock for all owners cannot form a cycle of waits.
RUNNING_LIMIT_LOCK = 7_046_853_202


def _claimable(table: type[Job] = Job) -> ColumnElement[bool]:
    # "= false", not "IS false": only an equality is a range of the index on PostgreSQL.
    return and_(table.status == JobStatus.QUEUED, table.cancel_requested == false())


def _owned_by(owner: str | None) -> ColumnElement[bool]:
    # Jobs without an owner (a service without accounts) are one person's.
    return Job.owner.is_(None) if owner is None else Job.owner == owner


def next_claimable(passed_over: Collection[str] = ()) -> Select[int, str | None]:
    """The id and owner of the job a free worker takes next: the highest priority among the
    claimable jobs (one seek), then the lowest (owner_turn, fair_share_key, id) at that
    priority (one more). The jobs of the owners `passed_over` (at their running limit) are
    skipped; the owner is the index's last column, so they are skipped on its entries."""
    allowed = [or_(Job.owner.is_(None), Job.owner.not_in(passed_over))] if passed_over else []
    top = select(func.max(Job.priority)).where(_claimable(), *allowed).scalar_subquery()
    return (
        select(Job.id, Job.owner)
        .where(_claimable(), *allowed, Job.priority == top)
        .order_by(Job.owner_turn, Job.fair_share_key, Job.id)
        .limit(1)
    )


def head_fair_share_key(session: Session, priority: int, owner: str | None) -> int:
    """The fair-share key a job of `owner` submitted now at this priority starts from: the
    lowest key of the owner's queued jobs at that priority (the head of their own turns), else
    the highest key of their running jobs (their queue has just drained), else 0. Keys order
    one owner's jobs only; other people's are apart in turns (`take_turns`)."""
    queued = session.execute(
        select(func.min(Job.fair_share_key)).where(
            _owned_by(owner), _claimable(), Job.priority == priority
        )
    ).scalar()
    if queued is not None:
        return int(queued)
    running = session.execute(
        select(func.max(Job.fair_share_key)).where(
            _owned_by(owner), Job.status == JobStatus.RUNNING
        )
    ).scalar()
    return int(running) + 1 if running is not None else 0


def first_turn(session: Session, priority: int, owner: str | None) -> int:
    """The turn the owner's first queued job at this priority takes: the one it has (an owner
    keeps their place), else the queue's head turn at that priority (a newcomer joins the turn
    being served), else one past the turns of the jobs running at it, else 0."""
    own = session.execute(
        select(Job.owner_turn)
        .where(_owned_by(owner), _claimable(), Job.priority == priority)
        .order_by(Job.fair_share_key, Job.id)
        .limit(1)
    ).scalar()
    if own is not None:
        return int(own)
    head = session.execute(
        select(func.min(Job.owner_turn)).where(_claimable(), Job.priority == priority)
    ).scalar()
    if head is not None:
        return int(head)
    running = session.execute(
        select(func.max(Job.owner_turn)).where(
            Job.status == JobStatus.RUNNING, Job.priority == priority
        )
    ).scalar()
    return int(running) + 1 if running is not None else 0


def take_turns(session: Session, owner: str | None, priority: int, first: int) -> None:
    """Number the owner's queued jobs at this priority first, first + 1, ... in their own order
    (fair_share_key, id): one job of theirs per turn. One UPDATE of the rows whose turn
    changes; their updated_at stays, as nothing about the job itself changed."""
    ranked = (
        select(
            Job.id,
            (func.row_number().over(order_by=(Job.fair_share_key, Job.id)) + (first - 1)).label(
                "turn"
            ),
        )
        .where(_owned_by(owner), _claimable(), Job.priority == priority)
        .subquery()
    )
    session.execute(
        update(Job)
        .where(Job.id == ranked.c.id, Job.owner_turn != ranked.c.turn)
        .values(owner_turn=ranked.c.turn, updated_at=Job.updated_at)
        .execution_options(synchronize_session=False)
    )


@contextmanager
def turns_kept(session: Session, owner: str | None, priorities: Iterable[int]) -> Iterator[None]:
    """Around a change that adds, moves or removes queued jobs of `owner` at these priorities:
    their turns are numbered again from where the owner's first turn was before it (a job
    added ahead of the owner's others takes it; the job that held it, cancelled or moved,
    leaves it to the next). Costs one UPDATE of the owner's jobs whose turn changes."""
    firsts = {
        priority: first_turn(session, priority, owner) for priority in sorted(set(priorities))
    }
    yield
    for priority, first in firsts.items():
        take_turns(session, owner, priority, first)


def running_limit(session: Session, owner: str | None) -> int | None:
    """How many of the owner's jobs may run at once: the user's own max_running_jobs, else
    MAX_RUNNING_JOBS_PER_USER; None (no limit) for jobs without an owner or when neither is
    set."""
    if owner is None:
        return None
    own = session.execute(select(User.max_running_jobs).where(User.name == owner)).scalar()
    return int(own) if own is not None else get_settings().max_running_jobs_per_user


def running_jobs(session: Session, owner: str) -> int:
    return int(
        session.execute(
            select(func.count())
            .select_from(Job)
            .where(Job.owner == owner, Job.status == JobStatus.RUNNING)
        ).scalar_one()
    )


def has_running_room(session: Session, owner: str | None) -> bool:
    """Whether a claim may start one more of the owner's jobs. With a limit, counted under
    RUNNING_LIMIT_LOCK on PostgreSQL, which the claiming transaction holds until it commits
    (a count read after the lock sees every claim committed before it); SQLite's write
    transactions are one at a time already."""
    limit = running_limit(session, owner)
    if owner is None or limit is None:
        return True
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(RUNNING_LIMIT_LOCK)))
    return running_jobs(session, owner) < limit


@dataclass(frozen=True)
class _Place:
    """A claimable job's keys in DISPATCH_ORDER."""

    id: int
    priority: int
    owner_turn: int
    fair_share_key: int


# A count of claimable jobs (as _claimable states them, "= false" included) in one range of
# ix_jobs_dispatch. The positions of a page take one such count or a few per job, so they are
# written as SQL text: building and compiling 150 subqueries as expressions cost 15 ms a page.
_COUNT = (
    "(SELECT count(*) FROM jobs WHERE status = :queued AND cancel_requested = :unrequested AND {})"
)
# The keys after priority, all lowest first, and the letter their parameters are named by.
_AT_PRIORITY = (("owner_turn", "t"), ("fair_share_key", "f"), ("id", "i"))


# A row value comparison would be one range on PostgreSQL but not on SQLite (which would read
# every entry of the first key), so each comparison of several keys is written as a few ranges,
# equal on the keys before one and past it on that one.
def _after(k: str, keys: tuple[tuple[str, str], ...] = _AT_PRIORITY) -> list[str]:
    """At a priority, after the job named `{k}..a` on `keys`: one range per key."""
    (key, letter), rest = keys[0], keys[1:]
    return (
        [f"{key} > :{k}{letter}a", *(f"{key} = :{k}{letter}a AND {c}" for c in _after(k, rest))]
        if rest
        else [f"{key} > :{k}{letter}a"]
    )


def _before(k: str, keys: tuple[tuple[str, str], ...] = _AT_PRIORITY) -> list[str]:
    """At a priority, before the job named `{k}..b` on `keys`: one range per key."""
    (key, letter), rest = keys[0], keys[1:]
    return (
        [f"{key} < :{k}{letter}b", *(f"{key} = :{k}{letter}b AND {c}" for c in _before(k, rest))]
        if rest
        else [f"{key} < :{k}{letter}b"]
    )


def _inside(
    before: _Place, job: _Place, k: str, keys: tuple[tuple[str, str], ...] = _AT_PRIORITY
) -> list[str]:
    """At one priority, after `before` and before `job` on `keys`: the ranges of the gap."""
    (key, letter), rest = keys[0], keys[1:]
    after, until = f":{k}{letter}a", f":{k}{letter}b"
    if not rest:
        return [f"{key} > {after} AND {key} < {until}"]
    if getattr(before, key) == getattr(job, key):
        return [f"{key} = {until} AND {c}" for c in _inside(before, job, k, rest)]
    return [
        *(f"{key} = {after} AND {c}" for c in _after(k, rest)),
        f"{key} > {after} AND {key} < {until}",
        *(f"{key} = {until} AND {c}" for c in _before(k, rest)),
    ]


def _parameters(place: _Place, k: str, side: str) -> dict[str, int]:
    return {
        f"{k}p{side}": place.priority,
        f"{k}t{side}": place.owner_turn,
        f"{k}f{side}": place.fair_share_key,
        f"{k}i{side}": place.id,
    }


def _between(before: _Place | None, job: _Place, k: str) -> tuple[list[str], dict[str, int]]:
    """Conditions whose counts add up to the claimable jobs after `before` (None: from the
    queue's head) and before `job` in DISPATCH_ORDER, each one range of ix_jobs_dispatch, and
    their parameters, named after `k`."""
    parameters = _parameters(job, k, "b")
    at_job = f"priority = :{k}pb AND "
    if before is None:
        return [f"priority > :{k}pb", *(at_job + part for part in _before(k))], parameters
    parameters |= _parameters(before, k, "a")
    if before.priority != job.priority:
        return [
            *(f"priority = :{k}pa AND " + part for part in _after(k)),
            f"priority < :{k}pa AND priority > :{k}pb",
            *(at_job + part for part in _before(k)),
        ], parameters
    return [at_job + part for part in _inside(before, job, k)], parameters


# Jobs whose places one statement counts (a page's most; each takes up to 7 columns, and SQLite
# answers at most 2,000).
PLACES_PER_STATEMENT = 200


def _order(place: _Place) -> tuple[int, int, int, int]:
    return (-place.priority, place.owner_turn, place.fair_share_key, place.id)


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
        _Place(row.id, row.priority, row.owner_turn, row.fair_share_key)
        for row in session.execute(
            select(
                Job.id,
                Job.priority,
                Job.owner_turn,
                Job.fair_share_key,
                Job.status,
                Job.cancel_requested,
            ).where(Job.id.in_(wanted))
        )
        if row.status == JobStatus.QUEUED and not row.cancel_requested
    ]
    if not places:
        return {}
    places.sort(key=_order)
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
    """Why a queued job is where it is: the claimable jobs ahead of it, by what puts each there
    (they add up to position - 1), and the owner's running limit when the owner is at it."""

    position: int
    priority: int
    higher_priority: int  # of a higher priority
    other_people: int  # at its priority, other owners' jobs whose turn comes first
    earlier_turns: int  # its owner's, at its priority, with a lower fair-share key
    same_turn: int  # its owner's, at its priority and key, queued before it
    owner: str | None = None
    running_limit: int | None = None  # set while the owner has this many jobs running

    @property
    def reason(self) -> str:
        """One sentence, e.g. "3rd: after 1 job of higher priority and 1 job at priority 0 with
        an earlier turn (experiments and lone jobs take turns, one job each per turn)." """
        waits = (
            ""
            if self.running_limit is None
            else f" It waits for one of {self.owner}'s running jobs to end (their limit: "
            f"{self.running_limit} at once); free workers take the jobs after it meanwhile."
        )
        if self.position == 1:
            return ("1st." if waits else "1st: a free worker takes it next.") + waits
        whose = "" if self.owner is None else f" of {self.owner}'s"
        parts = []
        if self.higher_priority:
            parts.append(f"{_jobs(self.higher_priority)} of higher priority")
        if self.other_people:
            parts.append(
                f"{_jobs(self.other_people)} of other people's turns at priority {self.priority}"
            )
        if self.earlier_turns:
            at = f"at priority {self.priority}"
            parts.append(f"{_jobs(self.earlier_turns)}{whose} {at} with an earlier turn")
        if self.same_turn:
            parts.append(f"{_jobs(self.same_turn)}{whose} queued before it for the same turn")
        listed = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
        own_turns = bool(self.earlier_turns or self.same_turn)
        if self.other_people and own_turns:
            rule = (
                " (people take turns, one job each per turn, and so do each one's experiments"
                " and lone jobs)"
            )
        elif self.other_people:
            rule = " (people take turns, one job each per turn)"
        elif own_turns:
            rule = " (experiments and lone jobs take turns, one job each per turn)"
        else:
            rule = ""
        return f"{_ordinal(self.position)}: after {listed}{rule}.{waits}"


def _jobs(count: int) -> str:
    return f"{count} job{'' if count == 1 else 's'}"


def _ordinal(number: int) -> str:
    suffix = (
        "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    )
    return f"{number}{suffix}"


def queue_place(session: Session, job_id: int) -> QueuePlace | None:
    """The job's position and what puts it there; None unless the job is claimable. Two
    queries: the job's keys, then the counts queue_position makes, kept apart (ranges of
    ix_jobs_dispatch), and its owner's jobs ahead of it (ranges of ix_jobs_owner_queue: an
    owner's jobs take their turns in their own order); no row of the queue is read. With a
    running limit, two more: the limit and the owner's running jobs."""
    job = session.execute(
        select(
            Job.id,
            Job.priority,
            Job.owner_turn,
            Job.fair_share_key,
            Job.owner,
            Job.status,
            Job.cancel_requested,
        ).where(Job.id == job_id)
    ).first()
    if job is None or job.status != JobStatus.QUEUED or job.cancel_requested:
        return None
    place = _Place(job.id, job.priority, job.owner_turn, job.fair_share_key)
    parameters: dict[str, Any] = {
        "queued": JobStatus.QUEUED.value,
        "unrequested": False,
        "owner": job.owner,
        **_parameters(place, "j", "b"),
    }
    owned = "owner IS NULL" if job.owner is None else "owner = :owner"
    at_priority = "priority = :jpb AND "
    own = f"{owned} AND {at_priority}"
    groups = [
        ["priority > :jpb"],
        [at_priority + part for part in _before("j")],
        [own + "fair_share_key < :jfb"],
        [own + "fair_share_key = :jfb AND id < :jib"],
    ]
    counts = [_COUNT.format(segment) for group in groups for segment in group]
    row = list(session.execute(text(f"SELECT {', '.join(counts)}"), parameters).one())
    totals = []
    for group in groups:
        totals.append(sum(int(count) for count in row[: len(group)]))
        row = row[len(group) :]
    higher, at_priority_ahead, earlier, same = totals
    limit = running_limit(session, job.owner)
    at_limit = (
        limit is not None and job.owner is not None and running_jobs(session, job.owner) >= limit
    )
    return QueuePlace(
        position=higher + at_priority_ahead + 1,
        priority=int(job.priority),
        higher_priority=higher,
        other_people=at_priority_ahead - earlier - same,
        earlier_turns=earlier,
        same_turn=same,
        owner=job.owner,
        running_limit=limit if at_limit else None,
    )
