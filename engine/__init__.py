"""The training engine: data, augmentation, the training loop and checkpoints.

No Celery, HTTP or SQL in here; the worker and the CLI are thin callers of ``train``.
"""

from engine.checkpoint import load_checkpoint, load_model_from_checkpoint, save_checkpoint
from engine.config import TrainConfig
from engine.data import CifarSplit, DatasetUnavailable, ensure_dataset, load_cifar, subset
from engine.trainer import EpochMetrics, EpochReport, TrainResult, train

__all__ = [
    "CifarSplit",
    "DatasetUnavailable",
    "EpochMetrics",
    "EpochReport",
    "TrainConfig",
    "TrainResult",
    "ensure_dataset",
    "load_checkpoint",
    "load_cifar",
    "load_model_from_checkpoint",
    "save_checkpoint",
    "subset",
    "train",
]
