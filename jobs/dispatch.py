"""The order in which free workers take queued jobs, stated once: the claim takes the first job
in it, and a queued job's position is the number of claimable jobs before it, plus one.
docs/design/dispatch-order.md states the rule (priority, then people's turns, then each
person's own order by fair share and id) and why, and how the turns are kept.
The same counts, kept apart, say why a job is where it is (`queue_place`): a position can get
worse while a job waits, as jobs of higher priority arrive and later submissions join the
turns ahead of it. A person at their running-jobs limit keeps their places; a claim passes over
their jobs until one of theirs ends (`has_running_room`)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, false, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from jobs.settings import get_settings
from jobs.tables import Job, JobStatus, OwnerTurn, User

PRIORITY_MIN = -100
PRIORITY_MAX = 100
DEFAULT_PRIORITY = 0

# The sort keys, first to last, and whether each sorts highest first. A job's turn is its
# owner's next_turn (OwnerTurn) plus the number of the owner's claimable jobs before it at its
# priority in their own order (fair_share_key, id); within a turn, owners go in the order they
# joined (then by name).
DISPATCH_ORDER: tuple[tuple[str, bool], ...] = (
    ("priority", True),
    ("turn", False),
    ("joined", False),
    ("fair_share_key", False),
    ("id", False),
)
# The owner key of jobs without an owner: they are one person's.
NO_OWNER = ""
# PostgreSQL: the advisory lock every claim of a job whose owner has a running limit holds until
# it commits, so that two workers cannot both count the owner's running jobs below the limit
# and both start one. Claims are short; one lock for all owners cannot form a cycle of waits.
RUNNING_LIMIT_LOCK = 7_046_853_202


def _claimable(table: type[Job] = Job) -> ColumnElement[bool]:
    # "= false", not "IS false": only an equality is a range of the index on PostgreSQL.
    return and_(table.status == JobStatus.QUEUED, table.cancel_requested == false())


def _key(owner: str | None) -> str:
    return NO_OWNER if owner is None else owner


def _owned_by(owner: str | None) -> ColumnElement[bool]:
    return Job.owner.is_(None) if owner is None else Job.owner == owner


def _own_queue(owner: str | None, priority: int) -> list[ColumnElement[bool]]:
    """The owner's claimable jobs at a priority: a range of ix_jobs_owner_queue."""
    return [_owned_by(owner), _claimable(), Job.priority == priority]


@dataclass(frozen=True)
class _Turns:
    """An owner's row of owner_turns at a priority."""

    owner: str | None
    next_turn: int
    joined: int

    @property
    def tie(self) -> tuple[int, str]:
        """The order of owners within one turn."""
        return (self.joined, _key(self.owner))


def _turns_at(session: Session, priority: int) -> list[_Turns]:
    return [
        _Turns(None if row.owner == NO_OWNER else row.owner, row.next_turn, row.joined)
        for row in session.execute(
            select(OwnerTurn.owner, OwnerTurn.next_turn, OwnerTurn.joined).where(
                OwnerTurn.priority == priority
            )
        )
    ]


def _first_own(session: Session, owner: str | None, priority: int) -> int | None:
    """The owner's first claimable job at the priority, in their own order: one seek."""
    found = session.execute(
        select(Job.id)
        .where(*_own_queue(owner, priority))
        .order_by(Job.fair_share_key, Job.id)
        .limit(1)
    ).scalar()
    return None if found is None else int(found)


def next_claimable(
    session: Session, passed_over: Collection[str] = ()
) -> tuple[int, str | None, int] | None:
    """The id, owner and priority of the job a free worker takes next: at the highest priority
    with a claimable job (one seek), the first job (one seek each) of the owner whose turn comes
    first (one read of that priority's owner_turns), passing over the owners `passed_over` (at
    their running limit); if they are all passed over, the next priority down."""
    below: int | None = None
    while True:
        lower = [] if below is None else [Job.priority < below]
        top = session.execute(select(func.max(Job.priority)).where(_claimable(), *lower)).scalar()
        if top is None:
            return None
        for turns in sorted(_turns_at(session, top), key=lambda t: (t.next_turn, t.tie)):
            if turns.owner is not None and turns.owner in passed_over:
                continue
            job_id = _first_own(session, turns.owner, top)
            if job_id is not None:
                return job_id, turns.owner, int(top)
        if not passed_over:
            # Jobs whose owner never joined the turns there (rows written behind the
            # service's back) still run: the first in their own order, one seek.
            unjoined = session.execute(
                select(Job.id, Job.owner)
                .where(_claimable(), Job.priority == top)
                .order_by(Job.fair_share_key, Job.id)
                .limit(1)
            ).first()
            if unjoined is not None:
                return int(unjoined.id), unjoined.owner, int(top)
        below = int(top)


def took_turn(session: Session, owner: str | None, priority: int, turns: int = 1) -> None:
    """The owner's job at this priority was claimed (turns=1): their next job takes the next
    turn; or given back to the queue (turns=-1): it takes its turn again."""
    session.execute(
        update(OwnerTurn)
        .where(OwnerTurn.priority == priority, OwnerTurn.owner == _key(owner))
        .values(next_turn=OwnerTurn.next_turn + turns)
        .execution_options(synchronize_session=False)
    )


def join_turns(session: Session, owner: str | None, priority: int) -> None:
    """Before a job of `owner` becomes claimable at this priority (submitted, re-prioritised,
    resumed): if the owner has no job queued there, they join the turns at the turn being
    served (the lowest next_turn of the owners with jobs queued there; none queued: the highest
    next_turn there, or 0), or keep their own if it is later (a person cannot save up turns by
    emptying their queue), and go last within a turn. Costs a seek per owner at the priority."""
    if _first_own(session, owner, priority) is not None:
        return
    everyone = _turns_at(session, priority)
    waiting = [t.next_turn for t in everyone if _first_own(session, t.owner, priority) is not None]
    served = min(waiting) if waiting else max((t.next_turn for t in everyone), default=0)
    joined = session.execute(select(func.max(OwnerTurn.joined))).scalar()
    mine = next((t for t in everyone if t.owner == owner), None)
    values = {
        "next_turn": served if mine is None else max(mine.next_turn, served),
        "joined": (joined or 0) + 1,
    }
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    session.execute(
        dialect.insert(OwnerTurn)
        .values(priority=priority, owner=_key(owner), **values)
        .on_conflict_do_update(index_elements=["priority", "owner"], set_=values)
    )


def head_fair_share_key(session: Session, priority: int, owner: str | None) -> int:
    """The fair-share key a job of `owner` submitted now at this priority starts from: the
    lowest key of the owner's queued jobs at that priority (the head of their own order), else
    the highest key of their running jobs (their queue has just drained), else 0. Keys order
    one owner's jobs only; people are apart in turns."""
    queued = session.execute(
        select(func.min(Job.fair_share_key)).where(*_own_queue(owner, priority))
    ).scalar()
    if queued is not None:
        return int(queued)
    running = session.execute(
        select(func.max(Job.fair_share_key)).where(
            _owned_by(owner), Job.status == JobStatus.RUNNING
        )
    ).scalar()
    return int(running) + 1 if running is not None else 0


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
    """A claimable job's keys."""

    id: int
    priority: int
    fair_share_key: int
    owner: str | None


@dataclass(frozen=True)
class _Counts:
    """The claimable jobs ahead of one job, by what puts them there."""

    higher_priority: int
    other_people: int
    earlier_turns: int  # the owner's own, with a lower fair-share key
    same_turn: int  # the owner's own, at its key, queued before it


# A count of claimable jobs (as _claimable states them, "= false" included) in one range of an
# index, and one of at most some number of them (reading no more entries than that). A page's
# positions take a few per job, so they are written as SQL text and sent as one statement:
# building and compiling 150 subqueries as expressions cost 15 ms a page.
_COUNT = "(SELECT count(*) FROM jobs WHERE status = :queued AND cancel_requested = :unrequested{})"
_COUNT_AT_MOST = (
    "(SELECT count(*) FROM (SELECT 1 FROM jobs WHERE status = :queued"
    " AND cancel_requested = :unrequested{} LIMIT {}) AS ahead)"
)


class _Counter:
    """Counts gathered into one statement; each is a range of ix_jobs_dispatch or of
    ix_jobs_owner_queue."""

    def __init__(self) -> None:
        self.counts: list[str] = []
        self.parameters: dict[str, Any] = {"queued": JobStatus.QUEUED.value, "unrequested": False}

    def add(self, owner: str | None, at_most: int | None = None, **ranges: Any) -> int:
        """Count the jobs of `owner` (any owner when not given: pass owner=ANY) whose columns
        meet `ranges` (column__op=value, op one of lt, le, eq, gt); returns its index."""
        number = len(self.counts)
        conditions = []
        if owner is not _ANY:
            if owner is None:
                conditions.append("owner IS NULL")
            else:
                conditions.append(f"owner = :c{number}owner")
                self.parameters[f"c{number}owner"] = owner
        for name, value in ranges.items():
            column, op = name.rsplit("__", 1)
            conditions.append(f"{column} {_OPERATORS[op]} :c{number}{name}")
            self.parameters[f"c{number}{name}"] = value
        where = "".join(f" AND {condition}" for condition in conditions)
        if at_most is None:
            self.counts.append(_COUNT.format(where))
        else:
            self.counts.append(_COUNT_AT_MOST.format(where, max(int(at_most), 0)))
        return number

    def run(self, session: Session) -> list[int]:
        counted: list[int] = []
        # SQLite answers at most 2,000 columns; each count takes up to 5 parameters.
        for start in range(0, len(self.counts), COUNTS_PER_STATEMENT):
            counts = self.counts[start : start + COUNTS_PER_STATEMENT]
            statement = text(f"SELECT {', '.join(counts)}")
            counted += [int(count) for count in session.execute(statement, self.parameters).one()]
        return counted


_ANY: Any = object()
COUNTS_PER_STATEMENT = 600
_OPERATORS = {"lt": "<", "le": "<=", "eq": "=", "gt": ">"}


def _counts(session: Session, places: list[_Place]) -> dict[int, _Counts]:
    """The counts ahead of each job, in two statements after reading the priorities' few
    owner_turns rows. First, per priority, the jobs of higher priority, and per owner their
    jobs' own ranks from the gaps between them in their own order (each index entry read
    once); then, per other owner at a priority, their jobs in the turns before each job's: one
    count of at most the most any of the jobs needs."""
    first = _Counter()
    higher: dict[int, int] = {}
    everyone: dict[int, dict[str, _Turns]] = {}
    # Each job's own earlier and same-key jobs as sums of counts (indexes) and ones (None).
    earlier_terms: dict[int, list[int | None]] = {}
    same_terms: dict[int, list[int | None]] = {}
    for priority in sorted({place.priority for place in places}, reverse=True):
        higher[priority] = first.add(_ANY, priority__gt=priority)
        everyone[priority] = {_key(t.owner): t for t in _turns_at(session, priority)}
        here = [place for place in places if place.priority == priority]
        for owner in sorted({_key(place.owner) for place in here}):
            own = sorted(
                (place for place in here if _key(place.owner) == owner),
                key=lambda place: (place.fair_share_key, place.id),
            )
            who = own[0].owner
            before: _Place | None = None
            for place in own:
                fsk = place.fair_share_key
                earlier: list[int | None]
                same: list[int | None]
                if before is None:
                    earlier = [first.add(who, priority__eq=priority, fair_share_key__lt=fsk)]
                    same = [
                        first.add(
                            who, priority__eq=priority, fair_share_key__eq=fsk, id__lt=place.id
                        )
                    ]
                elif before.fair_share_key == fsk:
                    earlier = list(earlier_terms[before.id])
                    gap = first.add(
                        who,
                        priority__eq=priority,
                        fair_share_key__eq=fsk,
                        id__gt=before.id,
                        id__lt=place.id,
                    )
                    same = [*same_terms[before.id], None, gap]
                else:
                    # From the job before: the rest of its key, the keys between, then this
                    # key's jobs before this one.
                    rest = first.add(
                        who,
                        priority__eq=priority,
                        fair_share_key__eq=before.fair_share_key,
                        id__gt=before.id,
                    )
                    between = _between_keys(first, who, priority, before.fair_share_key, fsk)
                    earlier = [
                        *earlier_terms[before.id],
                        *same_terms[before.id],
                        None,
                        rest,
                        between,
                    ]
                    same = [
                        first.add(
                            who, priority__eq=priority, fair_share_key__eq=fsk, id__lt=place.id
                        )
                    ]
                earlier_terms[place.id], same_terms[place.id] = earlier, same
                before = place
    counted = first.run(session)

    def total(terms: list[int | None]) -> int:
        return sum(1 if term is None else counted[term] for term in terms)

    ranks = {
        job_id: (total(earlier_terms[job_id]), total(same_terms[job_id]))
        for job_id in earlier_terms
    }
    # Each job's turn and tie, from its owner's row and its rank among their jobs.
    turn_of: dict[int, tuple[int, tuple[int, str]]] = {}
    for place in places:
        turns = everyone[place.priority].get(_key(place.owner))
        rank = sum(ranks[place.id])
        if turns is None:  # never joined (rows made behind the service's back): last
            turn_of[place.id] = (rank, (2**62, _key(place.owner)))
        else:
            turn_of[place.id] = (turns.next_turn + rank, turns.tie)
    # Another owner has a job ahead in each of their turns before this job's, and in its turn
    # if they come first within a turn: at most that many, at most all they have queued.
    second = _Counter()
    wanted: dict[tuple[int, str], tuple[int, dict[int, int]]] = {}
    for priority, rows in everyone.items():
        here = [place for place in places if place.priority == priority]
        for key, turns in rows.items():
            needs = {
                place.id: turn_of[place.id][0]
                - turns.next_turn
                + (1 if turns.tie < turn_of[place.id][1] else 0)
                for place in here
                if _key(place.owner) != key
            }
            if needs and max(needs.values()) > 0:
                index = second.add(turns.owner, max(needs.values()), priority__eq=priority)
                wanted[(priority, key)] = (index, needs)
    queued = second.run(session)
    others = {place.id: 0 for place in places}
    for index, needs in wanted.values():
        for job_id, need in needs.items():
            others[job_id] += max(0, min(need, queued[index]))
    return {
        place.id: _Counts(counted[higher[place.priority]], others[place.id], *ranks[place.id])
        for place in places
    }


def _between_keys(
    counter: _Counter, owner: str | None, priority: int, after: int, before: int
) -> int:
    return counter.add(
        owner, priority__eq=priority, fair_share_key__gt=after, fair_share_key__lt=before
    )


def _claimable_places(session: Session, job_ids: Sequence[int]) -> list[_Place]:
    # Found by id, claimable or not (a planner without statistics would rather read the
    # queue's index for the status than the few ids).
    return [
        _Place(row.id, row.priority, row.fair_share_key, row.owner)
        for row in session.execute(
            select(
                Job.id,
                Job.priority,
                Job.fair_share_key,
                Job.owner,
                Job.status,
                Job.cancel_requested,
            ).where(Job.id.in_(sorted(set(job_ids))))
        )
        if row.status == JobStatus.QUEUED and not row.cancel_requested
    ]


def queue_positions(session: Session, job_ids: Sequence[int]) -> dict[int, int]:
    """{job id: position} for those of the jobs that are claimable; 1 is taken next. Counts of
    index ranges (`_counts`), never a read of the queue's rows: each job's higher priorities,
    its owner's jobs before it, and the other owners' jobs in the turns before its own."""
    places = _claimable_places(session, job_ids)
    counts = _counts(session, places)
    return {
        job_id: found.higher_priority
        + found.other_people
        + found.earlier_turns
        + found.same_turn
        + 1
        for job_id, found in counts.items()
    }


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
        at = f"at priority {self.priority}"
        parts = []
        if self.higher_priority:
            parts.append(f"{_jobs(self.higher_priority)} of higher priority")
        if self.other_people:
            parts.append(f"{_jobs(self.other_people)} of other people's turns {at}")
        if self.earlier_turns:
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
    """The job's position and what puts it there; None unless the job is claimable: the
    counts queue_position makes, kept apart, and with a running limit two more reads (the
    limit and the owner's running jobs)."""
    places = _claimable_places(session, [job_id])
    if not places:
        return None
    place = places[0]
    found = _counts(session, places)[job_id]
    limit = running_limit(session, place.owner)
    at_limit = (
        limit is not None
        and place.owner is not None
        and running_jobs(session, place.owner) >= limit
    )
    return QueuePlace(
        position=found.higher_priority
        + found.other_people
        + found.earlier_turns
        + found.same_turn
        + 1,
        priority=place.priority,
        higher_priority=found.higher_priority,
        other_people=found.other_people,
        earlier_turns=found.earlier_turns,
        same_turn=found.same_turn,
        owner=place.owner,
        running_limit=limit if at_limit else None,
    )
