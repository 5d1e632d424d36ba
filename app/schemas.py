"""Response models (pydantic v2): what the API answers. Every route declares one of these; the
request models are the core's (jobs.specs)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.tables import FailureReason, JobStatus

StatusCounts = dict[JobStatus, int]
ENDED_DESCRIPTION = (
    "True once the status is final ("
    + ", ".join(status for status in JobStatus if status.ended)
    + "): it never changes again."
)
FAILURE_REASONS_DESCRIPTION = (
    "Why the job failed: "
    + "; ".join(f"{reason}: {reason.description}" for reason in FailureReason)
    + "."
)


class JobLinks(BaseModel):
    self: str
    metrics: str
    loss_plot: str
    accuracy_plot: str
    checkpoints: str
    cancel: str


_JOB_EXAMPLE: dict[str, Any] = {
    "id": 1,
    "experiment_id": None,
    "name": "residual smoke run",
    "tags": ["demo"],
    "block": "residual",
    "dataset": "cifar100",
    "status": "running",
    "ended": False,
    "spec": {
        "block": "residual",
        "dataset": "cifar100",
        "hyperparameters": {
            "batch_size": 128,
            "learning_rate": 0.01,
            "epochs": 100,
            "optimizer": "sgd",
            "momentum": 0.9,
            "weight_decay": 0.0,
            "scheduler": "none",
            "step_size": 30,
            "gamma": 0.1,
            "augment": True,
            "seed": 0,
            "precision": "fp32",
            "compile": None,
        },
        "train_samples": None,
        "test_samples": None,
        "name": "residual smoke run",
        "tags": ["demo"],
    },
    "epochs_done": 12,
    "epochs_total": 100,
    "priority": 0,
    "queue_position": None,
    "best_test_accuracy": 0.5512,
    "final_test_accuracy": 0.5436,
    "final_train_loss": 1.0231,
    "params": 11224932,
    "macs": 558442596,
    "attempt": 1,
    "max_attempts": 3,
    "worker": "gpu0",
    "cancel_requested": False,
    "error_reason": None,
    "error": None,
    "created_at": "2026-11-27T08:00:00Z",
    "started_at": "2026-11-27T08:00:02Z",
    "finished_at": None,
    "heartbeat_at": "2026-11-27T08:04:10Z",
    "links": {
        "self": "/jobs/1",
        "metrics": "/jobs/1/metrics",
        "loss_plot": "/jobs/1/plots/loss.png",
        "accuracy_plot": "/jobs/1/plots/accuracy.png",
        "checkpoints": "/jobs/1/checkpoints",
        "cancel": "/jobs/1/cancel",
    },
}
_EPOCH_EXAMPLE: dict[str, Any] = {
    "epoch": 1,
    "train_loss": 3.872,
    "train_accuracy": 0.1043,
    "test_loss": 3.41,
    "test_accuracy": 0.1762,
    "learning_rate": 0.01,
    "seconds": 2.8,
    "images_per_second": 17857.1,
}


class TrialRead(BaseModel):
    """A search trial: what the sampler proposed and how far the pruner let it go."""

    number: int = Field(description="0, 1, ... in the order the search made its trials.")
    params: dict[str, Any] = Field(description="The sampled value of each searched field.")
    rung: int | None = Field(
        description="asha: the highest rung (0, 1, ...) the trial reached; null before the first."
    )
    prune_requested: bool = Field(description="The pruner stopped it (it ends `pruned`).")


class JobRead(BaseModel):
    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [_JOB_EXAMPLE]})

    id: int
    experiment_id: int | None = Field(None, description="The experiment the job belongs to.")
    name: str | None
    tags: list[str]
    block: str
    dataset: str
    status: JobStatus
    ended: bool = Field(description=ENDED_DESCRIPTION)
    spec: dict[str, Any] = Field(description="The submitted job spec, defaults filled in.")
    epochs_done: int
    epochs_total: int
    priority: int = Field(description="A free worker takes the highest priority first.")
    queue_position: int | None = Field(
        None, description="1 for the next job to start; only while queued."
    )
    best_test_accuracy: float | None
    final_test_accuracy: float | None
    final_train_loss: float | None
    params: int = Field(description="Trainable parameters of the network.")
    macs: int = Field(description="Multiply-accumulates for one 3x32x32 image (ptflops).")
    attempt: int
    max_attempts: int
    worker: str | None
    cancel_requested: bool
    error_reason: FailureReason | None = Field(None, description=FAILURE_REASONS_DESCRIPTION)
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    trial: TrialRead | None = Field(None, description="Set for a search's trials.")
    links: JobLinks


NEXT_DESCRIPTION = (
    'The next page\'s URL (also in the Link header, rel="next"); null on the last page. Its '
    "`cursor` is opaque: pass it back unchanged."
)
_NEXT_EXAMPLE = "/jobs?limit=50&cursor=eyJvZiI6ImpvYnM6Y3JlYXRlZCIsImlkIjoxMDB9"


class JobList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"items": [_JOB_EXAMPLE], "limit": 50, "next": _NEXT_EXAMPLE}]
        }
    )

    items: list[JobRead]
    limit: int
    next: str | None = Field(description=NEXT_DESCRIPTION)


class EpochMetricRead(BaseModel):
    model_config = ConfigDict(
        from_attributes=True, json_schema_extra={"examples": [_EPOCH_EXAMPLE]}
    )

    epoch: int
    train_loss: float
    train_accuracy: float = Field(description="Fraction in [0, 1].")
    test_loss: float
    test_accuracy: float = Field(description="Fraction in [0, 1].")
    learning_rate: float
    seconds: float
    images_per_second: float


class JobMetrics(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "job_id": 1,
                    "status": "running",
                    "ended": False,
                    "epochs_done": 1,
                    "epochs_total": 100,
                    "metrics": [_EPOCH_EXAMPLE],
                }
            ]
        }
    )

    job_id: int
    status: JobStatus
    ended: bool = Field(description=ENDED_DESCRIPTION)
    epochs_done: int
    epochs_total: int
    metrics: list[EpochMetricRead]


class JobCurve(BaseModel):
    job_id: int
    metrics: list[EpochMetricRead]


class ExperimentMetrics(BaseModel):
    experiment_id: int
    points_per_job: int = Field(
        description="The most epochs given per job: max_points, or less so that the whole "
        "answer stays within 100,000 points. Each curve keeps its first, last and best epoch."
    )
    jobs: list[JobCurve] = Field(description="The jobs that have recorded epochs, by id.")


class CheckpointRead(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "latest",
                    "epoch": 12,
                    "size_bytes": 90018731,
                    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                    "recorded_at": "2026-11-27T08:04:09Z",
                    "url": "/jobs/1/checkpoints/latest",
                    "state": "intact",
                }
            ]
        }
    )

    name: Literal["latest", "best", "final"]
    epoch: int
    size_bytes: int
    sha256: str
    recorded_at: datetime
    url: str
    state: Literal["intact", "damaged", "missing"] = Field(
        description="Whether the stored bytes match `size_bytes` and `sha256` (checked by the "
        "API): only an `intact` checkpoint is served; a `damaged` or `missing` one answers "
        "500 `checkpoint_damaged` or 404 `checkpoint_not_found`."
    )


class ArchitectureRead(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "block": "plain",
                    "params": 11050212,
                    "macs": 551979108,
                    "params_millions": 11.05,
                    "gmacs": 0.55,
                }
            ]
        }
    )

    block: str
    params: int
    macs: int
    params_millions: float = Field(description="params / 1e6, rounded to 2 places (the seed's M).")
    gmacs: float = Field(description="macs / 1e9, rounded to 2 places (the seed's GMac).")


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
    "preset": "report",
    "tags": [],
    "spec": {
        "name": "report",
        "preset": "report",
        "blocks": ["plain", "residual", "mobile"],
        "dataset": "cifar100",
        "hyperparameters": _JOB_EXAMPLE["spec"]["hyperparameters"],
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
    reached: int = Field(description="Trials that reached it.")
    promoted: int = Field(description="Trials that reached it and went on.")
    cutoff: float | None = Field(
        description="The value a trial reaching the rung now must match to go on (the worst "
        "of the best 1/reduction_factor recorded there)."
    )


class SearchRead(BaseModel):
    """Where a search stands; the counts per status are the experiment's `status_counts`."""

    max_trials: int
    trials_created: int
    best: SearchBest | None = Field(description="The succeeded trial with the best objective.")
    rungs: list[SearchRung] = Field(description="asha's rungs; empty for the other pruners.")
    epochs_spent: int = Field(description="Epochs the trials actually trained.")
    epochs_full: int = Field(description="max_trials x hyperparameters.epochs: with no pruning.")


class ExperimentRead(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_EXPERIMENT_EXAMPLE]})

    id: int
    name: str
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
    jobs: list[ExperimentJobRow] = Field(description="Empty in listings.")
    links: ExperimentLinks


class ExperimentList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [{**_EXPERIMENT_EXAMPLE, "jobs": []}],
                    "limit": 50,
                    "next": None,
                }
            ]
        }
    )

    items: list[ExperimentRead]
    limit: int
    next: str | None = Field(description=NEXT_DESCRIPTION)


# The data of each event the event streams send (JSON text in the event's `data` field). Every
# field is always present; a float that is not finite (a diverged run's loss) is null.
class StatusEventData(BaseModel):
    """`status`: the job's status fields just after a change (queued, started, a retry, a
    cancel request, the end)."""

    model_config = ConfigDict(extra="forbid")

    job_id: int
    status: JobStatus
    ended: bool = Field(description=ENDED_DESCRIPTION)
    epochs_done: int
    epochs_total: int
    attempt: int
    cancel_requested: bool
    error_reason: FailureReason | None
    error: str | None
    best_test_accuracy: float | None
    final_test_accuracy: float | None
    final_train_loss: float | None


class EpochEventData(BaseModel):
    """`epoch`: one epoch's metrics as stored, the row /jobs/{id}/metrics shows."""

    model_config = ConfigDict(extra="forbid")

    job_id: int
    epoch: int
    train_loss: float | None
    train_accuracy: float | None = Field(description="Fraction in [0, 1].")
    test_loss: float | None
    test_accuracy: float | None = Field(description="Fraction in [0, 1].")
    learning_rate: float | None
    seconds: float | None
    images_per_second: float | None


class TrialCreatedEventData(BaseModel):
    """`trial_created`: the job is a new trial of a search (after its first `status`)."""

    model_config = ConfigDict(extra="forbid")

    job_id: int
    trial: int
    params: dict[str, Any] = Field(description="The sampled value of each searched field.")


class TrialPrunedEventData(BaseModel):
    """`trial_pruned`: the pruner stopped the trial after this epoch; it ends `pruned` at its
    next batch (its `status` event follows)."""

    model_config = ConfigDict(extra="forbid")

    job_id: int
    trial: int
    epoch: int
    rung: int | None = Field(description="asha: the rung where it stopped; null for median.")
    value: float | None = Field(description="The objective's value at that epoch.")


class BestChangedEventData(BaseModel):
    """`best_changed`: the trial that just succeeded is the search's best so far."""

    model_config = ConfigDict(extra="forbid")

    job_id: int
    trial: int
    params: dict[str, Any]
    value: float | None
    previous_job_id: int | None
    previous_value: float | None


class JobEndEventData(BaseModel):
    """`end` of a job's stream: the job has ended; the server closes the stream."""

    model_config = ConfigDict(extra="forbid")

    job_id: int
    status: JobStatus = Field(description="The job's final status.")


class ExperimentEndEventData(BaseModel):
    """`end` of an experiment's stream: every job has ended; the server closes the stream."""

    model_config = ConfigDict(extra="forbid")

    experiment_id: int
    status: JobStatus = Field(
        description="succeeded if every job succeeded or was pruned, else failed if any failed, "
        "else cancelled."
    )


EVENT_DATA_MODELS: tuple[type[BaseModel], ...] = (
    StatusEventData,
    EpochEventData,
    TrialCreatedEventData,
    TrialPrunedEventData,
    BestChangedEventData,
    JobEndEventData,
    ExperimentEndEventData,
)


class ErrorRead(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"error": "job_not_found", "detail": "No job with id 7."}]}
    )

    error: str = Field(description="A stable machine-readable code.")
    detail: str = Field(description="What is wrong, for a person.")
    fields: list[dict[str, Any]] | None = Field(
        None, description="For validation errors: each bad field and why."
    )


class Health(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: Literal["ok"]


class Readiness(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"status": "ready", "database": "ok", "broker": "ok"}]}
    )

    status: Literal["ready", "not_ready"]
    database: str
    broker: str
