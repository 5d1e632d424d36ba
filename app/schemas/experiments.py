"""What the API answers about experiments: one with its job rows (and its search), a page of
them, their curves."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.jobs import (
    ENDED_DESCRIPTION,
    JOB_EXAMPLE,
    NEXT_DESCRIPTION,
    EpochMetricRead,
)
from jobs.tables import JobStatus

StatusCounts = dict[JobStatus, int]


class JobCurve(BaseModel):
    job_id: int
    metrics: list[EpochMetricRead]


class JobCurveColumns(BaseModel):
    """One job's curve column by column: the i-th value of each list is one epoch's."""

    job_id: int
    epoch: list[int]
    train_loss: list[float | None]
    train_accuracy: list[float | None]
    test_loss: list[float | None]
    test_accuracy: list[float | None]
    learning_rate: list[float | None]
    seconds: list[float | None]
    images_per_second: list[float | None]


POINTS_PER_JOB_DESCRIPTION = (
    "The most epochs given per job: max_points, or less so that the curves of all the "
    "experiment's jobs stay within 100,000 points. Each curve keeps its first, last and best "
    "epoch."
)
METRICS_JOBS_DESCRIPTION = (
    "The jobs of this page that have recorded epochs, in the page's order (job id by default). "
    "A page holds `limit` jobs, fewer when the next job's curve would take the answer over "
    "`max_bytes` (never none)."
)
METRICS_NEXT_DESCRIPTION = (
    'The next page of curves (also in the Link header, rel="next"); null after the last job. '
    "Its `cursor` is opaque: pass it back unchanged."
)


class ExperimentMetrics(BaseModel):
    """Every job's curve, an object per epoch (`format=rows`, the default)."""

    experiment_id: int
    format: Literal["rows"] = "rows"
    points_per_job: int = Field(description=POINTS_PER_JOB_DESCRIPTION)
    jobs: list[JobCurve] = Field(description=METRICS_JOBS_DESCRIPTION)
    next: str | None = Field(None, description=METRICS_NEXT_DESCRIPTION)


class ExperimentMetricColumns(BaseModel):
    """Every job's curve, a list per metric (`format=columns`): about half the bytes of rows."""

    experiment_id: int
    format: Literal["columns"] = "columns"
    points_per_job: int = Field(description=POINTS_PER_JOB_DESCRIPTION)
    jobs: list[JobCurveColumns] = Field(description=METRICS_JOBS_DESCRIPTION)
    next: str | None = Field(None, description=METRICS_NEXT_DESCRIPTION)


class ReportFigures(BaseModel):
    params: int | None = Field(description="As printed in the report; null where it gives none.")
    macs: int | None = Field(description="As printed in the report; null where it gives none.")
    final_test_accuracy: float = Field(description="Fraction in [0, 1].")
    final_train_loss: float


class ExperimentJobRow(BaseModel):
    job_id: int
    block: str
    varied: dict[str, Any] = Field(
        description="This job's value of each of the experiment's varying fields."
    )
    seed: int
    status: JobStatus
    ended: bool = Field(description=ENDED_DESCRIPTION)
    epochs_done: int
    epochs_total: int
    params: int
    macs: int
    best_test_accuracy: float | None
    final_test_accuracy: float | None
    final_train_loss: float | None
    seconds_per_epoch: float | None = Field(description="Mean of the job's recorded epochs.")
    trial: int | None = Field(None, description="A search's trial number.")
    rung: int | None = Field(None, description="asha: the highest rung the trial reached.")
    report: ReportFigures | None = Field(
        None, description='The report\'s figures for this block (preset "report" only).'
    )


class ExperimentPlotLinks(BaseModel):
    train_loss: str
    train_accuracy: str
    test_loss: str
    test_accuracy: str
    accuracy_vs_macs: str
    accuracy_vs_params: str


class ExperimentLinks(BaseModel):
    self: str
    summary_csv: str
    events: str
    cancel: str
    plots: ExperimentPlotLinks


_EXPERIMENT_EXAMPLE: dict[str, Any] = {
    "id": 1,
    "name": "report",
    "owner": "ada",
    "preset": "report",
    "tags": [],
    "spec": {
        "name": "report",
        "preset": "report",
        "blocks": ["plain", "residual", "mobile"],
        "dataset": "cifar100",
        "hyperparameters": JOB_EXAMPLE["spec"]["hyperparameters"],
        "grid": {},
        "seeds": None,
        "train_samples": None,
        "test_samples": None,
        "tags": [],
    },
    "created_at": "2026-11-27T08:00:00Z",
    "priority": 0,
    "status": "running",
    "ended": False,
    "status_counts": {"queued": 2, "running": 1, "succeeded": 0, "failed": 0, "cancelled": 0},
    "job_count": 3,
    "varying": ["block"],
    "jobs_next": None,
    "last_event_id": "9",
    "jobs": [
        {
            "job_id": 1,
            "block": "plain",
            "varied": {"block": "plain"},
            "seed": 0,
            "status": "running",
            "ended": False,
            "epochs_done": 12,
            "epochs_total": 100,
            "params": 11050212,
            "macs": 551979108,
            "best_test_accuracy": 0.5512,
            "final_test_accuracy": 0.5436,
            "final_train_loss": 1.0231,
            "seconds_per_epoch": 12.3,
            "report": {
                "params": 11050000,
                "macs": 550000000,
                "final_test_accuracy": 0.7055,
                "final_train_loss": 0.014,
            },
        }
    ],
    "links": {
        "self": "/experiments/1",
        "summary_csv": "/experiments/1/summary.csv",
        "events": "/experiments/1/events",
        "cancel": "/experiments/1/cancel",
        "plots": {
            "train_loss": "/experiments/1/plots/train_loss.png",
            "train_accuracy": "/experiments/1/plots/train_accuracy.png",
            "test_loss": "/experiments/1/plots/test_loss.png",
            "test_accuracy": "/experiments/1/plots/test_accuracy.png",
            "accuracy_vs_macs": "/experiments/1/plots/accuracy-vs-macs.png",
            "accuracy_vs_params": "/experiments/1/plots/accuracy-vs-params.png",
        },
    },
}


class SearchBest(BaseModel):
    job_id: int
    trial: int
    params: dict[str, Any]
    value: float = Field(description="The objective's value at the trial's last epoch.")


class SearchRung(BaseModel):
    epochs: int = Field(description="Epochs a trial has trained when it reaches the rung.")
    bracket: int | None = Field(None, description="hyperband: the bracket the rung belongs to.")
    reached: int = Field(description="Trials that reached it.")
    promoted: int = Field(description="Trials that reached it and went on.")
    stopped: int = Field(0, description="Trials stopped there.")
    waiting: int = Field(0, description="hyperband: trials paused there, waiting for the rest.")
    cutoff: float | None = Field(
        description="The value a trial at the rung must match to go on (the worst of the best "
        "1/reduction_factor there), less the noise margin."
    )
    margin: float | None = Field(
        None, description="The noise margin of the rung's last decision (see the trials)."
    )
    decided: bool = Field(False, description="Whether any trial was judged there yet.")


class SearchWarningRead(BaseModel):
    code: Literal["cutoff_at_chance", "trials_tie"] = Field(
        description="cutoff_at_chance: a rung's cutoff is within the noise of an accuracy no "
        "better than chance; trials_tie: most trials tied with a rung's cutoff. Either way the "
        "rung came before the curves separated."
    )
    rung_epochs: int | None
    message: str


class SearchRead(BaseModel):
    """Where a search stands; the counts per status are the experiment's `status_counts`."""

    max_trials: int
    trials_created: int
    best: SearchBest | None = Field(description="The succeeded trial with the best objective.")
    rungs: list[SearchRung] = Field(
        description="The pruner's rungs (hyperband: of each bracket); empty for median and none."
    )
    epochs_spent: int = Field(description="Epochs the trials actually trained.")
    epochs_full: int = Field(description="max_trials x hyperparameters.epochs: with no pruning.")
    paused: int = Field(0, description="Trials waiting at a rung.")
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="The sampler's and the pruner's settings as they act, defaults filled in "
        "(hyperband: its brackets).",
    )
    warnings: list[SearchWarningRead] = Field(
        default_factory=list,
        description="What the decisions suggest about the settings (a first rung too early).",
    )


class ExperimentRead(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_EXPERIMENT_EXAMPLE]})

    id: int
    name: str
    owner: str | None = Field(
        None, description="Who submitted it (`admin`: the API key); null without accounts."
    )
    preset: Literal["report"] | None
    tags: list[str]
    spec: dict[str, Any] = Field(description="The submitted experiment, defaults filled in.")
    created_at: datetime
    priority: int = Field(description="The priority its jobs were given.")
    status: JobStatus = Field(
        description="running if any job runs; else queued if any is queued; else succeeded if "
        "all succeeded or were pruned; else failed if any failed; else cancelled."
    )
    ended: bool = Field(description="True once every job has ended.")
    status_counts: StatusCounts = Field(description="How many jobs have each status.")
    job_count: int
    varying: list[str] = Field(
        description="The spec fields whose value differs between the jobs: block, grid "
        "hyperparameters, seed; in a search, each searched field."
    )
    search: SearchRead | None = Field(
        None, description="A search's progress; null for a grid and in listings."
    )
    jobs: list[ExperimentJobRow] = Field(
        description="A page of the experiment's jobs in the order asked (`sort`, `order`): "
        "`limit` of them, 100 unless asked (at most 1,000). Empty in listings."
    )
    jobs_next: str | None = Field(
        None,
        description="The next page of `jobs` (a GET of the experiment with its `cursor`; also "
        'in the Link header, rel="next", of GET /experiments/{id}); null on the last page '
        "and in listings.",
    )
    last_event_id: str | None = Field(
        None,
        description="The number of the experiment's newest event when this was read: sent as "
        "Last-Event-ID (or last_event_id) to GET /experiments/{id}/events, the stream sends "
        "only what happened since. Null in listings.",
    )
    links: ExperimentLinks


class ExperimentList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [{**_EXPERIMENT_EXAMPLE, "jobs": [], "last_event_id": None}],
                    "limit": 50,
                    "next": None,
                }
            ]
        }
    )

    items: list[ExperimentRead]
    limit: int
    next: str | None = Field(description=NEXT_DESCRIPTION)
