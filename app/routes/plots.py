"""PNG plots: one job's loss and accuracy, several jobs compared on one chart, and an
experiment's jobs per epoch and against network size."""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from werkzeug.http import parse_etags

from app.deps import read_session
from app.errors import InvalidRequest, NotFound
from app.plots import METRIC_LABELS, Point, Series, line_chart_png, png_bytes, scatter_chart
from app.routes.common import error_responses
from app.routes.params import MAX_JOB_ID, ExperimentId, JobId
from jobs.errors import JobNotFound
from jobs.experiments import experiment_jobs, job_labels
from jobs.listing import get_experiment, get_job
from jobs.metrics import epoch_metrics, epoch_metrics_by_job
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

# An experiment's plots: a line per job for each metric, and best test accuracy against size.
EXPERIMENT_METRIC_PLOTS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
EXPERIMENT_SIZE_PLOTS = {
    "accuracy-vs-macs": ("macs", "MACs per image (millions, log scale)", "MACs"),
    "accuracy-vs-params": ("params", "Parameters (millions, log scale)", "parameters"),
}
EXPERIMENT_PLOTS = (*EXPERIMENT_METRIC_PLOTS, *EXPERIMENT_SIZE_PLOTS)

# The schema lists the names; the route checks them itself, so that a wrong one is a 404 naming
# the valid ones rather than pydantic's message.
PlotName = Annotated[
    str, Path(description="Which plot.", json_schema_extra={"enum": list(JOB_PLOTS)})
]
ExperimentPlotName = Annotated[
    str,
    Path(
        description="Which plot: a metric per epoch (a line per job), or best test accuracy "
        "against MACs or parameters (a point per job).",
        json_schema_extra={"enum": list(EXPERIMENT_PLOTS)},
    ),
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
    still_running = any(not JobStatus(job.status).ended for job in jobs)
    return "no epochs recorded yet" if still_running else "no epochs recorded"


@router.get(
    "/jobs/{job_id}/plots/{plot_name}",
    response_class=Response,
    responses={**PNG, **error_responses(401, 404)},
    summary="loss.png (training loss) or accuracy.png (test accuracy) per epoch",
)
def job_plot(request: Request, job_id: JobId, plot_name: PlotName) -> Response:
    if plot_name not in JOB_PLOTS:
        raise NotFound(f"No plot {plot_name!r}; there are {', '.join(JOB_PLOTS)}.")
    metric, title = JOB_PLOTS[plot_name]
    with read_session() as session:
        job = get_job(session, job_id)
        rows = epoch_metrics(session, job_id)
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
    job_ids = list(dict.fromkeys(int(part) for part in jobs.split(",")))
    for job_id in job_ids:
        if job_id > MAX_JOB_ID:  # no such job, and beyond the database's integer column
            raise JobNotFound(job_id)
    with read_session() as session:
        compared = [get_job(session, job_id) for job_id in job_ids]
        rows_by_job = {job.id: epoch_metrics(session, job.id) for job in compared}
    series, without_epochs = [], []
    for job in compared:
        rows = rows_by_job[job.id]
        label = f"{job.block} (job {job.id})"
        series.append(Series(label, [r.epoch for r in rows], [getattr(r, metric) for r in rows]))
        if not rows:
            without_epochs.append(job)
    title = f"{METRIC_LABELS[metric].removesuffix(' (%)')} by block"
    content = line_chart_png(
        series, metric=metric, title=title, empty_note=_empty_note(without_epochs)
    )
    return png_response(request, content)


@router.get(
    "/experiments/{experiment_id}/plots/{plot}.png",
    response_class=Response,
    responses={**PNG, **error_responses(401, 404)},
    summary="An experiment's jobs on one chart: a metric per epoch, or accuracy against size",
)
def experiment_plot(
    request: Request, experiment_id: ExperimentId, plot: ExperimentPlotName
) -> Response:
    """Each job is labelled by its block and varied values; jobs without epochs yet are named
    in a note instead of the legend."""
    if plot not in EXPERIMENT_PLOTS:
        names = ", ".join(f"{name}.png" for name in EXPERIMENT_PLOTS)
        raise NotFound(f"No plot {plot + '.png'!r}; there are {names}.")
    with read_session() as session:
        experiment = get_experiment(session, experiment_id)
        jobs = experiment_jobs(session, experiment.id)
        metrics = (
            epoch_metrics_by_job(session, experiment.id) if plot in EXPERIMENT_METRIC_PLOTS else {}
        )
    labels = job_labels(experiment, jobs)
    if plot in EXPERIMENT_METRIC_PLOTS:
        series = [
            Series(
                labels[job.id],
                [row.epoch for row in metrics.get(job.id, [])],
                [getattr(row, plot) for row in metrics.get(job.id, [])],
            )
            for job in jobs
        ]
        without_epochs = [job for job in jobs if not metrics.get(job.id)]
        content = line_chart_png(
            series,
            metric=plot,
            title=f"{METRIC_LABELS[plot].removesuffix(' (%)')} — experiment {experiment.id}",
            empty_note=_empty_note(without_epochs),
        )
    else:
        size, x_label, size_name = EXPERIMENT_SIZE_PLOTS[plot]
        points = [
            Point(
                labels[job.id],
                getattr(job, size) / 1e6,
                None if job.best_test_accuracy is None else job.best_test_accuracy * 100,
            )
            for job in jobs
        ]
        without_accuracy = [job for job in jobs if job.best_test_accuracy is None]
        content = png_bytes(
            scatter_chart(
                points,
                x_label=x_label,
                y_label="Best test accuracy (%)",
                title=f"Best test accuracy against {size_name} — experiment {experiment.id}",
                empty_note=_empty_note(without_accuracy),
            )
        )
    return png_response(request, content)
