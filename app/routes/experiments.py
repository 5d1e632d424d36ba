"""/experiments: submit a group of jobs, read them as one summary (JSON or CSV), cancel them."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status

from app.deps import SessionDep, SettingsDep, read_session
from app.routes.common import error_responses, next_page, refuse_offset
from app.routes.params import ExperimentId, IdempotencyKey
from app.schemas.errors import ErrorRead
from app.schemas.experiments import (
    ExperimentJobRow,
    ExperimentLinks,
    ExperimentList,
    ExperimentMetrics,
    ExperimentPlotLinks,
    ExperimentRead,
    ReportFigures,
    SearchBest,
    SearchRead,
    SearchRung,
    SearchWarningRead,
)
from jobs import experiments, lifecycle, listing, metrics, retention
from jobs.experiments import ExperimentSummary
from jobs.search.study import SearchSummary
from jobs.specs import (
    MAX_EXPERIMENT_JOBS,
    REPORT_PRESET,
    ExperimentCreate,
    ExperimentSort,
    ExperimentUpdate,
    SortOrder,
)
from jobs.tables import Experiment, Job, JobStatus
from models.catalog import REPORT_RESULTS

router = APIRouter(prefix="/experiments", tags=["experiments"])

SUMMARY_COLUMNS_BEFORE = ("job_id", "block")
SUMMARY_COLUMNS_AFTER = (
    "seed",
    "status",
    "epochs_done",
    "epochs_total",
    "params",
    "macs",
    "best_test_accuracy",
    "final_test_accuracy",
    "final_train_loss",
    "seconds_per_epoch",
)
SEARCH_COLUMNS = ("trial", "rung")
# Preset "report": what the report published for the row's block (ReportFigures), "report_"
# and the figure's name; empty where it prints none.
REPORT_COLUMNS = tuple(f"report_{name}" for name in ReportFigures.model_fields)
CSV_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/csv": {"schema": {"type": "string"}}},
        "description": "One row per job: job_id, block, the varying hyperparameters (a "
        "search's searched ones), seed, status, epochs, params, MACs, accuracies, final loss, "
        "seconds per epoch; a search's rows then the trial number and rung; an experiment with "
        "the report preset then the report's published figures for the block (report_params, "
        "report_macs, report_final_test_accuracy, report_final_train_loss; empty where the "
        "report gives none).",
        "headers": {
            "Content-Disposition": {
                "description": 'attachment; filename="experiment-<id>-summary.csv"',
                "schema": {"type": "string"},
            }
        },
    }
}
TOO_MANY_JOBS: dict[str, Any] = {
    "model": ErrorRead,
    "description": "Invalid input; `fields` names each bad field. `too_many_jobs` when the "
    f"experiment would make more than {MAX_EXPERIMENT_JOBS:,} jobs (`x-max-jobs`): the number of "
    "blocks times the grid's combinations times the number of seeds.",
}


def experiment_links(experiment_id: int) -> ExperimentLinks:
    base = f"/experiments/{experiment_id}"
    return ExperimentLinks(
        self=base,
        summary_csv=f"{base}/summary.csv",
        events=f"{base}/events",
        cancel=f"{base}/cancel",
        plots=ExperimentPlotLinks(
            train_loss=f"{base}/plots/train_loss.png",
            train_accuracy=f"{base}/plots/train_accuracy.png",
            test_loss=f"{base}/plots/test_loss.png",
            test_accuracy=f"{base}/plots/test_accuracy.png",
            accuracy_vs_macs=f"{base}/plots/accuracy-vs-macs.png",
            accuracy_vs_params=f"{base}/plots/accuracy-vs-params.png",
        ),
    )


def render_search(search: SearchSummary) -> SearchRead:
    return SearchRead(
        max_trials=search.max_trials,
        trials_created=search.trials_created,
        best=None if search.best is None else SearchBest(**asdict(search.best)),
        rungs=[SearchRung(**asdict(rung)) for rung in search.rungs],
        epochs_spent=search.epochs_spent,
        epochs_full=search.epochs_full,
        paused=search.paused,
        settings=search.settings,
        warnings=[SearchWarningRead(**asdict(warning)) for warning in search.warnings],
    )


def render_experiment(
    experiment: Experiment,
    counts: dict[JobStatus, int],
    jobs: list[ExperimentJobRow] | None = None,
    search: SearchSummary | None = None,
) -> ExperimentRead:
    status = experiments.counts_status(counts)
    return ExperimentRead(
        id=experiment.id,
        name=experiment.name,
        preset=experiment.preset,
        tags=experiment.tags,
        spec=experiment.spec,
        created_at=experiment.created_at,
        priority=experiment.priority,
        status=status,
        ended=status.ended,
        status_counts=counts,
        job_count=sum(counts.values()),
        varying=experiments.varying_fields(experiment.spec),
        search=None if search is None else render_search(search),
        jobs=jobs or [],
        links=experiment_links(experiment.id),
    )


def _job_row(
    job: Job, experiment: Experiment, varying: list[str], seconds_per_epoch: float | None
) -> ExperimentJobRow:
    report = REPORT_RESULTS.get(job.block) if experiment.preset == REPORT_PRESET else None
    return ExperimentJobRow(
        job_id=job.id,
        block=job.block,
        varied=experiments.varied_values(job, varying),
        seed=job.spec["hyperparameters"]["seed"],
        status=job.status,
        ended=JobStatus(job.status).ended,
        epochs_done=job.epochs_done,
        epochs_total=job.epochs_total,
        params=job.params,
        macs=job.macs,
        best_test_accuracy=job.best_test_accuracy,
        final_test_accuracy=job.final_test_accuracy,
        final_train_loss=job.final_train_loss,
        seconds_per_epoch=seconds_per_epoch,
        trial=job.trial_number,
        rung=job.rung,
        report=None if report is None else ReportFigures(**asdict(report)),
    )


def render_summary(summary: ExperimentSummary) -> ExperimentRead:
    rows = [
        _job_row(job, summary.experiment, summary.varying, summary.seconds_per_epoch.get(job.id))
        for job in summary.jobs
    ]
    return render_experiment(summary.experiment, summary.counts, rows, summary.search)


def _report_cells(row: ExperimentJobRow) -> list[Any]:
    """The report's figures for the row's block, in REPORT_COLUMNS order."""
    figures = row.report.model_dump() if row.report is not None else {}
    return [figures.get(column.removeprefix("report_")) for column in REPORT_COLUMNS]


def summary_csv(summary: ExperimentRead) -> str:
    """The summary's rows as CSV; the varying hyperparameters (a search's searched ones) get a
    column each, a search's rows their trial number and rung, and a report experiment's rows
    the figures the report published, as its page shows them beside the measured ones."""
    hyperparameters = [name for name in summary.varying if name not in ("block", "seed")]
    after = SUMMARY_COLUMNS_AFTER + (SEARCH_COLUMNS if summary.search is not None else ())
    report = REPORT_COLUMNS if summary.preset == REPORT_PRESET else ()
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*SUMMARY_COLUMNS_BEFORE, *hyperparameters, *after, *report])
    for row in summary.jobs:
        varied = [experiments.format_value(row.varied[name]) for name in hyperparameters]
        writer.writerow(
            [
                *(getattr(row, column) for column in SUMMARY_COLUMNS_BEFORE),
                *varied,
                *(getattr(row, column) for column in after),
                *(_report_cells(row) if report else ()),
            ]
        )  # None is written as an empty cell
    return buffer.getvalue()


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ExperimentRead,
    responses={**error_responses(400, 401, 409, 413, 503), 422: TOO_MANY_JOBS},
    summary="Submit an experiment: one job per block, grid combination and seed, or a search",
)
def submit_experiment(
    spec: ExperimentCreate,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> ExperimentRead:
    """Queue every job of the experiment in one transaction (all or none); the jobs' ids are
    sent to the workers once it has committed. At most 1,000 jobs."""
    made = experiments.create_experiment(
        session, spec, settings=settings, idempotency_key=idempotency_key
    )
    experiment = made.experiment
    if not made.created:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/experiments/{experiment.id}"
    return render_summary(experiments.summarize(session, experiment))


@router.get(
    "",
    response_model=ExperimentList,
    responses=error_responses(401, 422),
    summary="List experiments, newest first (without their job rows)",
)
def list_experiments(
    request: Request,
    response: Response,
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
) -> ExperimentList:
    refuse_offset(offset)
    with read_session() as session:
        page, next_cursor = listing.list_experiments(session, limit=limit, cursor=cursor)
        counts = experiments.status_counts(session, [item.id for item in page])
        return ExperimentList(
            items=[render_experiment(item, counts[item.id]) for item in page],
            limit=limit,
            next=next_page(request, response, next_cursor),
        )


@router.get(
    "/{experiment_id}",
    response_model=ExperimentRead,
    responses=error_responses(401, 404, 422),
    summary="One experiment: a row per job with its results",
)
def get_experiment(
    experiment_id: ExperimentId,
    sort: Annotated[
        ExperimentSort,
        Query(
            description="Column to sort the jobs by (block: plain, residual, mobile; status: "
            "queued, running, succeeded, failed, cancelled, pruned); jobs without a value come "
            "last."
        ),
    ] = "job_id",
    order: SortOrder = "asc",
) -> ExperimentRead:
    with read_session() as session:
        experiment = listing.get_experiment(session, experiment_id)
        return render_summary(experiments.summarize(session, experiment, sort=sort, order=order))


@router.get(
    "/{experiment_id}/metrics",
    response_model=ExperimentMetrics,
    responses=error_responses(401, 404, 422),
    summary="Every job's per-epoch curve, downsampled, for overlaid plots",
)
def get_experiment_metrics(
    experiment_id: ExperimentId,
    max_points: Annotated[
        int,
        Query(
            ge=metrics.MIN_POINTS,
            le=metrics.MAX_JOB_POINTS,
            description="At most this many epochs per job (fewer for large experiments).",
        ),
    ] = 100,
) -> ExperimentMetrics:
    with read_session() as session:
        experiment = listing.get_experiment(session, experiment_id)
        curves = metrics.epoch_metrics_by_job(session, experiment.id, max_points=max_points)
        jobs = experiments.status_counts(session, [experiment.id])[experiment.id]
        return ExperimentMetrics.model_validate(
            {
                "experiment_id": experiment.id,
                "points_per_job": metrics.points_per_job(sum(jobs.values()), max_points),
                "jobs": [
                    {"job_id": job_id, "metrics": rows} for job_id, rows in sorted(curves.items())
                ],
            },
            from_attributes=True,
        )


@router.get(
    "/{experiment_id}/summary.csv",
    response_class=Response,
    responses={**CSV_RESPONSE, **error_responses(401, 404)},
    summary="The experiment's job rows as CSV",
)
def get_summary_csv(experiment_id: ExperimentId) -> Response:
    with read_session() as session:
        experiment = listing.get_experiment(session, experiment_id)
        summary = render_summary(experiments.summarize(session, experiment))
    return Response(
        summary_csv(summary),
        media_type="text/csv",  # Starlette adds "; charset=utf-8"
        headers={
            "Content-Disposition": (
                f'attachment; filename="experiment-{experiment.id}-summary.csv"'
            ),
            "Cache-Control": "no-cache",
        },
    )


@router.patch(
    "/{experiment_id}",
    response_model=ExperimentRead,
    responses=error_responses(400, 401, 404, 415, 422),
    summary="Change the experiment's priority, or extend a search with more trials",
)
def update_experiment(
    experiment_id: ExperimentId, change: ExperimentUpdate, session: SessionDep
) -> ExperimentRead:
    """`priority`: its queued jobs and the trials waiting at a rung take it, and so do the
    trials a search makes later; jobs already running or ended keep theirs. `max_trials`: a
    search's trials in all, raised to extend it (while it runs or after it ended); the new
    trials are made at once as far as `max_concurrent` allows. 422 naming `max_trials` below
    the trials made, above a grid's points, or for an experiment that is no search."""
    if change.priority is not None:
        lifecycle.set_experiment_priority(session, experiment_id, change.priority)
    if change.max_trials is not None:
        experiments.extend_search(session, experiment_id, change.max_trials)
    experiment = listing.get_experiment(session, experiment_id)
    session.refresh(experiment)
    return render_summary(experiments.summarize(session, experiment))


@router.post(
    "/{experiment_id}/resume",
    response_model=ExperimentRead,
    responses=error_responses(401, 404, 409, 422),
    summary="Resume a cancelled search",
)
def resume_experiment(experiment_id: ExperimentId, session: SessionDep) -> ExperimentRead:
    """The trials its cancel stopped are made again (each in its place: a grid's point, a
    random draw), up to `max_trials`; the ended ones keep their results. 409 not_resumable when
    the search was not cancelled; 422 for an experiment that is no search."""
    experiments.resume_search(session, experiment_id)
    experiment = listing.get_experiment(session, experiment_id)
    session.refresh(experiment)
    return render_summary(experiments.summarize(session, experiment))


@router.delete(
    "/{experiment_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401, 404, 409),
    summary="Delete an experiment whose jobs have all ended, with its jobs and their files",
)
def delete_experiment(experiment_id: ExperimentId, settings: SettingsDep) -> Response:
    """409 not_finished while any of its jobs is queued or running (cancel it first)."""
    retention.delete_experiment_now(settings, experiment_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{experiment_id}/cancel",
    response_model=ExperimentRead,
    responses=error_responses(401, 404, 409),
    summary="Cancel every job of the experiment that has not ended",
)
def cancel_experiment(experiment_id: ExperimentId, session: SessionDep) -> ExperimentRead:
    """Each job as POST /jobs/{id}/cancel would: a queued one never starts, a running one stops
    at the next batch. 409 when every job had already ended."""
    experiment = experiments.cancel_experiment(session, experiment_id)
    return render_summary(experiments.summarize(session, experiment))
