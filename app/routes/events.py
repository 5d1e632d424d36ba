"""Server-Sent Events: a job's or an experiment's status and epoch events, live."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse

from app.deps import read_session
from app.methods import HEAD_REQUEST
from app.routes.common import error_responses
from app.routes.params import ExperimentId, JobId
from app.schemas import ErrorRead
from app.services import events as event_service
from app.streams import EventHub, experiment_event_stream, job_event_stream
from jobs.events import EXPERIMENT_CURSOR_PATTERN, JOB_EVENT_ID_PATTERN

router = APIRouter(tags=["events"])
KEEP_ALIVE_SECONDS = 15
EVENT_STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
        "description": "A text/event-stream: `status` and `epoch` events (JSON data, one line "
        "each), then `end` when the stream is over; keep-alive comments every 15 s.",
    }
}
ERRORS: dict[int | str, dict[str, Any]] = {
    **error_responses(401, 404),
    400: {
        "model": ErrorRead,
        "description": "Last-Event-ID is not in the form of this stream's ids.",
    },
    409: {
        "model": ErrorRead,
        "description": "Last-Event-ID names no event of this stream (beyond its last event, or "
        "a job outside the experiment).",
    },
}


def _whole(pattern: str) -> str:
    """The pattern of a whole Last-Event-ID; empty is allowed and means no resume point."""
    return f"^(?:{pattern})?$"


# The form is checked by the route (400 naming the header or parameter), not by FastAPI (422).
JOB_LAST_EVENT_ID = {"pattern": _whole(JOB_EVENT_ID_PATTERN)}
EXPERIMENT_LAST_EVENT_ID = {"pattern": _whole(EXPERIMENT_CURSOR_PATTERN)}
RESUME = (
    "Resume after this event: the id of the last event received (EventSource sends it when it "
    "reconnects). Without it (or empty) the whole history is sent first."
)
QUERY = "The same as the Last-Event-ID header, for clients that cannot set one."
JobLastEventIdHeader = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        description=f"{RESUME} A job stream's ids are its event numbers.",
        json_schema_extra=JOB_LAST_EVENT_ID,
    ),
]
JobLastEventIdQuery = Annotated[
    str | None, Query(description=QUERY, json_schema_extra=JOB_LAST_EVENT_ID)
]
ExperimentLastEventIdHeader = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        description=f"{RESUME} An experiment stream's ids are opaque cursors.",
        json_schema_extra=EXPERIMENT_LAST_EVENT_ID,
    ),
]
ExperimentLastEventIdQuery = Annotated[
    str | None, Query(description=QUERY, json_schema_extra=EXPERIMENT_LAST_EVENT_ID)
]


def _resume_point(header: str | None, query: str | None) -> tuple[str | None, str]:
    if header is not None:
        return header, "Last-Event-ID header"
    return query, "last_event_id parameter"


async def _nothing() -> AsyncIterator[Any]:
    return
    yield  # an async generator that ends at once


def _stream(request: Request, events: AsyncIterator[Any]) -> EventSourceResponse:
    if request.scope.get(HEAD_REQUEST):
        # HEAD reaches the route as GET: same headers, and no stream that would never end.
        events = _nothing()
    return EventSourceResponse(events, ping=KEEP_ALIVE_SECONDS)


def _hub(request: Request) -> EventHub:
    hub: EventHub = request.app.state.event_hub
    return hub


@router.get(
    "/jobs/{job_id}/events",
    response_class=EventSourceResponse,
    responses={**EVENT_STREAM, **ERRORS},
    summary="A job's status and epoch events as they happen (Server-Sent Events)",
)
def job_events(
    job_id: JobId,
    request: Request,
    last_event_id_header: JobLastEventIdHeader = None,
    last_event_id: JobLastEventIdQuery = None,
) -> EventSourceResponse:
    """Every event so far (or only those after Last-Event-ID), then each new one; ids are the
    job's event numbers. Ends with an `end` event once the job has ended."""
    resume, sent_as = _resume_point(last_event_id_header, last_event_id)
    with read_session() as session:
        seen_seq = event_service.job_stream_start(session, job_id, resume, sent_as=sent_as)
    return _stream(request, job_event_stream(_hub(request), job_id, seen_seq))


@router.get(
    "/experiments/{experiment_id}/events",
    response_class=EventSourceResponse,
    responses={**EVENT_STREAM, **ERRORS},
    summary="The status and epoch events of every job of an experiment (Server-Sent Events)",
)
def experiment_events(
    experiment_id: ExperimentId,
    request: Request,
    last_event_id_header: ExperimentLastEventIdHeader = None,
    last_event_id: ExperimentLastEventIdQuery = None,
) -> EventSourceResponse:
    """Like a job's stream, for all the experiment's jobs; each id is an opaque cursor to send
    back as Last-Event-ID. Ends with an `end` event once every job has ended."""
    resume, sent_as = _resume_point(last_event_id_header, last_event_id)
    with read_session() as session:
        job_ids, cursor = event_service.experiment_stream_start(
            session, experiment_id, resume, sent_as=sent_as
        )
    return _stream(request, experiment_event_stream(_hub(request), experiment_id, job_ids, cursor))
