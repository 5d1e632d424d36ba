"""Opening an event stream: the job or experiment must exist, and a Last-Event-ID must name a
point of its log. Checked before the stream starts, so that the answer can still be a JSON
error: 400 for an id not in the form of the stream's ids (which the schema states), 409 for
one in that form that names no point of this stream's log."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import ExperimentNotFound, InvalidLastEventId, JobNotFound, UnknownLastEventId
from jobs.events import (
    Cursor,
    decode_cursor,
    decode_job_event_id,
    event_counts,
    is_cursor_form,
)
from jobs.tables import Experiment, Job

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


def experiment_stream_start(
    session: Session, experiment_id: int, points: Sequence[ResumePoint]
) -> tuple[list[int], Cursor]:
    """The experiment's jobs and the cursor after which its stream starts (empty: the whole
    history)."""
    if session.get(Experiment, experiment_id) is None:
        raise ExperimentNotFound(experiment_id)
    counts = {
        row.id: int(row.event_seq)
        for row in session.execute(
            select(Job.id, Job.event_seq).where(Job.experiment_id == experiment_id)
        )
    }
    form = "send the id of the last event received, as it was"
    point = _resume_from(points, is_cursor_form, form)
    if point is None:
        return sorted(counts), {}
    resume, sent_as = point
    try:
        cursor = decode_cursor(resume)
    except ValueError:
        raise UnknownLastEventId(
            f"The {sent_as} {resume!r} names a job twice: it is no id this stream sent; {form}."
        ) from None
    for job_id, seq in cursor.items():
        if job_id not in counts or seq > counts[job_id]:
            raise UnknownLastEventId(
                f"The {sent_as} {resume!r} names no point of experiment "
                f"{experiment_id}'s events (job {job_id}, event {seq})."
            )
    return sorted(counts), cursor
