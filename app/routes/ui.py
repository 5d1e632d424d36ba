"""The dashboard: HTML pages over the data the JSON API serves, and the sign-in form.

The pages are rendered here from the database; what changes while a page is open (curves, the
metrics table, a job's status, experiments) is filled in by the page's script from the JSON API
and its event streams, so the browser reads the same answers any client does. None of these
routes is in the OpenAPI schema."""

from __future__ import annotations

import json
from typing import Annotated, Any, get_args
from urllib.parse import parse_qs, urlencode

import anyio.to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.auth import SIGN_IN_COOKIE, SIGN_IN_PATH, key_matches, safe_next, sign_in_token
from app.deps import SettingsDep, read_session
from app.routes.checkpoints import checkpoint_listing, named_checkpoints
from app.routes.common import render_one_job
from app.routes.params import CANONICAL_ID, MAX_JOB_ID
from app.schemas.jobs import EpochMetricRead
from app.templating import page
from engine.config import Hyperparameters
from engine.datasets import DATASETS
from jobs import accounts
from jobs.db import session_scope
from jobs.errors import ExperimentNotFound, InvalidFields, JobNotFound, TokenRejected
from jobs.listing import get_experiment, get_job, list_jobs
from jobs.metrics import epoch_metrics
from jobs.settings import get_settings
from jobs.tables import Job, JobStatus
from models.catalog import BLOCK_NAMES

router = APIRouter(include_in_schema=False)

JOBS_PER_PAGE = 50
MAX_JOBS_PER_PAGE = 200
STATUS_NAMES = tuple(status.value for status in JobStatus)
SIGN_IN_SECONDS = 7 * 24 * 3600
# The course report's results section, in its order: which blocks each problem compares.
REPORT_PROBLEMS = (
    ("Problem 1", "The 18-layer plain network", ("plain",)),
    ("Problem 2", "Plain vs residual blocks", ("plain", "residual")),
    ("Problem 3", "Plain vs mobile (depthwise-separable) blocks", ("plain", "mobile")),
)


def _id_or_none(text: str) -> int | None:
    """The id a path segment names, with the API's rule (canonical spelling, in range)."""
    if not CANONICAL_ID.fullmatch(text) or int(text) > MAX_JOB_ID:
        return None
    return int(text)


def _not_found(request: Request, message: str) -> HTMLResponse:
    return page(request, "error.html", {"title": "Not found", "message": message}, 404)


@router.get("/", response_class=HTMLResponse)
def jobs_page(
    request: Request,
    status: str = "",
    block: str = "",
    owner: str = "",
    cursor: str = "",
    limit: str = "",
) -> HTMLResponse:
    """Jobs, newest first, filtered by status, block and owner, a page at a time (the API's
    cursors); experiments below (from the API, of the same owner)."""
    # Query values are checked here, not by FastAPI, so that a wrong one is a page, not JSON.
    problems = []
    if status and status not in STATUS_NAMES:
        problems.append(f"There is no status {status!r}; statuses are {', '.join(STATUS_NAMES)}.")
    if block and block not in BLOCK_NAMES:
        problems.append(f"There is no block {block!r}; blocks are {', '.join(BLOCK_NAMES)}.")
    if owner and not accounts.NAME_PATTERN.fullmatch(owner):
        problems.append(
            f"{owner!r} is no user's name: 1 to 64 of a-z, 0-9, '.', '_' and '-', starting "
            "with a letter or digit."
        )
    per_page = JOBS_PER_PAGE
    if limit:
        if limit.isdigit() and len(limit) <= 3 and 1 <= int(limit) <= MAX_JOBS_PER_PAGE:
            per_page = int(limit)
        else:
            problems.append(f"A page shows 1 to {MAX_JOBS_PER_PAGE} jobs, not {limit!r}.")
    jobs: list[Job] = []
    next_cursor = None
    if not problems:
        try:
            with read_session() as session:
                jobs, next_cursor = list_jobs(
                    session,
                    status=status or None,
                    block=block or None,
                    owner=owner or None,
                    limit=per_page,
                    cursor=cursor or None,
                )
        except InvalidFields:
            problems.append("That page link is damaged; start again from the newest jobs.")

    def page_link(new_cursor: str | None) -> str:
        query = {
            "status": status,
            "block": block,
            "owner": owner,
            "limit": limit,
            "cursor": new_cursor or "",
        }
        encoded = urlencode({name: value for name, value in query.items() if value})
        return f"/?{encoded}" if encoded else "/"

    return page(
        request,
        "index.html",
        {
            "jobs": jobs,
            "status": status,
            "block": block,
            "owner": owner,
            "statuses": STATUS_NAMES,
            "blocks": BLOCK_NAMES,
            "problems": problems,
            "newest": page_link(None) if cursor else None,
            "older": page_link(next_cursor) if next_cursor else None,
        },
        400 if problems else 200,
    )


def _spec_rows(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """The submitted spec as (field, value) rows, hyperparameters flattened."""
    rows = []
    for name, value in spec.items():
        if name == "hyperparameters" and isinstance(value, dict):
            rows += [(f"hyperparameters.{key}", json.dumps(item)) for key, item in value.items()]
        else:
            rows.append((name, json.dumps(value)))
    return rows


@router.get("/ui/jobs/{job_id}", response_class=HTMLResponse)
def job_page(job_id: str, request: Request) -> HTMLResponse:
    """One job: status, complexity, spec, curves and metrics (growing live), checkpoints."""
    found = _id_or_none(job_id)
    with read_session() as session:
        try:
            job = get_job(session, found if found is not None else 0)
        except JobNotFound:
            return _not_found(request, f"There is no job {job_id}.")
        job_read = render_one_job(session, job)
        rows = epoch_metrics(session, job.id)
        named = named_checkpoints(session, job)
        search = (job.experiment.spec or {}).get("search") if job.experiment is not None else None
    metrics = [EpochMetricRead.model_validate(row) for row in rows]
    checkpoints = checkpoint_listing(named, get_settings())
    return page(
        request,
        "job.html",
        {
            "job": job_read,
            "owner": job.owner,
            "experiment_id": job.experiment_id,
            "ended": job_read.ended,
            "metrics": metrics,
            "checkpoints": checkpoints,
            "spec_rows": _spec_rows(job.spec),
            "objective_metric": search["objective"]["metric"] if search else "test_accuracy",
            # For the page's script: the state it starts from, and the job's last event in it
            # (the stream is followed from there, so nothing older is replayed over it).
            "initial": {
                "job": job_read.model_dump(mode="json"),
                "metrics": [row.model_dump(mode="json") for row in metrics],
                "event_seq": job.event_seq,
            },
        },
    )


@router.get("/ui/experiments/{experiment_id}", response_class=HTMLResponse)
def experiment_page(experiment_id: str, request: Request) -> HTMLResponse:
    """One experiment; its summary, curves and charts come from GET /experiments/{id} and its
    event stream."""
    found = _id_or_none(experiment_id)
    with read_session() as session:
        try:
            experiment = get_experiment(session, found if found is not None else 0)
        except ExperimentNotFound:
            return _not_found(request, f"There is no experiment {experiment_id}.")
    return page(
        request,
        "experiment.html",
        {
            "experiment": experiment,
            "problems": REPORT_PROBLEMS if experiment.preset == "report" else (),
        },
    )


@router.get("/ui/submit", response_class=HTMLResponse)
def submit_page(request: Request) -> HTMLResponse:
    """A form for a job or an experiment; choices and placeholders come from the spec models."""
    fields = Hyperparameters.model_fields
    return page(
        request,
        "submit.html",
        {
            "blocks": BLOCK_NAMES,
            "datasets": tuple(DATASETS),
            "defaults": Hyperparameters().model_dump(),
            "optimizers": get_args(fields["optimizer"].annotation),
            "schedulers": get_args(fields["scheduler"].annotation),
        },
    )


@router.get(SIGN_IN_PATH, response_class=HTMLResponse)
def sign_in_page(
    request: Request,
    settings: SettingsDep,
    next_path: Annotated[str, Query(alias="next")] = "/",
) -> HTMLResponse:
    context = {"next": safe_next(next_path), "problem": None}
    return page(request, "login.html", {**context, "key_needed": settings.api_key is not None})


def _user_sign_in(api_key: str, token: str) -> str:
    """The sign-in cookie for a user's token (jobs.accounts.sign_in_value): the token's id and
    an HMAC of its stored hash, never the token; TokenRejected for a token that is not good."""
    with session_scope(write=False) as session:
        identity, _ = accounts.identify_token(session, token)
    assert identity.token_id is not None
    return accounts.sign_in_value(api_key, identity.token_id, accounts.token_sha256(token))


@router.post(SIGN_IN_PATH, response_class=HTMLResponse)
async def sign_in(request: Request, settings: SettingsDep) -> Response:
    """Check the key or a user's token from the form; a good one sets the sign-in cookie and
    goes on to the page asked for. The cookie is HttpOnly (no script reads it) and
    SameSite=Strict (no other site's page can send it), and holds neither the key nor the
    token."""
    # A form body, parsed here: the only form the service takes.
    form = parse_qs((await request.body()).decode("utf-8", errors="replace"))
    sent = form.get("api_key", [""])[0]
    target = safe_next(form.get("next", ["/"])[0])
    expected = settings.api_key
    if expected is None:
        return RedirectResponse(target, status_code=303)
    if key_matches(sent, expected):
        cookie = sign_in_token(expected)
    else:
        try:
            cookie = await anyio.to_thread.run_sync(_user_sign_in, expected, sent)
        except TokenRejected as rejected:
            problem = rejected.detail
            if not accounts.looks_like_token(sent):
                problem = "That is not the key." if sent else "Enter the key."
            context = {"next": target, "problem": problem, "key_needed": True}
            return page(request, "login.html", context, 401)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SIGN_IN_COOKIE,
        cookie,
        max_age=SIGN_IN_SECONDS,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/ui/logout")
def sign_out() -> Response:
    response = RedirectResponse(SIGN_IN_PATH, status_code=303)
    response.delete_cookie(SIGN_IN_COOKIE, path="/", httponly=True, samesite="strict")
    return response
