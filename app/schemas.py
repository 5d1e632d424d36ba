"""Request and response models (pydantic v2). Every route declares one of these."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from engine.config import (
    STRICT,
    Block,
    Dataset,
    Hyperparameters,
    TestSamples,
    TrainConfig,
    TrainSamples,
)

StatusName = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=50, pattern=r"^[A-Za-z0-9_.:-]+$")]


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
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

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
