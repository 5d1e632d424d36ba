"""/experiments: submit a group of jobs, read them as one summary (JSON or CSV), cancel them."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from app.deps import IdentityDep, SessionDep, SettingsDep, read_session
from app.routes.common import error_responses, next_link, next_page, next_url, refuse_offset
from app.routes.params import ExperimentId, IdempotencyKey, OwnerQuery
from app.schemas.errors import ErrorRead
from app.schemas.experiments import (
    ExperimentJobRow,
    ExperimentLinks,
    ExperimentList,
    ExperimentMetricColumns,
    ExperimentMetrics,
    ExperimentPlotLinks,
    ExperimentRead,
    ReportFigures,
    SearchBest,
    SearchRead,
    SearchRung,
    SearchWarningRead,
)
from jobs import experiments, lifecycle, listing, metrics, retention, status_counts
from jobs.experiments import ExperimentSummary
from jobs.search import study
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
# The summary CSV reads this many jobs per transaction.
CSV_JOBS_PER_READ = 200
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
    jobs_next: str | None = None,
    last_event_id: int | None = None,
) -> ExperimentRead:
    status = experiments.counts_status(counts)
    return ExperimentRead(
        id=experiment.id,
        name=experiment.name,
        owner=experiment.owner,
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
        jobs_next=jobs_next,
        last_event_id=None if last_event_id is None else str(last_event_id),
        links=experiment_links(experiment.id),
    )


def _job_row(job: Job, experiment: Experiment, varying: list[str]) -> ExperimentJobRow:
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
        seconds_per_epoch=job.seconds_per_epoch,
        trial=job.trial_number,
        rung=job.rung,
        report=None if report is None else ReportFigures(**asdict(report)),
    )


def render_summary(summary: ExperimentSummary, jobs_next: str | None = None) -> ExperimentRead:
    """The experiment with its page of job rows; `jobs_next` the URL of the next page."""
    rows = [_job_row(job, summary.experiment, summary.varying) for job in summary.jobs]
    return render_experiment(
        summary.experiment,
        summary.counts,
        rows,
        summary.search,
        jobs_next,
        last_event_id=summary.last_event_id,
    )


def first_page(summary: ExperimentSummary) -> ExperimentRead:
    """The answer of a change to the experiment: its first page of jobs, by job id, and the URL
    of the next (a GET of the experiment)."""
    cursor = summary.next_cursor
    following = (
        None
        if cursor is None
        else f"/experiments/{summary.experiment.id}?" + urlencode({"cursor": cursor})
    )
    return render_summary(summary, following)


def _report_cells(row: ExperimentJobRow) -> list[Any]:
    """The report's figures for the row's block, in REPORT_COLUMNS order."""
    figures = row.report.model_dump() if row.report is not None else {}
    return [figures.get(column.removeprefix("report_")) for column in REPORT_COLUMNS]


@dataclass(frozen=True)
class SummaryCsv:
    """The columns of an experiment's summary CSV: the varying hyperparameters (a search's
    searched ones) get a column each, a search's rows their trial number and rung, and a report
    experiment's rows the figures the report published, as its page shows them beside the
    measured ones."""

    experiment: Experiment
    hyperparameters: list[str]
    after: tuple[str, ...]
    report: tuple[str, ...]

    @classmethod
    def of(cls, experiment: Experiment) -> SummaryCsv:
        varying = experiments.varying_fields(experiment.spec)
        searched = study.search_of(experiment.spec) is not None
        return cls(
            experiment,
            [name for name in varying if name not in ("block", "seed")],
            SUMMARY_COLUMNS_AFTER + (SEARCH_COLUMNS if searched else ()),
            REPORT_COLUMNS if experiment.preset == REPORT_PRESET else (),
        )

    def header(self) -> str:
        return _csv_line(
            [*SUMMARY_COLUMNS_BEFORE, *self.hyperparameters, *self.after, *self.report]
        )

    def lines(self, jobs: list[Job]) -> str:
        """The jobs' rows (None is written as an empty cell)."""
        varying = experiments.varying_fields(self.experiment.spec)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        for job in jobs:
            row = _job_row(job, self.experiment, varying)
            varied = [experiments.format_value(row.varied[name]) for name in self.hyperparameters]
            writer.writerow(
                [
                    *(getattr(row, column) for column in SUMMARY_COLUMNS_BEFORE),
                    *varied,
                    *(getattr(row, column) for column in self.after),
                    *(_report_cells(row) if self.report else ()),
                ]
            )
        return buffer.getvalue()


def _csv_line(cells: list[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(cells)
    return buffer.getvalue()


def summary_csv_chunks(experiment: Experiment, page: int | None = None) -> Iterator[str]:
    """The summary CSV a page of jobs at a time, by job id, each page read in a transaction of
    its own: memory and each read follow the page, and a job made meanwhile (a search's trial)
    is still listed, once."""
    columns = SummaryCsv.of(experiment)
    yield columns.header()
    cursor: str | None = ""
    while cursor is not None:
        with read_session() as session:
            jobs, cursor = listing.list_experiment_jobs(
                session, experiment.id, limit=page or CSV_JOBS_PER_READ, cursor=cursor or None
            )
        yield columns.lines(jobs)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ExperimentRead,
    responses={**error_responses(400, 401, 409, 413, 429, 503), 422: TOO_MANY_JOBS},
    summary="Submit an experiment: one job per block, grid combination and seed, or a search",
)
def submit_experiment(
    spec: ExperimentCreate,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    identity: IdentityDep,
    idempotency_key: IdempotencyKey = None,
) -> ExperimentRead:
    """Queue every job of the experiment, owned by the caller, in one transaction (all or
    none); the jobs' ids are sent to the workers once it has committed. At most 1,000 jobs.
    429 quota_exceeded when its jobs (a search's first trials) would leave the caller more
    queued jobs than their limit."""
    made = experiments.create_experiment(
        session, spec, settings=settings, idempotency_key=idempotency_key, owner=identity.owner
    )
    experiment = made.experiment
    if not made.created:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/experiments/{experiment.id}"
    return first_page(experiments.summarize(session, experiment))


@router.get(
    "",
    response_model=ExperimentList,
    responses=error_responses(401, 422),
    summary="List experiments, newest first (without their job rows)",
)
def list_experiments(
    request: Request,
    response: Response,
    owner: OwnerQuery = None,
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
        page, next_cursor = listing.list_experiments(
            session, owner=owner, limit=limit, cursor=cursor
        )
        counts = status_counts.experiment_counts(session, [item.id for item in page])
        return ExperimentList(
            items=[render_experiment(item, counts[item.id]) for item in page],
            limit=limit,
            next=next_page(request, response, next_cursor),
        )


CURSOR_DESCRIPTION = (
    "Where the page starts: the `cursor` of the page before's next URL (`jobs_next`, `next`). "
    "Opaque; the cursors of a sort and order serve the experiment's rows and its curves alike."
)
SortQuery = Annotated[
    ExperimentSort,
    Query(
        description="Column to sort the jobs by (block: plain, residual, mobile; status: "
        + ", ".join(JobStatus)
        + "); jobs without a value come last, ties by job id."
    ),
]
CursorQuery = Annotated[str | None, Query(max_length=200, description=CURSOR_DESCRIPTION)]


@router.get(
    "/{experiment_id}",
    response_model=ExperimentRead,
    responses=error_responses(401, 404, 422),
    summary="One experiment: its figures and a page of job rows with their results",
)
def get_experiment(
    request: Request,
    response: Response,
    experiment_id: ExperimentId,
    sort: SortQuery = "job_id",
    order: SortOrder = "asc",
    limit: Annotated[
        int,
        Query(
            ge=1,
            le=MAX_EXPERIMENT_JOBS,
            description=f"Job rows per page: {listing.EXPERIMENT_JOBS_PAGE} unless asked, "
            f"at most {MAX_EXPERIMENT_JOBS:,} (an experiment's most jobs).",
        ),
    ] = listing.EXPERIMENT_JOBS_PAGE,
    cursor: CursorQuery = None,
    offset: Annotated[str | None, Query(include_in_schema=False)] = None,
) -> ExperimentRead:
    """The status counts and every figure are kept as the jobs change, and the rows are a range
    of an index in the order asked, so the answer costs its page whatever the experiment's
    size. Follow `jobs_next` (or the Link header) for the next rows."""
    refuse_offset(offset)
    with read_session() as session:
        experiment = listing.get_experiment(session, experiment_id)
        summary = experiments.summarize(
            session, experiment, sort=sort, order=order, limit=limit, cursor=cursor
        )
        return render_summary(summary, next_page(request, response, summary.next_cursor))


MetricsFormat = Literal["rows", "columns"]
# The most bytes an answer of curves has unless the client asks for more.
CURVES_MAX_BYTES = 1_000_000
CURVES_MAX_BYTES_LIMIT = 32_000_000
# Room kept for the end of an answer of curves: `next`'s URL and the closing brackets.
_CURVES_TAIL_BYTES = 1_000


@router.get(
    "/{experiment_id}/metrics",
    response_model=ExperimentMetrics | ExperimentMetricColumns,
    responses=error_responses(401, 404, 422),
    summary="The jobs' per-epoch curves, downsampled, for overlaid plots, a page of jobs at a time",
)
def get_experiment_metrics(
    request: Request,
    experiment_id: ExperimentId,
    max_points: Annotated[
        int,
        Query(
            ge=metrics.MIN_POINTS,
            le=metrics.MAX_JOB_POINTS,
            description="At most this many epochs per job (fewer for large experiments).",
        ),
    ] = 100,
    format: Annotated[
        MetricsFormat,
        Query(
            description="rows: an object per epoch. columns: a list per metric, about half the "
            "bytes."
        ),
    ] = "rows",
    sort: SortQuery = "job_id",
    order: SortOrder = "asc",
    limit: Annotated[
        int,
        Query(ge=1, le=MAX_EXPERIMENT_JOBS, description="Jobs per page, at most."),
    ] = MAX_EXPERIMENT_JOBS,
    cursor: CursorQuery = None,
    max_bytes: Annotated[
        int,
        Query(
            ge=10_000,
            le=CURVES_MAX_BYTES_LIMIT,
            description="The page ends before the job whose curve would take the answer over "
            "this many bytes (a page always has at least one job).",
        ),
    ] = CURVES_MAX_BYTES,
    offset: Annotated[str | None, Query(include_in_schema=False)] = None,
) -> Response:
    """The experiment's jobs in the order asked, a page at a time: `limit` jobs, fewer when the
    next curve would take the answer over `max_bytes` (1 MB unless asked). Each page reads only
    its jobs' epoch rows. Follow `next` (or the Link header) for the rest."""
    refuse_offset(offset)
    with read_session() as session:
        experiment = listing.get_experiment(session, experiment_id)
        jobs = sum(
            status_counts.experiment_counts(session, [experiment.id])[experiment.id].values()
        )
        points = metrics.points_per_job(jobs, max_points)
        page = listing.experiment_job_keys(
            session, experiment.id, sort=sort, order=order, limit=limit, cursor=cursor
        )
        head = (
            f'{{"experiment_id":{experiment.id},"format":"{format}",'
            f'"points_per_job":{points},"jobs":['
        ).encode()
        fragments, next_cursor = _curves_within(
            session, page, points, format, max_bytes - len(head) - _CURVES_TAIL_BYTES
        )
    following = next_url(request, next_cursor)
    body = b"".join(
        [head, b",".join(fragments), b'],"next":', json.dumps(following).encode(), b"}"]
    )
    links = None if following is None else {"Link": next_link(following)}
    return Response(body, media_type="application/json", headers=links)


# About the most bytes one epoch of a curve takes in each format, to read as many jobs' curves
# at once as an answer can hold.
_POINT_BYTES = {"rows": 200, "columns": 90}


def _curves_within(
    session: Session, page: listing.JobKeys, points: int, format: MetricsFormat, room: int
) -> tuple[list[bytes], str | None]:
    """The page's curves as JSON, in its order, as many as fit in `room` bytes (at least one),
    read a batch of jobs at a time, and the cursor of the page after the last one given."""
    fragments: list[bytes] = []
    used = 0
    batch = max(1, room // (points * _POINT_BYTES[format]))
    for start in range(0, len(page.ids), batch):
        chunk = page.ids[start : start + batch]
        curves = metrics.job_curves(session, chunk, points)
        for offset, job_id in enumerate(chunk, start=start):
            rows = curves.get(job_id)
            if not rows:
                continue
            fragment = _curve_json(job_id, rows, format)
            if fragments and used + len(fragment) + 1 > room:
                return fragments, page.cursor_after(offset - 1)
            fragments.append(fragment)
            used += len(fragment) + 1
    return fragments, page.next_cursor


def _curve_json(job_id: int, points: list[metrics.Point], format: MetricsFormat) -> bytes:
    """One job's curve as JSON, the floats that JSON cannot hold (a diverged loss) as null."""
    curve: dict[str, Any] = {"job_id": job_id}
    if format == "rows":
        curve["metrics"] = [dict(zip(metrics.METRIC_NAMES, point, strict=True)) for point in points]
    else:
        curve.update(zip(metrics.METRIC_NAMES, map(list, zip(*points, strict=True)), strict=True))
    text = json.dumps(curve, separators=(",", ":"))
    # Only numbers are written after the keys, so these words are Python's non-finite floats.
    for word in ("-Infinity", "Infinity", "NaN"):
        text = text.replace(word, "null")
    return text.encode()


@router.get(
    "/{experiment_id}/summary.csv",
    response_class=Response,
    responses={**CSV_RESPONSE, **error_responses(401, 404)},
    summary="The experiment's job rows as CSV",
)
def get_summary_csv(experiment_id: ExperimentId) -> Response:
    """Streamed a page of jobs at a time, by job id."""
    with read_session() as session:
        experiment = listing.get_experiment(session, experiment_id)
    return StreamingResponse(
        summary_csv_chunks(experiment),
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
    responses=error_responses(400, 401, 403, 404, 415, 422, 429),
    summary="Change the experiment's priority, or extend a search with more trials",
)
def update_experiment(
    experiment_id: ExperimentId,
    change: ExperimentUpdate,
    session: SessionDep,
    settings: SettingsDep,
    identity: IdentityDep,
) -> ExperimentRead:
    """`priority`: its queued jobs and the trials waiting at a rung take it, and so do the
    trials a search makes later; jobs already running or ended keep theirs. `max_trials`: a
    search's trials in all, raised to extend it (while it runs or after it ended); the new
    trials are made at once as far as `max_concurrent` allows. 422 naming `max_trials` below
    the trials made, above a grid's points, or for an experiment that is no search. Only its
    owner or an admin (403 forbidden); new trials count against the owner's queued-jobs quota
    (429)."""
    if change.priority is not None:
        lifecycle.set_experiment_priority(session, experiment_id, change.priority, actor=identity)
    if change.max_trials is not None:
        experiments.extend_search(
            session, experiment_id, change.max_trials, actor=identity, settings=settings
        )
    experiment = listing.get_experiment(session, experiment_id)
    session.refresh(experiment)
    return first_page(experiments.summarize(session, experiment))


@router.post(
    "/{experiment_id}/resume",
    response_model=ExperimentRead,
    responses=error_responses(401, 403, 404, 409, 422, 429),
    summary="Resume a cancelled search",
)
def resume_experiment(
    experiment_id: ExperimentId, session: SessionDep, settings: SettingsDep, identity: IdentityDep
) -> ExperimentRead:
    """The trials its cancel stopped are made again (each in its place: a grid's point, a
    random draw), up to `max_trials`; the ended ones keep their results. 409 not_resumable when
    the search was not cancelled; 422 for an experiment that is no search. Only its owner or
    an admin (403 forbidden)."""
    experiments.resume_search(session, experiment_id, actor=identity, settings=settings)
    experiment = listing.get_experiment(session, experiment_id)
    session.refresh(experiment)
    return first_page(experiments.summarize(session, experiment))


@router.delete(
    "/{experiment_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401, 403, 404, 409),
    summary="Delete an experiment whose jobs have all ended, with its jobs and their files",
)
def delete_experiment(
    experiment_id: ExperimentId, settings: SettingsDep, identity: IdentityDep
) -> Response:
    """409 not_finished while any of its jobs is queued or running (cancel it first). Only its
    owner or an admin (403 forbidden)."""
    retention.delete_experiment_now(settings, experiment_id, actor=identity)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{experiment_id}/cancel",
    response_model=ExperimentRead,
    responses=error_responses(401, 403, 404, 409),
    summary="Cancel every job of the experiment that has not ended",
)
def cancel_experiment(
    experiment_id: ExperimentId, session: SessionDep, identity: IdentityDep
) -> ExperimentRead:
    """Each job as POST /jobs/{id}/cancel would: a queued one never starts, a running one stops
    at the next batch. 409 when every job had already ended. Only its owner or an admin (403
    forbidden)."""
    experiment = experiments.cancel_experiment(session, experiment_id, actor=identity)
    return first_page(experiments.summarize(session, experiment))
