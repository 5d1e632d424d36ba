"""Request and response models (pydantic v2). Every route declares one of these."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from models import ARCHITECTURES

BlockName = Literal[tuple(ARCHITECTURES)]  # type: ignore[valid-type]
DatasetName = Literal["cifar100", "cifar10"]
StatusName = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=50, pattern=r"^[A-Za-z0-9_.:-]+$")]

_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


class Hyperparameters(BaseModel):
    """The seed's settings are the defaults: batch 128, SGD lr 0.01 momentum 0.9, 100 epochs."""

    model_config = _STRICT

    batch_size: int = Field(128, ge=1, le=4096)
    learning_rate: float = Field(0.01, gt=0, le=10)
    epochs: int = Field(100, ge=1, le=1000)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (ignored by Adam/AdamW).")
    weight_decay: float = Field(0.0, ge=0, le=1)
    scheduler: Literal["none", "cosine", "step"] = "none"
    step_size: int = Field(30, ge=1, le=1000, description="Epochs per step (step scheduler).")
    gamma: float = Field(0.1, gt=0, le=1, description="LR factor per step (step scheduler).")
    augment: bool = Field(True, description="Random crop 32 (zero padding 4) + horizontal flip.")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    precision: Literal["fp32", "bf16"] = "fp32"


class JobCreate(BaseModel):
    """A training job: which network, which data, which hyperparameters."""

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
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

    block: BlockName = Field(description="Building block of the 18-layer network.")  # type: ignore[valid-type]
    dataset: DatasetName = "cifar100"
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    train_samples: int | None = Field(None, ge=1, le=50_000, description="Train on a subset.")
    test_samples: int | None = Field(None, ge=1, le=10_000, description="Test on a subset.")
    name: str | None = Field(None, max_length=200)
    tags: list[Tag] = Field(default_factory=list, max_length=20)

    def fingerprint(self) -> str:
        """sha256 of the canonical spec, for idempotent submission."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def train_config(self) -> dict[str, Any]:
        """The engine's TrainConfig fields, as plain data."""
        return {
            "block": self.block,
            "dataset": self.dataset,
            **self.hyperparameters.model_dump(),
            "train_samples": self.train_samples,
            "test_samples": self.test_samples,
        }


class JobLinks(BaseModel):
    self: str
    metrics: str
    loss_plot: str
    accuracy_plot: str
    checkpoints: str
    cancel: str


class JobRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

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
    items: list[JobRead]
    total: int
    limit: int
    offset: int


class EpochMetricRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    epoch: int
    train_loss: float
    train_accuracy: float = Field(description="Fraction in [0, 1].")
    test_loss: float
    test_accuracy: float = Field(description="Fraction in [0, 1].")
    learning_rate: float
    seconds: float
    images_per_second: float


class JobMetrics(BaseModel):
    job_id: int
    status: StatusName
    epochs_done: int
    epochs_total: int
    metrics: list[EpochMetricRead]


class CheckpointRead(BaseModel):
    name: Literal["latest", "best", "final"]
    epoch: int
    size_bytes: int
    sha256: str
    recorded_at: datetime
    url: str


class ArchitectureRead(BaseModel):
    block: str
    params: int
    macs: int
    params_millions: float = Field(description="params / 1e6, rounded to 2 places (the seed's M).")
    gmacs: float = Field(description="macs / 1e9, rounded to 2 places (the seed's GMac).")


class ErrorRead(BaseModel):
    error: str = Field(description="A stable machine-readable code.")
    detail: str = Field(description="What is wrong, for a person.")
    fields: list[dict[str, Any]] | None = Field(
        None, description="For validation errors: each bad field and why."
    )


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    database: str
    broker: str
