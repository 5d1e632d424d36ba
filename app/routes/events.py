"""Server-Sent Events: a job's or an experiment's status and epoch events (and a search's trial
events), live."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from pydantic import BaseModel, WithJsonSchema
from sse_starlette import EventSourceResponse

from app.deps import read_session
from app.methods import HEAD_REQUEST
from app.routes.common import error_responses
from app.routes.params import ExperimentId, JobId
from app.schemas.errors import ErrorRead
from app.schemas.events import (
    BestChangedEventData,
    EpochEventData,
    ExperimentEndEventData,
    JobEndEventData,
    StatusEventData,
    TrialCreatedEventData,
    TrialPausedEventData,
    TrialPrunedEventData,
    TrialResumedEventData,
)
from app.streams import END_EVENT, EventHub, experiment_event_stream, job_event_stream
from jobs.events import (
    EPOCH_EVENT,
    EXPERIMENT_EVENT_ID_PATTERN,
    JOB_EVENT_ID_PATTERN,
    STATUS_EVENT,
    ResumePoint,
    experiment_stream_start,
    job_stream_start,
)
from jobs.search.study import (
    BEST_CHANGED_EVENT,
    TRIAL_CREATED_EVENT,
    TRIAL_PAUSED_EVENT,
    TRIAL_PRUNED_EVENT,
    TRIAL_RESUMED_EVENT,
)

router = APIRouter(tags=["events"])
KEEP_ALIVE_SECONDS = 15
# Each event the streams send, for the schema: its name, its data (a component of the schema,
# JSON text in `data`) and its id. `end` sets no id: a client's last event id stays that of the
# last event before it (which parsers that follow the HTML standard report on `end` too).
_EVENTS = (
    (STATUS_EVENT, StatusEventData, True, "Each change of a job's status, with its figures."),
    (EPOCH_EVENT, EpochEventData, True, "Each epoch a job stored, as /jobs/{id}/metrics shows."),
    (
        TRIAL_CREATED_EVENT,
        TrialCreatedEventData,
        True,
        "A search made this job as its next trial, with the sampled params.",
    ),
    (
        TRIAL_PAUSED_EVENT,
        TrialPausedEventData,
        True,
        "The search's pruner paused this trial at its bracket's rung; it waits `paused`.",
    ),
    (
        TRIAL_RESUMED_EVENT,
        TrialResumedEventData,
        True,
        "The search's pruner promoted this waiting trial; it resumes from its checkpoint.",
    ),
    (
        TRIAL_PRUNED_EVENT,
        TrialPrunedEventData,
        True,
        "The search's pruner stopped this trial (the decision, its cutoff and noise margin); "
        "it ends `pruned`.",
    ),
    (
        BEST_CHANGED_EVENT,
        BestChangedEventData,
        True,
        "This trial just succeeded with the search's best objective so far.",
    ),
)
KEEP_ALIVE = {
    "every_seconds": KEEP_ALIVE_SECONDS,
    "description": "While no event is due, a comment line (starting with a colon, `: ping - "
    "<time>`) keeps proxies from closing the connection; EventSource ignores comments.",
}


def _event_schema(
    name: str, data: type[BaseModel], id_pattern: str, *, has_id: bool, description: str
) -> dict[str, Any]:
    content = {"$ref": f"#/components/schemas/{data.__name__}"}
    return {
        "title": name,
        "description": description,
        "type": "object",
        "properties": {
            "event": {"const": name},
            "id": {"type": "string", "pattern": f"^(?:{id_pattern})$"},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": content,
            },
        },
        "required": ["event", "data", "id"] if has_id else ["event", "data"],
    }


def event_stream_response(
    end_data: type[BaseModel], id_pattern: str, ids: str
) -> dict[int | str, dict[str, Any]]:
    """The 200 answer of an event stream: text/event-stream, each event described (Open API
    3.2's `itemSchema`, as FastAPI writes it for its own event streams)."""
    events = [
        _event_schema(name, data, id_pattern, has_id=has_id, description=description)
        for name, data, has_id, description in _EVENTS
    ]
    events.append(
        _event_schema(
            END_EVENT,
            end_data,
            id_pattern,
            has_id=False,
            description="The last event: everything has ended, and the server closes the stream. "
            "It sets no id of its own.",
        )
    )
    return {
        200: {
            "description": "A text/event-stream of `status` and `epoch` events (a search's "
            "trials add `trial_created`, `trial_paused`, `trial_resumed`, `trial_pruned` and "
            "`best_changed`; each `data` is "
            "one line of JSON, described by the component the event names), then `end`. "
            f"{ids} Keep-alive comments every {KEEP_ALIVE_SECONDS} s while idle.",
            "content": {
                "text/event-stream": {"itemSchema": {"oneOf": events}, "x-keep-alive": KEEP_ALIVE}
            },
        }
    }


JOB_EVENT_STREAM = event_stream_response(
    JobEndEventData, "[1-9][0-9]{0,9}", "Each id is the job's event number."
)
EXPERIMENT_EVENT_STREAM = event_stream_response(
    ExperimentEndEventData,
    "[1-9][0-9]{0,9}",
    "Each id is the experiment's event number (its events counted in the order they were "
    "written, across its jobs), to send back as Last-Event-ID.",
)
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


def _last_event_id_schema(pattern: str) -> WithJsonSchema:
    """A Last-Event-ID's schema: a string of the stream's id form, or empty (no resume point).
    Not null: a header or query parameter is left out to say "none"."""
    return WithJsonSchema({"type": "string", "pattern": f"^(?:{pattern})?$"})


# The form is checked by the route (400 naming the header or parameter), not by FastAPI (422).
JOB_LAST_EVENT_ID = _last_event_id_schema(JOB_EVENT_ID_PATTERN)
EXPERIMENT_LAST_EVENT_ID = _last_event_id_schema(EXPERIMENT_EVENT_ID_PATTERN)
RESUME = (
    "Resume after this event: the id of the last event received (EventSource sends it when it "
    "reconnects). Without it (or empty) the whole history is sent first."
)
QUERY = (
    "The same as the Last-Event-ID header, for clients that cannot set one (the header, when "
    "not empty, wins)."
)
JobLastEventIdHeader = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID", description=f"{RESUME} A job stream's ids are its event numbers."
    ),
    JOB_LAST_EVENT_ID,
]
JobLastEventIdQuery = Annotated[str | None, Query(description=QUERY), JOB_LAST_EVENT_ID]
ExperimentLastEventIdHeader = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        description=f"{RESUME} An experiment stream's ids are its event numbers (the "
        "experiment's `last_event_id` follows only what happens from then on); the per-job "
        "cursors (`4:7.5:3`) it sent before are still taken.",
    ),
    EXPERIMENT_LAST_EVENT_ID,
]
ExperimentLastEventIdQuery = Annotated[
    str | None, Query(description=QUERY), EXPERIMENT_LAST_EVENT_ID
]


def _resume_points(header: str | None, query: str | None) -> list[ResumePoint]:
    """The Last-Event-ID values given, the header's first: it wins unless it is empty."""
    points = [(header, "Last-Event-ID header"), (query, "last_event_id parameter")]
    return [(value, sent_as) for value, sent_as in points if value is not None]


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
    responses={**JOB_EVENT_STREAM, **ERRORS},
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
    points = _resume_points(last_event_id_header, last_event_id)
    with read_session() as session:
        seen_seq = job_stream_start(session, job_id, points)
    return _stream(request, job_event_stream(_hub(request), job_id, seen_seq))


@router.get(
    "/experiments/{experiment_id}/events",
    response_class=EventSourceResponse,
    responses={**EXPERIMENT_EVENT_STREAM, **ERRORS},
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
    points = _resume_points(last_event_id_header, last_event_id)
    with read_session() as session:
        after, seen = experiment_stream_start(session, experiment_id, points)
    return _stream(request, experiment_event_stream(_hub(request), experiment_id, after, seen))
