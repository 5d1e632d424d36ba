"""The training engine: data, augmentation, the training loop and checkpoints.

No Celery, HTTP or SQL in here; the worker and the CLI are thin callers of ``train``. Importing
the package is cheap: torch loads when a name that needs it is first used.
"""

from __future__ import annotations

from typing import Any

from engine.config import Hyperparameters, TrainConfig

_LAZY = {
    "CheckpointFile": "engine.checkpoint",
    "CheckpointWriter": "engine.checkpoint",
    "StorageFull": "engine.checkpoint",
    "checkpoint_file_name": "engine.checkpoint",
    "file_sha256": "engine.checkpoint",
    "load_checkpoint": "engine.checkpoint",
    "load_model_from_checkpoint": "engine.checkpoint",
    "save_checkpoint": "engine.checkpoint",
    "verify_checkpoint": "engine.checkpoint",
    "CifarSplit": "engine.data",
    "DatasetUnavailable": "engine.data",
    "ensure_dataset": "engine.data",
    "load_cifar": "engine.data",
    "subset": "engine.data",
    "EpochMetrics": "engine.trainer",
    "EpochReport": "engine.trainer",
    "TrainResult": "engine.trainer",
    "resolve_compile": "engine.trainer",
    "train": "engine.trainer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


__all__ = ["Hyperparameters", "TrainConfig", *_LAZY]
