"""The job event log behind the event streams and the notifications' outbox: what happened to
each job, in order, written in the same transaction as the change itself.

`record_event` takes the job's next `seq` in an UPDATE of the job row, so each job's events
become visible in seq order on every backend and "everything after seq N" is an exact resume
point; events of different jobs may commit in any order (docs/design/outbox.md says how a reader
of all of them keeps its place). An experiment's events get their `experiment_seq` as their
transaction commits, under a lock per experiment taken last (so it closes no cycle of waits):
they become visible in that order too, and "everything after experiment_seq N" is the
experiment stream's resume point, one number however many jobs it has. On PostgreSQL each event
also sends `NOTIFY job_events, '<job id>'` (and `NOTIFY experiment_events, '<experiment id>'`)
at commit for the API processes' watchers; on SQLite they poll the newest id.
Opening a stream checks the job or experiment and a Last-Event-ID before the stream starts, so
the answer can still be a JSON error."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, event, func, insert, not_, or_, select, text, update
from sqlalchemy.orm import Session, SessionTransaction

from jobs.errors import ExperimentNotFound, InvalidLastEventId, JobNotFound, UnknownLastEventId
from jobs.tables import TERMINAL_STATUSES, Experiment, Job, JobEvent, JobStatus, utcnow

JOB_EVENTS_CHANNEL = "job_events"
EXPERIMENT_EVENTS_CHANNEL = "experiment_events"
# PostgreSQL: the advisory lock (this class, the experiment's id) under which a committing
# transaction numbers its events of that experiment.
EXPERIMENT_SEQ_LOCK_CLASS = 70_468_532
# PostgreSQL: every transaction that appends to the log holds this advisory lock shared until it
# commits; a reader of the whole log (the notifications' outbox) takes it exclusively, without
# waiting, so that when it reads, no event is being written that could take an id below those
# it sees (docs/design/outbox.md). Advisory lock keys are per database.
LOG_WRITERS_LOCK = 7_046_853_201
STATUS_EVENT = "status"
EPOCH_EVENT = "epoch"
# The job columns a status event carries, after the change it reports.
STATUS_FIELDS = (
    "status",
    "epochs_done",
    "epochs_total",
    "attempt",
    "cancel_requested",
    "error_reason",
    "error",
    "best_test_accuracy",
    "final_test_accuracy",
    "final_train_loss",
)
# Job id -> the seq of the last event seen of that job (absent: none seen).
Cursor = dict[int, int]
_CURSOR_ENTRY = r"[1-9][0-9]{0,9}:(?:0|[1-9][0-9]{0,9})"
# The form of each stream's ids (regular expressions to match in full), as the API documents it.
# An experiment stream's id is its event's experiment_seq; the per-job cursor its ids were before
# ("4:7.5:3", job 4 seen up to its event 7 ...) is still taken as a resume point.
EXPERIMENT_CURSOR_PATTERN = rf"{_CURSOR_ENTRY}(?:\.{_CURSOR_ENTRY})*"
JOB_EVENT_ID_PATTERN = r"0|[1-9][0-9]{0,9}"
EXPERIMENT_EVENT_ID_PATTERN = rf"{JOB_EVENT_ID_PATTERN}|{EXPERIMENT_CURSOR_PATTERN}"
_EXPERIMENT_CURSOR = re.compile(EXPERIMENT_CURSOR_PATTERN)
_JOB_CURSOR = re.compile(JOB_EVENT_ID_PATTERN)
# session.info: the experiments whose events this transaction wrote (numbered at commit).
_PENDING_EXPERIMENTS = "jobs.events.pending_experiments"


@dataclass(frozen=True)
class LoggedEvent:
    """One row of the log, detached from any session (handed between tasks and threads)."""

    job_id: int
    seq: int
    kind: str
    data: dict[str, Any]
    experiment_seq: int | None = None

    @property
    def ended_status(self) -> str | None:
        """The final status this event reports, if it is the job's last event."""
        if self.kind == STATUS_EVENT and self.data.get("status") in TERMINAL_STATUSES:
            return str(self.data["status"])
        return None


def _json_value(value: Any) -> Any:
    # A diverged run's NaN loss is not JSON (PostgreSQL's json type refuses it): null instead.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _writing_the_log(session: Session) -> None:
    """Hold the log writers' lock (shared) for the rest of the transaction, on PostgreSQL."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock_shared(LOG_WRITERS_LOCK)))


def record_event(session: Session, job_id: int, kind: str, data: Mapping[str, Any]) -> int:
    """Append one event to the job's log in the caller's transaction; returns its seq."""
    _writing_the_log(session)
    bumped = session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(event_seq=Job.event_seq + 1)
        .returning(Job.event_seq, Job.experiment_id)
        .execution_options(synchronize_session=False)
    ).one()
    session.execute(
        insert(JobEvent).values(
            job_id=job_id,
            experiment_id=bumped.experiment_id,
            seq=bumped.event_seq,
            kind=kind,
            data={name: _json_value(value) for name, value in data.items()},
            created_at=utcnow(),
        )
    )
    _notify(session, [job_id])
    number_at_commit(session, bumped.experiment_id)
    return int(bumped.event_seq)


def number_at_commit(session: Session, experiment_id: int | None) -> None:
    """Have the experiment's events not numbered yet numbered as the transaction commits."""
    if experiment_id is not None:
        session.info.setdefault(_PENDING_EXPERIMENTS, set()).add(int(experiment_id))


# Numbers the transaction's events of one experiment after those already committed.
_NUMBER_EXPERIMENT_EVENTS = text(
    "UPDATE job_events SET experiment_seq = numbered.n FROM ("
    " SELECT id, (SELECT coalesce(max(experiment_seq), 0) FROM job_events"
    "  WHERE experiment_id = :experiment) + row_number() OVER (ORDER BY id) AS n"
    " FROM job_events WHERE experiment_id = :experiment AND experiment_seq IS NULL"
    ") AS numbered WHERE job_events.id = numbered.id"
)


# First of the commit hooks (insert=True, whatever the import order): these locks are taken
# before the kept status counts' rows (jobs.status_counts), in every process alike.
@event.listens_for(Session, "before_commit", insert=True)
def _number_experiment_events(session: Session) -> None:
    """As the transaction commits: its events of each experiment get the next experiment_seqs,
    under the experiment's lock held to the commit (PostgreSQL; SQLite's one writer needs none),
    so an experiment's events become visible in experiment_seq order. Taken in experiment order,
    after every lock of the transaction's own work and before only the kept counts' rows, whose
    holders never wait for it: no cycle of waits can pass through it."""
    if session.in_nested_transaction():
        return  # a savepoint: the outer transaction numbers them
    pending = session.info.pop(_PENDING_EXPERIMENTS, None)
    if not pending:
        return
    postgres = session.get_bind().dialect.name == "postgresql"
    for experiment_id in sorted(pending):
        if postgres:
            session.execute(
                text(
                    "SELECT pg_advisory_xact_lock(CAST(:class AS integer), CAST(:key AS integer))"
                ),
                {"class": EXPERIMENT_SEQ_LOCK_CLASS, "key": experiment_id},
            )
        session.execute(_NUMBER_EXPERIMENT_EVENTS, {"experiment": experiment_id})
        if postgres:
            session.execute(select(func.pg_notify(EXPERIMENT_EVENTS_CHANNEL, str(experiment_id))))


@event.listens_for(Session, "after_transaction_end")
def _forget_pending(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(_PENDING_EXPERIMENTS, None)


def _notify(session: Session, job_ids: Sequence[int]) -> None:
    """On PostgreSQL, tell the API processes' watchers (at commit) that these jobs have news."""
    if session.get_bind().dialect.name != "postgresql" or not job_ids:
        return
    if len(job_ids) == 1:
        session.execute(select(func.pg_notify(JOB_EVENTS_CHANNEL, str(job_ids[0]))))
        return
    session.execute(
        text("SELECT pg_notify(:channel, id::text) FROM unnest(CAST(:ids AS integer[])) AS id"),
        {"channel": JOB_EVENTS_CHANNEL, "ids": list(job_ids)},
    )


def _status_payload(job_id: int, fields: Mapping[Any, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {"job_id": job_id, **{name: fields.get(name) for name in STATUS_FIELDS}}
    data["ended"] = JobStatus(data["status"]).ended
    return data


def status_data(session: Session, job_id: int) -> dict[str, Any]:
    """The payload of a status event: the job's status fields as they are now."""
    row = session.execute(
        select(*(getattr(Job, name) for name in STATUS_FIELDS)).where(Job.id == job_id)
    ).one()
    return _status_payload(job_id, row._mapping)


def record_first_statuses(
    session: Session, jobs: Sequence[tuple[int, Mapping[str, Any]]], *, experiment_id: int
) -> None:
    """Event seq 1 of each job just inserted with event_seq 1 (submission.add_jobs): the status
    event record_status would write for it, from the columns it was inserted with, for all of
    them in one statement."""
    now = utcnow()
    _writing_the_log(session)
    session.execute(
        insert(JobEvent),
        [
            {
                "job_id": job_id,
                "experiment_id": experiment_id,
                "seq": 1,
                "kind": STATUS_EVENT,
                "data": {
                    name: _json_value(value)
                    for name, value in _status_payload(job_id, columns).items()
                },
                "created_at": now,
            }
            for job_id, columns in jobs
        ],
    )
    _notify(session, [job_id for job_id, _ in jobs])
    number_at_commit(session, experiment_id)


def record_status(session: Session, job_id: int) -> int:
    """A status event for a change to the job row just made in this transaction."""
    return record_event(session, job_id, STATUS_EVENT, status_data(session, job_id))


def epoch_data(job_id: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The payload of an epoch event: the epoch's metrics row as stored."""
    return {"job_id": job_id, **metrics}


def record_epoch_event(session: Session, job_id: int, metrics: Mapping[str, Any]) -> int:
    return record_event(session, job_id, EPOCH_EVENT, epoch_data(job_id, metrics))


def events_after(
    session: Session,
    *,
    job_ids: Collection[int] | None = None,
    experiment_id: int | None = None,
    cursor: Mapping[int, int] | None = None,
) -> list[LoggedEvent]:
    """The events of these jobs (or of every job of the experiment) that the cursor has not
    seen, oldest first; each job's events in seq order."""
    if (job_ids is None) == (experiment_id is None):
        raise ValueError("give job_ids or experiment_id")
    query = select(JobEvent.job_id, JobEvent.seq, JobEvent.kind, JobEvent.data)
    if experiment_id is not None:
        query = query.where(JobEvent.experiment_id == experiment_id)
    else:
        assert job_ids is not None
        if not job_ids:
            return []
        query = query.where(JobEvent.job_id.in_(sorted(job_ids)))
    seen = [
        and_(JobEvent.job_id == job_id, JobEvent.seq <= seq)
        for job_id, seq in (cursor or {}).items()
        if seq > 0
    ]
    if seen:
        query = query.where(not_(or_(*seen)))
    # Within a job, id order is seq order: a job's next event is inserted only after the
    # previous one's transaction released the job row (see record_event).
    rows = session.execute(query.order_by(JobEvent.id)).all()
    return [LoggedEvent(row.job_id, row.seq, row.kind, row.data) for row in rows]


def ended_statuses(session: Session, job_ids: Collection[int]) -> dict[int, str]:
    """The final status of each of these jobs that has ended. Read before the log in the same
    session, a job ended here has its last event in what is read next."""
    if not job_ids:
        return {}
    rows = session.execute(
        select(Job.id, Job.status).where(
            Job.id.in_(sorted(job_ids)), Job.status.in_(sorted(TERMINAL_STATUSES))
        )
    )
    return {row.id: str(row.status) for row in rows}


def latest_event_id(session: Session) -> int:
    """The newest event's id across all jobs (0 for none): what a polling watcher compares."""
    return int(session.execute(select(func.max(JobEvent.id))).scalar() or 0)


def event_counts(session: Session, job_ids: Collection[int]) -> dict[int, int]:
    """Each job's number of events (its last seq), for the jobs that exist."""
    if not job_ids:
        return {}
    rows = session.execute(select(Job.id, Job.event_seq).where(Job.id.in_(sorted(job_ids))))
    return {row.id: int(row.event_seq) for row in rows}


def encode_cursor(cursor: Mapping[int, int]) -> str:
    """ "4:7.5:3": job 4 seen up to seq 7, job 5 up to seq 3 (jobs with nothing seen left out)."""
    return ".".join(f"{job_id}:{seq}" for job_id, seq in sorted(cursor.items()) if seq > 0)


def is_cursor_form(text: str) -> bool:
    """Whether the text has the form of an experiment stream's id (a job may still repeat)."""
    return _EXPERIMENT_CURSOR.fullmatch(text) is not None


def decode_cursor(text: str) -> Cursor:
    """The inverse of encode_cursor; ValueError when the text is not one."""
    if not is_cursor_form(text):
        raise ValueError(f"not an event cursor: {text!r}")
    cursor: Cursor = {}
    for entry in text.split("."):
        job_id, seq = (int(part) for part in entry.split(":"))
        if job_id in cursor:
            raise ValueError(f"job {job_id} appears twice in the event cursor")
        cursor[job_id] = seq
    return cursor


def decode_job_event_id(text: str) -> int:
    """A job stream's event id (its seq); ValueError when the text is not one."""
    if not _JOB_CURSOR.fullmatch(text):
        raise ValueError(f"not an event id: {text!r}")
    return int(text)


# A Last-Event-ID as given: (value, how it was sent: "Last-Event-ID header", ...).
ResumePoint = tuple[str, str]


def _resume_from(
    points: Sequence[ResumePoint], is_form: Callable[[str], bool], form: str
) -> ResumePoint | None:
    """The point to resume from (the first not empty; None: the whole history), once every
    value given has the form of the stream's ids (InvalidLastEventId names the first that has
    not, used or not: the schema states the form of each)."""
    for value, sent_as in points:
        if value and not is_form(value):
            raise InvalidLastEventId(
                f"The {sent_as} {value!r} is not an event id of this stream: {form}."
            )
    return next(((value, sent_as) for value, sent_as in points if value), None)


def _is_job_event_id(text: str) -> bool:
    try:
        decode_job_event_id(text)
    except ValueError:
        return False
    return True


def job_stream_start(session: Session, job_id: int, points: Sequence[ResumePoint]) -> int:
    """The seq after which the job's stream starts (0: its whole history)."""
    counts = event_counts(session, [job_id])
    if job_id not in counts:
        raise JobNotFound(job_id)
    form = "a job stream's ids are its event numbers (1, 2, 3 ...); send the last one received"
    point = _resume_from(points, _is_job_event_id, form)
    if point is None:
        return 0
    resume, sent_as = point
    seq = decode_job_event_id(resume)
    if seq > counts[job_id]:
        raise UnknownLastEventId(
            f"The {sent_as} {resume!r} is beyond job {job_id}'s last event ({counts[job_id]})."
        )
    return seq


def last_experiment_event(session: Session, experiment_id: int) -> int:
    """The experiment_seq of the experiment's newest committed event (0: none)."""
    return int(
        session.execute(
            select(func.max(JobEvent.experiment_seq)).where(JobEvent.experiment_id == experiment_id)
        ).scalar()
        or 0
    )


def experiment_events_after(
    session: Session, experiment_id: int, after: int, *, limit: int
) -> list[LoggedEvent]:
    """The experiment's next `limit` events after experiment_seq `after`, in that order."""
    rows = session.execute(
        select(JobEvent.job_id, JobEvent.seq, JobEvent.kind, JobEvent.data, JobEvent.experiment_seq)
        .where(JobEvent.experiment_id == experiment_id, JobEvent.experiment_seq > after)
        .order_by(JobEvent.experiment_seq)
        .limit(limit)
    ).all()
    return [
        LoggedEvent(row.job_id, row.seq, row.kind, row.data, row.experiment_seq) for row in rows
    ]


def _is_experiment_event_id(text: str) -> bool:
    return _is_job_event_id(text) or is_cursor_form(text)


def experiment_stream_start(
    session: Session, experiment_id: int, points: Sequence[ResumePoint]
) -> tuple[int, Cursor]:
    """Where the experiment's stream starts: after this experiment_seq (0: the whole history),
    skipping what a per-job cursor (an id of the stream's earlier form) says was seen."""
    if session.get(Experiment, experiment_id) is None:
        raise ExperimentNotFound(experiment_id)
    form = "send the id of the last event received, as it was"
    point = _resume_from(points, _is_experiment_event_id, form)
    if point is None:
        return 0, {}
    resume, sent_as = point
    last = last_experiment_event(session, experiment_id)
    if _is_job_event_id(resume):
        if int(resume) > last:
            raise UnknownLastEventId(
                f"The {sent_as} {resume!r} is beyond experiment {experiment_id}'s last event "
                f"({last})."
            )
        return int(resume), {}
    try:
        cursor = decode_cursor(resume)
    except ValueError:
        raise UnknownLastEventId(
            f"The {sent_as} {resume!r} names a job twice: it is no id this stream sent; {form}."
        ) from None
    counts = {
        row.id: int(row.event_seq)
        for row in session.execute(
            select(Job.id, Job.event_seq).where(Job.experiment_id == experiment_id)
        )
    }
    for job_id, seq in cursor.items():
        if job_id not in counts or seq > counts[job_id]:
            raise UnknownLastEventId(
                f"The {sent_as} {resume!r} names no point of experiment "
                f"{experiment_id}'s events (job {job_id}, event {seq})."
            )
    # The stream reads on from the first event the cursor has not seen, skipping the later
    # ones it has.
    unseen = [and_(JobEvent.job_id == job_id, JobEvent.seq > seq) for job_id, seq in cursor.items()]
    first_unseen = session.execute(
        select(func.min(JobEvent.experiment_seq)).where(
            JobEvent.experiment_id == experiment_id,
            or_(JobEvent.job_id.not_in(sorted(cursor)), *unseen),
        )
    ).scalar()
    return (last if first_unseen is None else int(first_unseen) - 1), cursor
