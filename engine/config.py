"""One typed object holding every hyperparameter of a training run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

DATASET_CLASSES = {"cifar100": 100, "cifar10": 10}
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "cosine", "step")
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    """Defaults reproduce the course report: SGD(0.01, momentum 0.9), batch 128, 100 epochs."""

    block: str = "plain"
    dataset: str = "cifar100"
    batch_size: int = 128
    learning_rate: float = 0.01
    epochs: int = 100
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    scheduler: str = "none"
    step_size: int = 30
    gamma: float = 0.1
    augment: bool = True
    seed: int = 0
    precision: str = "fp32"
    train_samples: int | None = None
    test_samples: int | None = None

    @property
    def num_classes(self) -> int:
        return DATASET_CLASSES[self.dataset]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from ``to_dict()`` output; unknown keys are an error, missing keys default."""
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config fields: {', '.join(unknown)}")
        return cls(**data)

    def validate(self) -> TrainConfig:
        """Raise ValueError naming the first invalid field; return self so calls can chain."""
        from models import ARCHITECTURES

        def fail(name: str, why: str) -> None:
            raise ValueError(f"{name}: {why} (got {getattr(self, name)!r})")

        if self.block not in ARCHITECTURES:
            fail("block", f"must be one of {', '.join(sorted(ARCHITECTURES))}")
        if self.dataset not in DATASET_CLASSES:
            fail("dataset", f"must be one of {', '.join(DATASET_CLASSES)}")
        if self.optimizer not in OPTIMIZERS:
            fail("optimizer", f"must be one of {', '.join(OPTIMIZERS)}")
        if self.scheduler not in SCHEDULERS:
            fail("scheduler", f"must be one of {', '.join(SCHEDULERS)}")
        if self.precision not in PRECISIONS:
            fail("precision", f"must be one of {', '.join(PRECISIONS)}")
        for name in ("batch_size", "epochs", "step_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(name, "must be a positive integer")
        for name in ("train_samples", "test_samples"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                fail(name, "must be a positive integer or None")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            fail("seed", "must be a non-negative integer")
        if not isinstance(self.augment, bool):
            fail("augment", "must be a boolean")
        for name in ("learning_rate", "gamma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                fail(name, "must be a positive number")
        for name in ("momentum", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                fail(name, "must be a non-negative number")
        if self.momentum >= 1:
            fail("momentum", "must be below 1")
        return self
