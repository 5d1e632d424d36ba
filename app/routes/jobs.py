"""/jobs: submit, list, inspect, poll metrics, cancel."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from app.deps import IdentityDep, SessionDep, SettingsDep, read_session
from app.routes.common import (
    error_responses,
    next_page,
    refuse_offset,
    render_job,
    render_one_job,
)
from app.routes.params import MAX_JOB_ID, IdempotencyKey, JobId, OwnerQuery
from app.schemas.jobs import JobList, JobMetrics, JobRead
from jobs import dispatch, lifecycle, listing, metrics, retention, submission
from jobs.listing import JobSort
from jobs.specs import JobCreate, PriorityUpdate, Tag
from jobs.tables import JobStatus
from models.catalog import BlockName

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRead,
    responses=error_responses(400, 401, 409, 413, 422, 429, 503),
    summary="Submit a training job",
)
def submit_job(
    spec: JobCreate,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    identity: IdentityDep,
    idempotency_key: IdempotencyKey = None,
) -> JobRead:
    """Queue a job, owned by the caller. Parameters and MACs are computed now; the job row is
    committed before its id is sent to the workers. 429 quota_exceeded when it would leave the
    caller more queued jobs than their limit."""
    made = submission.create_job(
        session,
        spec,
        settings=settings,
        idempotency_key=idempotency_key,
        owner=identity.owner,
    )
    job = made.job
    if made.created:
        logger.info("job %s submitted", job.id, extra={"job_id": job.id})
    else:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/jobs/{job.id}"
    return render_one_job(session, job)


@router.get(
    "",
    response_model=JobList,
    responses=error_responses(401, 422),
    summary="List jobs, a page at a time",
)
def list_jobs(
    request: Request,
    response: Response,
    status: JobStatus | None = None,
    block: BlockName | None = None,
    experiment_id: Annotated[
        int | None, Query(ge=1, le=MAX_JOB_ID, description="Only this experiment's jobs.")
    ] = None,
    tag: Annotated[Tag | None, Query(description="Only the jobs with this tag.")] = None,
    owner: OwnerQuery = None,
    sort: Annotated[
        JobSort,
        Query(
            description="created: newest first. best_test_accuracy: highest first, then the "
            "jobs without one, newest first."
        ),
    ] = "created",
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None,
        Query(
            max_length=200,
            description="Where the page starts: the `cursor` of the page "
            "before's `next` URL. Opaque.",
        ),
    ] = None,
    offset: Annotated[str | None, Query(include_in_schema=False)] = None,
) -> JobList:
    """Each job appears on exactly one page while jobs are being added and finished. There is
    no total: counting every matching job would cost a scan of them on every page."""
    refuse_offset(offset)
    with read_session() as session:
        jobs, next_cursor = listing.list_jobs(
            session,
            status=status,
            block=block,
            experiment_id=experiment_id,
            tag=tag,
            owner=owner,
            sort=sort,
            limit=limit,
            cursor=cursor,
        )
        positions = dispatch.queue_positions(
            session, [job.id for job in jobs if job.status == JobStatus.QUEUED]
        )
        return JobList(
            items=[render_job(job, positions.get(job.id)) for job in jobs],
            limit=limit,
            next=next_page(request, response, next_cursor),
        )


@router.get(
    "/{job_id}",
    response_model=JobRead,
    responses=error_responses(401, 404),
    summary="One job's status and results",
)
def get_job(job_id: JobId) -> JobRead:
    with read_session() as session:
        job = listing.get_job(session, job_id)
        return render_one_job(session, job)


@router.get(
    "/{job_id}/metrics",
    response_model=JobMetrics,
    responses=error_responses(401, 404, 422),
    summary="Per-epoch loss and accuracy",
)
def get_metrics(
    job_id: JobId,
    since_epoch: Annotated[int, Query(ge=0, le=10**6, description="Only epochs after this.")] = 0,
    max_points: Annotated[
        int,
        Query(
            ge=metrics.MIN_POINTS,
            le=metrics.MAX_JOB_POINTS,
            description="At most this many epochs: evenly spaced ones, always with the first, "
            "the last and the best (highest test accuracy).",
        ),
    ] = metrics.MAX_JOB_POINTS,
) -> JobMetrics:
    with read_session() as session:
        job = listing.get_job(session, job_id)
        rows = metrics.epoch_metrics(
            session, job_id, since_epoch=since_epoch, max_points=max_points
        )
        return JobMetrics.model_validate(
            {
                "job_id": job.id,
                "status": job.status,
                "ended": JobStatus(job.status).ended,
                "epochs_done": job.epochs_done,
                "epochs_total": job.epochs_total,
                "metrics": rows,
            },
            from_attributes=True,
        )


@router.patch(
    "/{job_id}",
    response_model=JobRead,
    responses=error_responses(400, 401, 403, 404, 409, 415, 422),
    summary="Change a queued job's priority",
)
def update_job(
    job_id: JobId, change: PriorityUpdate, session: SessionDep, identity: IdentityDep
) -> JobRead:
    """Only while the job is queued (409 job_not_queued after it has started); its
    queue_position follows at once. Only its owner or an admin (403 forbidden)."""
    job = lifecycle.set_priority(session, job_id, change.priority, actor=identity)
    return render_one_job(session, job)


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401, 403, 404, 409),
    summary="Delete a job that has ended, with its metrics and checkpoint files",
)
def delete_job(job_id: JobId, settings: SettingsDep, identity: IdentityDep) -> Response:
    """409 not_finished while it is queued or running (cancel it first). Only its owner or an
    admin (403 forbidden)."""
    retention.delete_job_now(settings, job_id, actor=identity)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{job_id}/cancel",
    response_model=JobRead,
    responses=error_responses(401, 403, 404, 409),
    summary="Cancel a queued or running job",
)
def cancel_job(job_id: JobId, session: SessionDep, identity: IdentityDep) -> JobRead:
    """A queued job never starts; a running one stops at the next batch and keeps its last
    checkpoint (its status reads `running` with `cancel_requested` until the worker stops).
    Only its owner or an admin (403 forbidden)."""
    return render_job(lifecycle.cancel_job(session, job_id, actor=identity))
