"""Request and response models (pydantic v2). Every route declares one of these."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
)

from engine.config import (
    STRICT,
    Block,
    Dataset,
    Hyperparameters,
    TestSamples,
    TrainConfig,
    TrainSamples,
)
from models.catalog import BLOCK_NAMES, BlockName

StatusName = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=50, pattern=r"^[A-Za-z0-9_.:-]+$")]


def canonical_sha256(data: dict[str, Any]) -> str:
    """sha256 of JSON data written canonically (sorted keys, no spaces): a request's identity
    for idempotent submission."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class JobCreate(BaseModel):
    """A training job: which network, which data, which hyperparameters."""

    model_config = ConfigDict(
        **STRICT,
        json_schema_extra={
            "examples": [
                {
                    "block": "residual",
                    "dataset": "cifar100",
                    "hyperparameters": {"epochs": 2, "batch_size": 64},
                    "train_samples": 300,
                    "test_samples": 100,
                    "name": "residual smoke run",
                    "tags": ["demo"],
                }
            ]
        },
    )

    block: Block
    dataset: Dataset = "cifar100"
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    train_samples: TrainSamples = None
    test_samples: TestSamples = None
    name: str | None = Field(None, max_length=200)
    tags: list[Tag] = Field(default_factory=list, max_length=20)

    def fingerprint(self) -> str:
        """sha256 of the canonical spec, for idempotent submission."""
        return canonical_sha256(self.model_dump(mode="json"))

    def train_config(self) -> TrainConfig:
        """The engine's validated config for this job."""
        return TrainConfig(
            block=self.block,
            dataset=self.dataset,
            train_samples=self.train_samples,
            test_samples=self.test_samples,
            **self.hyperparameters.model_dump(),
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


class JobRead(BaseModel):
    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [_JOB_EXAMPLE]})

    id: int
    experiment_id: int | None = Field(None, description="The experiment the job belongs to.")
    name: str | None
    tags: list[str]
    block: str
    dataset: str
    status: StatusName
    spec: dict[str, Any] = Field(description="The submitted job spec, defaults filled in.")
    epochs_done: int
    epochs_total: int
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
    error_reason: str | None = Field(
        None,
        description="dataset_unavailable, worker_lost, timeout, training_error or invalid_spec.",
    )
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    links: JobLinks


class JobList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"items": [_JOB_EXAMPLE], "total": 1, "limit": 50, "offset": 0}]
        }
    )

    items: list[JobRead]
    total: int
    limit: int
    offset: int


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
                    "epochs_done": 1,
                    "epochs_total": 100,
                    "metrics": [_EPOCH_EXAMPLE],
                }
            ]
        }
    )

    job_id: int
    status: StatusName
    epochs_done: int
    epochs_total: int
    metrics: list[EpochMetricRead]


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


MAX_EXPERIMENT_JOBS = 64
# Every hyperparameter but the seed can be varied over a grid (`seeds` varies the seed).
GRID_KEYS: tuple[str, ...] = tuple(name for name in Hyperparameters.model_fields if name != "seed")
REPORT_PRESET = "report"
REPORT_BLOCKS: tuple[BlockName, ...] = ("plain", "residual", "mobile")
REPORT_DATASET = "cifar100"
# The report's training settings are the spec's defaults (batch 128, SGD lr 0.01 momentum 0.9,
# no schedule, augmentation); a report experiment may change only how long it trains.
REPORT_HYPERPARAMETERS = Hyperparameters()
REPORT_FREE_HYPERPARAMETERS = ("epochs",)


def _values_schema(name: str) -> dict[str, Any]:
    """JSON Schema of a list of values of one hyperparameter, each as Hyperparameters declares
    it (the service validates them by building each job's Hyperparameters)."""
    value = dict(Hyperparameters.model_json_schema()["properties"][name])
    value.pop("default", None)
    value.pop("title", None)
    return {
        "type": "array",
        "items": value,
        "minItems": 1,
        "maxItems": MAX_EXPERIMENT_JOBS,
        "uniqueItems": True,
    }


def _experiment_schema_extra(schema: dict[str, Any]) -> None:
    """The example, and the rules of the preset in JSON Schema: with "report" only the fields
    the report leaves open may differ from its settings; without a preset, blocks are needed."""
    schema["examples"] = [
        {
            "name": "plain vs residual",
            "blocks": ["plain", "residual"],
            "hyperparameters": {"epochs": 2, "batch_size": 64},
            "grid": {"learning_rate": [0.01, 0.1]},
            "seeds": [0],
            "train_samples": 300,
            "test_samples": 100,
            "tags": ["demo"],
        }
    ]
    # The job count is a product of list lengths, which JSON Schema cannot bound: the limit is
    # stated here for tools, and a request over it is 422 too_many_jobs.
    schema["x-max-jobs"] = MAX_EXPERIMENT_JOBS
    fixed = {
        name: value
        for name, value in REPORT_HYPERPARAMETERS.model_dump(mode="json").items()
        if name not in REPORT_FREE_HYPERPARAMETERS
    }
    schema["if"] = {"properties": {"preset": {"const": REPORT_PRESET}}, "required": ["preset"]}
    schema["then"] = {
        "properties": {
            "blocks": {
                "anyOf": [
                    {"type": "null"},
                    {
                        "type": "array",
                        "items": {"enum": list(REPORT_BLOCKS)},
                        "minItems": len(REPORT_BLOCKS),
                    },
                ]
            },
            "dataset": {"const": REPORT_DATASET},
            "grid": {"maxProperties": 0},
            "hyperparameters": {
                # {"const": None} would be dropped from the schema as unset.
                "properties": {
                    name: {"type": "null"} if value is None else {"const": value}
                    for name, value in fixed.items()
                }
            },
        }
    }
    schema["else"] = {"required": ["blocks"], "properties": {"blocks": {"type": "array"}}}


class ExperimentCreate(BaseModel):
    """Several jobs submitted and read as one: one per block x grid combination x seed, at most
    64 (`x-max-jobs`); more is 422 too_many_jobs."""

    model_config = ConfigDict(**STRICT, json_schema_extra=_experiment_schema_extra)

    name: str = Field(min_length=1, max_length=200)
    preset: Literal["report"] | None = Field(
        None,
        description='"report": the course report\'s comparison (plain, residual and mobile with '
        "its settings); only hyperparameters.epochs, train_samples, test_samples, seeds, name "
        "and tags may then be given.",
    )
    blocks: list[Block] | None = Field(
        None,
        min_length=1,
        max_length=len(BLOCK_NAMES),
        description="Distinct blocks, one job each (times the grid and seeds); needed unless a "
        "preset gives them.",
        json_schema_extra={"uniqueItems": True},
    )
    dataset: Dataset = "cifar100"
    hyperparameters: Hyperparameters = Field(
        default_factory=Hyperparameters, description="Shared by every job of the experiment."
    )
    grid: Annotated[
        dict[str, Annotated[list[Any], Field(min_length=1, max_length=MAX_EXPERIMENT_JOBS)]],
        WithJsonSchema(
            {
                "type": "object",
                "properties": {name: _values_schema(name) for name in GRID_KEYS},
                "additionalProperties": False,
            }
        ),
    ] = Field(
        default_factory=dict,
        description="Hyperparameter name -> distinct values; one job per combination "
        "(cartesian product), each value replacing the shared one.",
    )
    seeds: Annotated[
        list[Any] | None,
        Field(min_length=1, max_length=MAX_EXPERIMENT_JOBS),
        WithJsonSchema({"anyOf": [_values_schema("seed"), {"type": "null"}]}),
    ] = Field(None, description="Distinct seeds, one job each (replacing hyperparameters.seed).")
    train_samples: TrainSamples = None
    test_samples: TestSamples = None
    tags: list[Tag] = Field(default_factory=list, max_length=20)

    @field_validator("blocks")
    @classmethod
    def _distinct_blocks(cls, blocks: list[str] | None) -> list[str] | None:
        if blocks is not None and len(set(blocks)) != len(blocks):
            raise ValueError("blocks must be distinct")
        return blocks


ExperimentSort = Literal[
    "job_id",
    "block",
    "status",
    "best_test_accuracy",
    "final_test_accuracy",
    "final_train_loss",
    "seconds_per_epoch",
    "params",
    "macs",
]
SortOrder = Literal["asc", "desc"]


class StatusCounts(BaseModel):
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0


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
    status: StatusName
    epochs_done: int
    epochs_total: int
    params: int
    macs: int
    best_test_accuracy: float | None
    final_test_accuracy: float | None
    final_train_loss: float | None
    seconds_per_epoch: float | None = Field(description="Mean of the job's recorded epochs.")
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
    "status": "running",
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


class ExperimentRead(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_EXPERIMENT_EXAMPLE]})

    id: int
    name: str
    preset: Literal["report"] | None
    tags: list[str]
    spec: dict[str, Any] = Field(description="The submitted experiment, defaults filled in.")
    created_at: datetime
    status: StatusName = Field(
        description="running if any job runs; else queued if any is queued; else succeeded if "
        "all succeeded; else failed if any failed; else cancelled."
    )
    status_counts: StatusCounts
    job_count: int
    varying: list[str] = Field(
        description="The spec fields whose value differs between the jobs: block, grid "
        "hyperparameters, seed."
    )
    jobs: list[ExperimentJobRow] = Field(description="Empty in listings.")
    links: ExperimentLinks


class ExperimentList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [{**_EXPERIMENT_EXAMPLE, "jobs": []}],
                    "total": 1,
                    "limit": 50,
                    "offset": 0,
                }
            ]
        }
    )

    items: list[ExperimentRead]
    total: int
    limit: int
    offset: int


# The data of each event the event streams send (JSON text in the event's `data` field). Every
# field is always present; a float that is not finite (a diverged run's loss) is null.
TerminalStatusName = Literal["succeeded", "failed", "cancelled"]


class StatusEventData(BaseModel):
    """`status`: the job's status fields just after a change (queued, started, a retry, a
    cancel request, the end)."""

    model_config = ConfigDict(extra="forbid")

    job_id: int
    status: StatusName
    epochs_done: int
    epochs_total: int
    attempt: int
    cancel_requested: bool
    error_reason: str | None
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


class JobEndEventData(BaseModel):
    """`end` of a job's stream: the job has ended; the server closes the stream."""

    model_config = ConfigDict(extra="forbid")

    job_id: int
    status: TerminalStatusName


class ExperimentEndEventData(BaseModel):
    """`end` of an experiment's stream: every job has ended; the server closes the stream."""

    model_config = ConfigDict(extra="forbid")

    experiment_id: int
    status: TerminalStatusName = Field(
        description="succeeded if every job succeeded, else failed if any failed, else cancelled."
    )


EVENT_DATA_MODELS: tuple[type[BaseModel], ...] = (
    StatusEventData,
    EpochEventData,
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
