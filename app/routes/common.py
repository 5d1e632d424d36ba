"""Helpers shared by the routers: response documentation and job rendering."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import Request, Response
from sqlalchemy.orm import Session

from app.schemas.errors import ErrorRead
from app.schemas.jobs import JobLinks, JobRead
from jobs.dispatch import queue_place
from jobs.errors import InvalidFields
from jobs.tables import Job, JobStatus

OFFSET_GONE = (
    "pages are read with cursors: follow the page's `next` (or its Link header) instead of "
    "skipping rows"
)


def refuse_offset(offset: object) -> None:
    """A client still paging by offset gets a clear 422 rather than the first page again."""
    if offset is not None:
        raise InvalidFields([("offset", OFFSET_GONE)])


def next_url(request: Request, cursor: str | None) -> str | None:
    """The next page's URL: this request's, with `cursor` replaced; None after the last page."""
    if cursor is None:
        return None
    query = [
        (name, value) for name, value in request.query_params.multi_items() if name != "cursor"
    ]
    return f"{request.url.path}?{urlencode([*query, ('cursor', cursor)])}"


def next_link(url: str) -> str:
    """The RFC 8288 `Link` header that points at the next page."""
    return f'<{url}>; rel="next"'


def next_page(request: Request, response: Response, cursor: str | None) -> str | None:
    """The next page's URL (next_url), also sent as a `Link: <...>; rel="next"` header."""
    url = next_url(request, cursor)
    if url is not None:
        response.headers["Link"] = next_link(url)
    return url


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the JSON errors a route can answer with."""
    descriptions = {
        400: "The request body is not UTF-8 JSON text, or is JSON nested over 64 levels deep, "
        "with a number over 100 characters, an unpaired surrogate or NUL in a string, or a "
        "duplicate key; `error` says which, `detail` where.",
        401: "Missing or wrong API key or token, a revoked token or a disabled user (only "
        "when API_KEY is set).",
        403: "Only the owner or an admin may change this (`forbidden`).",
        404: "No such job, checkpoint or file.",
        409: "Conflict with the job's state or an earlier request.",
        412: "If-Match or If-Unmodified-Since did not match the file.",
        413: "Request body too large.",
        415: "The request body is not sent as JSON (application/json).",
        416: "The Range is outside the file; Content-Range gives its size.",
        422: "Invalid input; `fields` names each bad field.",
        429: "Over the caller's limit on queued jobs (`quota_exceeded`); `quota` gives the "
        "limit, the jobs already queued and the jobs this request adds.",
        503: "Not available right now; see Retry-After.",
    }
    return {code: {"model": ErrorRead, "description": descriptions[code]} for code in codes}


def job_links(job_id: int) -> JobLinks:
    base = f"/jobs/{job_id}"
    return JobLinks(
        self=base,
        metrics=f"{base}/metrics",
        loss_plot=f"{base}/plots/loss.png",
        accuracy_plot=f"{base}/plots/accuracy.png",
        checkpoints=f"{base}/checkpoints",
        cancel=f"{base}/cancel",
    )


def trial_fields(job: Job) -> dict[str, Any]:
    """A trial's search fields as the API shows them; `cutoff` is the one it was stopped at."""
    state = job.trial_state or {}
    decisions = list(state.get("decisions", ()))
    stopped = [item for item in decisions if item.get("outcome") == "stopped"]
    return {
        "number": job.trial_number,
        "params": job.trial_params or {},
        "bracket": state.get("bracket"),
        "rung": job.rung,
        "prune_requested": job.prune_requested,
        "pause_requested": job.pause_requested,
        "decisions": decisions,
        "cutoff": stopped[-1].get("cutoff") if stopped else None,
    }


def render_job(
    job: Job, queue_position: int | None = None, queue_reason: str | None = None
) -> JobRead:
    return JobRead.model_validate(
        {
            **{
                field: getattr(job, field)
                for field in JobRead.model_fields
                if field not in ("links", "queue_position", "queue_reason", "ended", "trial")
            },
            "trial": None if job.trial_number is None else trial_fields(job),
            "ended": JobStatus(job.status).ended,
            "queue_position": queue_position,
            "queue_reason": queue_reason,
            "links": job_links(job.id),
        }
    )


def render_one_job(session: Session, job: Job) -> JobRead:
    """A job read on its own: with its queue position, the reason for that position (a list
    gives positions only: a reason costs a few counts per job)."""
    place = queue_place(session, job.id)
    if place is None:
        return render_job(job)
    return render_job(job, place.position, place.reason)
