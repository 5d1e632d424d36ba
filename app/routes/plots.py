"""PNG plots: one job's loss and accuracy, and several jobs compared on one chart."""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from werkzeug.http import parse_etags

from app.deps import ReadSessionDep
from app.errors import InvalidRequest, JobNotFound, NotFound
from app.plots import METRIC_LABELS, Series, line_chart_png
from app.routes.common import error_responses
from app.routes.params import MAX_JOB_ID, JobId
from app.services import jobs as job_service
from jobs.tables import Job, JobStatus

router = APIRouter(tags=["plots"])
PNG: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "A PNG image."},
    304: {"description": "Not modified: the If-None-Match tag is the current image's ETag."},
}
JOB_PLOTS = {
    "loss.png": ("train_loss", "Training loss"),
    "accuracy.png": ("test_accuracy", "Test accuracy"),
}
MAX_COMPARED_JOBS = 12
JOB_ID_LIST = f"^[1-9][0-9]*(,[1-9][0-9]*){{0,{MAX_COMPARED_JOBS - 1}}}$"
FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)

# The schema lists the names; the route checks them itself, so that a wrong one is a 404 naming
# the valid ones rather than pydantic's message.
PlotName = Annotated[
    str, Path(description="Which plot.", json_schema_extra={"enum": list(JOB_PLOTS)})
]


def png_response(request: Request, content: bytes) -> Response:
    """The PNG with a strong ETag of its bytes; 304 when the client already holds them (the
    plot changes only when an epoch lands, so pollers mostly revalidate)."""
    etag = hashlib.sha256(content).hexdigest()[:32]
    headers = {"Cache-Control": "no-cache", "ETag": f'"{etag}"'}
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and parse_etags(if_none_match).contains_weak(etag):
        return Response(status_code=304, headers=headers)
    return Response(content, media_type="image/png", headers=headers)


def _empty_note(jobs: list[Job]) -> str:
    still_running = any(job.status not in FINISHED for job in jobs)
    return "no epochs recorded yet" if still_running else "no epochs recorded"


@router.get(
    "/jobs/{job_id}/plots/{plot_name}",
    response_class=Response,
    responses={**PNG, **error_responses(401, 404)},
    summary="loss.png (training loss) or accuracy.png (test accuracy) per epoch",
)
def job_plot(
    request: Request, job_id: JobId, plot_name: PlotName, session: ReadSessionDep
) -> Response:
    if plot_name not in JOB_PLOTS:
        raise NotFound(f"No plot {plot_name!r}; there are {', '.join(JOB_PLOTS)}.")
    metric, title = JOB_PLOTS[plot_name]
    job = job_service.get_job(session, job_id)
    rows = job_service.epoch_metrics(session, job_id)
    series = Series("", [row.epoch for row in rows], [getattr(row, metric) for row in rows])
    content = line_chart_png(
        [series],
        metric=metric,
        title=f"{title} — job {job.id} ({job.block})",
        empty_note=_empty_note([job]),
    )
    return png_response(request, content)


@router.get(
    "/plots/compare.png",
    response_class=Response,
    responses={**PNG, **error_responses(401, 404, 422)},
    summary="Several jobs on one chart, labelled by block",
)
def compare_plot(
    request: Request,
    session: ReadSessionDep,
    jobs: Annotated[
        str,
        Query(
            max_length=200,
            description=f"1 to {MAX_COMPARED_JOBS} comma-separated job ids, e.g. 1,2,3",
            examples=["1,2"],
            json_schema_extra={"pattern": JOB_ID_LIST},
        ),
    ],
    metric: Literal["train_loss", "test_accuracy", "test_loss", "train_accuracy"] = "train_loss",
) -> Response:
    # Checked here rather than by the Query's pattern, for a message that says what to send.
    if not re.fullmatch(JOB_ID_LIST, jobs):
        raise InvalidRequest(
            f"jobs must be 1 to {MAX_COMPARED_JOBS} comma-separated job ids (positive integers "
            f"without spaces), e.g. 1,2,3; got {jobs!r}."
        )
    compared = []
    for job_id in dict.fromkeys(int(part) for part in jobs.split(",")):
        if job_id > MAX_JOB_ID:  # no such job, and beyond the database's integer column
            raise JobNotFound(job_id)
        compared.append(job_service.get_job(session, job_id))
    series, without_epochs = [], []
    for job in compared:
        rows = job_service.epoch_metrics(session, job.id)
        label = f"{job.block} (job {job.id})"
        series.append(Series(label, [r.epoch for r in rows], [getattr(r, metric) for r in rows]))
        if not rows:
            without_epochs.append(job)
    title = f"{METRIC_LABELS[metric].removesuffix(' (%)')} by block"
    content = line_chart_png(
        series, metric=metric, title=title, empty_note=_empty_note(without_epochs)
    )
    return png_response(request, content)
