"""The training spec: one typed, validated model of every hyperparameter of a run.

Bounds, defaults and descriptions live here once. The API's request model embeds
``Hyperparameters``, the CLI builds its flags from ``TrainConfig``, the job row stores a
``TrainConfig`` dump and the worker validates it back. Validation is strict: wrong JSON types are
refused, never coerced (``"epochs": "1"``, ``"seed": false`` and ``"augment": "no"`` are errors).
JSON has a single number type, so an integer may be written with a zero fraction (``128.0``), as
JSON Schema counts it; ``128.5`` is not an integer. No torch here.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from engine.datasets import DATASETS, DatasetName
from models.catalog import BlockName

STRICT = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True, frozen=True)


def _integral_number(value: object) -> object:
    """128.0 as the integer 128: JSON has one number type, JSON Schema's "integer" is any
    number without a fraction, and some encoders write every number as a float. Other values go
    on to strict validation unchanged."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# An integer field of a JSON request: strict, except that a number without a fraction counts.
IntegralNumber = BeforeValidator(_integral_number)

Block = Annotated[BlockName, Field(description="Building block of the 18-layer network.")]
Dataset = Annotated[DatasetName, Field(description="cifar100 (100 classes) or cifar10.")]
TrainSamples = Annotated[
    int | None,
    Field(ge=1, le=50_000, description="Train on a seeded random subset."),
    IntegralNumber,
]
TestSamples = Annotated[
    int | None,
    Field(ge=1, le=10_000, description="Test on a seeded random subset."),
    IntegralNumber,
]


class Hyperparameters(BaseModel):
    """The seed's settings are the defaults: batch 128, SGD lr 0.01 momentum 0.9, 100 epochs."""

    model_config = STRICT

    batch_size: Annotated[int, IntegralNumber] = Field(
        128, ge=1, le=4096, description="Images per training batch."
    )
    learning_rate: float = Field(0.01, gt=0, le=10, description="Initial learning rate.")
    epochs: Annotated[int, IntegralNumber] = Field(
        100, ge=1, le=1000, description="Passes over the training set."
    )
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (ignored by Adam/AdamW).")
    weight_decay: float = Field(0.0, ge=0, le=1, description="L2 penalty (decoupled for AdamW).")
    scheduler: Literal["none", "cosine", "step"] = Field(
        "none", description="Learning-rate schedule, stepped once per epoch."
    )
    step_size: Annotated[int, IntegralNumber] = Field(
        30, ge=1, le=1000, description="Epochs per step (step scheduler)."
    )
    gamma: float = Field(0.1, gt=0, le=1, description="LR factor per step (step scheduler).")
    augment: bool = Field(True, description="Random crop 32 (zero padding 4) + horizontal flip.")
    seed: Annotated[int, IntegralNumber] = Field(
        0, ge=0, le=2**31 - 1, description="Seeds weights, shuffling and subsets."
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16 runs the forward pass under autocast (GPUs)."
    )
    compile: bool | None = Field(
        None,
        description="torch.compile the training step; null: the engine decides (on for CUDA "
        "only where it pays, off on the CPU).",
    )


class TrainConfig(Hyperparameters):
    """Everything ``engine.train`` needs besides paths and the device."""

    block: Block = "plain"
    dataset: Dataset = "cifar100"
    train_samples: TrainSamples = None
    test_samples: TestSamples = None

    @property
    def num_classes(self) -> int:
        return DATASETS[self.dataset].num_classes

    @property
    def hyperparameters(self) -> Hyperparameters:
        return Hyperparameters.model_validate(
            {name: getattr(self, name) for name in Hyperparameters.model_fields}
        )
