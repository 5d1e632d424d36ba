"""What the API answers about jobs: a job, a page of jobs, a job's metrics."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.tables import FailureReason, JobStatus

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


JOB_EXAMPLE: dict[str, Any] = {
    "id": 1,
    "experiment_id": None,
    "owner": "ada",
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
    "queue_reason": None,
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


class TrialDecisionRead(BaseModel):
    """One decision of the search's pruner about the trial."""

    outcome: Literal["went_on", "stopped", "paused", "promoted"] = Field(
        description="went_on: compared and kept training; stopped: it ends `pruned`; paused: it "
        "reached its bracket's rung and waits; promoted: chosen there, it resumes."
    )
    epoch: int = Field(description="The epoch decided at.")
    rung: int | None = Field(description="The rung (0, 1, ...); null for median.")
    value: float | None = Field(description="The trial's objective at that epoch.")
    cutoff: float | None = Field(description="The value it was compared with.")
    margin: float | None = Field(
        description="The noise margin: a trial stops only when worse than the cutoff by more "
        "(NOISE_Z standard errors of the difference, at least one test image)."
    )
    compared_with: int = Field(description="Trials the cutoff came from.")
    bracket: int | None = Field(description="hyperband: the trial's bracket.")


class TrialRead(BaseModel):
    """A search trial: what the sampler proposed and how far the pruner let it go, and why."""

    number: int = Field(description="0, 1, ... in the order the search made its trials.")
    params: dict[str, Any] = Field(description="The sampled value of each searched field.")
    bracket: int | None = Field(None, description="hyperband: the trial's bracket (0, 1, ...).")
    rung: int | None = Field(
        description="The highest rung (0, 1, ...) the pruner decided the trial at; null before "
        "the first."
    )
    prune_requested: bool = Field(description="The pruner stopped it (it ends `pruned`).")
    pause_requested: bool = Field(
        False, description="The pruner paused it at a rung (it waits `paused`)."
    )
    decisions: list[TrialDecisionRead] = Field(
        default_factory=list, description="Every decision of the pruner about it, in order."
    )
    cutoff: float | None = Field(
        None,
        description="For a trial its pruner stopped: the cutoff it fell short of (its last "
        "decision's, with `margin` there).",
    )


class JobRead(BaseModel):
    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [JOB_EXAMPLE]})

    id: int
    experiment_id: int | None = Field(None, description="The experiment the job belongs to.")
    owner: str | None = Field(
        None,
        description="Who submitted it, or its experiment (`admin`: the API key); null without "
        "accounts.",
    )
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
    queue_reason: str | None = Field(
        None,
        description="Why the job is at its queue position, in one sentence: how many of the "
        "jobs ahead have a higher priority, how many are earlier jobs of its own experiment, "
        "and how many take turns with it at its priority (fair share). Only while queued, "
        "and only where the job is read on its own (null in lists).",
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
NEXT_EXAMPLE = "/jobs?limit=50&cursor=eyJvZiI6ImpvYnM6Y3JlYXRlZCIsImlkIjoxMDB9"


class JobList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"items": [JOB_EXAMPLE], "limit": 50, "next": NEXT_EXAMPLE}]
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
