"""PNG plots: one job's loss and accuracy, and several jobs compared on one chart."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from app.deps import ReadSessionDep
from app.errors import InvalidRequest, NotFound
from app.plots import METRIC_LABELS, Series, line_chart_png
from app.routes.common import error_responses
from app.routes.jobs import JobId
from app.services import jobs as job_service

router = APIRouter(tags=["plots"])
PNG = {200: {"content": {"image/png": {}}, "description": "A PNG image."}}
JOB_PLOTS = {
    "loss.png": ("train_loss", "Training loss"),
    "accuracy.png": ("test_accuracy", "Test accuracy"),
}
MAX_COMPARED_JOBS = 12


def _png(content: bytes) -> Response:
    return Response(content, media_type="image/png", headers={"Cache-Control": "no-cache"})


@router.get(
    "/jobs/{job_id}/plots/{plot_name}",
    response_class=Response,
    responses={**PNG, **error_responses(401, 404)},
    summary="loss.png (training loss) or accuracy.png (test accuracy) per epoch",
)
def job_plot(job_id: JobId, plot_name: str, session: ReadSessionDep) -> Response:
    if plot_name not in JOB_PLOTS:
        raise NotFound(f"No plot {plot_name!r}; there are {', '.join(JOB_PLOTS)}.")
    metric, title = JOB_PLOTS[plot_name]
    job = job_service.get_job(session, job_id)
    rows = job_service.epoch_metrics(session, job_id)
    series = Series("", [row.epoch for row in rows], [getattr(row, metric) for row in rows])
    return _png(
        line_chart_png([series], metric=metric, title=f"{title} — job {job.id} ({job.block})")
    )


@router.get(
    "/plots/compare.png",
    response_class=Response,
    responses={**PNG, **error_responses(401, 404, 422)},
    summary="Several jobs on one chart, labelled by block",
)
def compare_plot(
    session: ReadSessionDep,
    jobs: Annotated[
        str,
        Query(max_length=200, description="Comma-separated job ids, e.g. 1,2,3", examples=["1,2"]),
    ],
    metric: Literal["train_loss", "test_accuracy", "test_loss", "train_accuracy"] = "train_loss",
) -> Response:
    try:
        job_ids = [int(part) for part in jobs.split(",") if part.strip()]
    except ValueError:
        raise InvalidRequest(f"jobs must be comma-separated job ids, got {jobs!r}.") from None
    if not job_ids or len(job_ids) > MAX_COMPARED_JOBS or min(job_ids) < 1:
        raise InvalidRequest(
            f"jobs must name 1 to {MAX_COMPARED_JOBS} job ids (positive integers)."
        )
    series = []
    for job_id in dict.fromkeys(job_ids):
        job = job_service.get_job(session, job_id)
        rows = job_service.epoch_metrics(session, job_id)
        label = f"{job.block} (job {job.id})"
        series.append(Series(label, [r.epoch for r in rows], [getattr(r, metric) for r in rows]))
    title = f"{METRIC_LABELS[metric].removesuffix(' (%)')} by block"
    return _png(line_chart_png(series, metric=metric, title=title))
