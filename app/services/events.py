"""Opening an event stream: the job or experiment must exist, and a Last-Event-ID must name a
point of its log. Checked before the stream starts, so that the answer can still be a JSON
error: 400 for an id not in the form of the stream's ids (which the schema states), 409 for
one in that form that names no point of this stream's log."""

from __future__ import annotations

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


def job_stream_start(
    session: Session, job_id: int, last_event_id: str | None, *, sent_as: str
) -> int:
    """The seq after which the job's stream starts (0: its whole history)."""
    counts = event_counts(session, [job_id])
    if job_id not in counts:
        raise JobNotFound(job_id)
    if not last_event_id:
        return 0
    try:
        seq = decode_job_event_id(last_event_id)
    except ValueError:
        raise InvalidLastEventId(
            f"The {sent_as} {last_event_id!r} is not an event id of this stream: a job stream's "
            "ids are its event numbers (1, 2, 3 ...); send the last one received."
        ) from None
    if seq > counts[job_id]:
        raise UnknownLastEventId(
            f"The {sent_as} {last_event_id!r} is beyond job {job_id}'s last event "
            f"({counts[job_id]})."
        )
    return seq


def experiment_stream_start(
    session: Session, experiment_id: int, last_event_id: str | None, *, sent_as: str
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
    if not last_event_id:
        return sorted(counts), {}
    if not is_cursor_form(last_event_id):
        raise InvalidLastEventId(
            f"The {sent_as} {last_event_id!r} is not an event id of this stream: send the id "
            "of the last event received, as it was."
        )
    try:
        cursor = decode_cursor(last_event_id)
    except ValueError:
        raise UnknownLastEventId(
            f"The {sent_as} {last_event_id!r} names a job twice: it is no id this stream sent; "
            "send the id of the last event received, as it was."
        ) from None
    for job_id, seq in cursor.items():
        if job_id not in counts or seq > counts[job_id]:
            raise UnknownLastEventId(
                f"The {sent_as} {last_event_id!r} names no point of experiment "
                f"{experiment_id}'s events (job {job_id}, event {seq})."
            )
    return sorted(counts), cursor
