"""The training loop: one config in, per-epoch reports out through a callback.

The loop is flat on purpose (airbench style): build data, model and optimizer from the config,
then for every epoch train, evaluate, checkpoint and report, in that order. Nothing here
prints; callers (the CLI, the Celery worker) decide what to do with each EpochReport.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.augment import DeviceLoader
from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.config import TrainConfig
from engine.data import CifarSplit, load_cifar, subset
from models.registry import build_model

CHECKPOINT_NAMES = {"latest": "latest.pt", "best": "best.pt", "final": "final.pt"}
# A resumed run may train longer, or compile where the first attempt did not.
RESUMABLE_CHANGES = frozenset({"epochs", "compile"})


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float  # mean over the epoch's samples
    train_accuracy: float  # fraction in [0, 1]
    test_loss: float
    test_accuracy: float  # fraction in [0, 1]
    learning_rate: float  # the rate used during this epoch
    seconds: float  # the whole epoch: training and evaluation
    images_per_second: float  # training images over training time

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpochMetrics:
        return cls(**data)


@dataclass
class EpochReport:
    metrics: EpochMetrics
    history: list[EpochMetrics]
    checkpoints: dict[str, Path] = field(default_factory=dict)  # names written this epoch


@dataclass
class TrainResult:
    history: list[EpochMetrics]
    epochs_done: int
    stopped: bool
    best_test_accuracy: float | None


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, or CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def prepare_model(block: str, num_classes: int, device: torch.device) -> nn.Module:
    """The network on ``device`` in channels-last layout (faster on CUDA and, for the depthwise
    convs of the mobile net, about twice as fast on CPU too); cuDNN autotuning on CUDA."""
    model = build_model(block, num_classes=num_classes).to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return model.to(memory_format=torch.channels_last)


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = model.parameters()
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=config.learning_rate,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)


def make_scheduler(
    config: TrainConfig, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Stepped once per epoch; ``cosine`` anneals to zero over ``config.epochs``."""
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=config.step_size, gamma=config.gamma
        )
    return None


def train_epoch(
    model: nn.Module,
    loader: DeviceLoader,
    optimizer: torch.optim.Optimizer,
    *,
    bf16: bool = False,
    should_stop: Callable[[], bool] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> tuple[float, float] | None:
    """One pass over ``loader``: (mean loss, accuracy), or None when ``should_stop`` fired.

    Loss and correct counts accumulate on the device; the host reads them once, at the end.
    """
    model.train()
    device = loader.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    batches = len(loader)
    for batch_index, (inputs, labels) in enumerate(loader, 1):
        if should_stop is not None and should_stop():
            return None
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            outputs = model(inputs)
        loss = F.cross_entropy(outputs.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * labels.shape[0]
        correct += (outputs.detach().argmax(dim=1) == labels).sum()
        if on_batch is not None:
            on_batch(batch_index, batches)
    return loss_sum.item() / loader.num_images, correct.item() / loader.num_images


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader, *, bf16: bool = False) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` in eval mode over ``loader``."""
    model.eval()
    device = loader.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    for inputs, labels in loader:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            outputs = model(inputs)
        loss_sum += F.cross_entropy(outputs.float(), labels, reduction="sum")
        correct += (outputs.argmax(dim=1) == labels).sum()
    return loss_sum.item() / loader.num_images, correct.item() / loader.num_images


def _check_resumable(stored: dict[str, Any], config: TrainConfig) -> None:
    current = config.model_dump()
    differing = sorted(
        name
        for name in set(stored) | set(current)
        if name not in RESUMABLE_CHANGES and stored.get(name) != current.get(name)
    )
    if differing:
        details = ", ".join(f"{n}: {stored.get(n)!r} != {current.get(n)!r}" for n in differing)
        raise ValueError(f"checkpoint config differs from the requested config ({details})")


def _load_splits(
    config: TrainConfig,
    data_dir: Path,
    download: bool,
    download_url: str | None,
    download_md5: str | None,
) -> tuple[CifarSplit, CifarSplit]:
    splits = []
    for train_split, samples, seed in (
        (True, config.train_samples, config.seed),
        (False, config.test_samples, config.seed + 1),
    ):
        split = load_cifar(
            config.dataset,
            data_dir,
            train=train_split,
            download=download,
            url=download_url,
            md5=download_md5,
        )
        split = subset(split, samples, seed)
        if len(split) and int(split.labels.max()) >= config.num_classes:
            raise ValueError(f"labels in {data_dir} exceed {config.num_classes} classes")
        splits.append(split)
    return splits[0], splits[1]


def train(
    config: TrainConfig,
    *,
    data_dir: Path,
    device: str | torch.device | None = None,
    checkpoint_dir: Path | None = None,
    resume_from: Path | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    download: bool = False,
    download_url: str | None = None,
    download_md5: str | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train ``config`` and return its history.

    After every epoch: evaluate, write checkpoints (``latest.pt``; ``best.pt`` when the test
    accuracy improved; ``final.pt`` after the last epoch), then call ``on_epoch`` (its
    exceptions propagate). ``should_stop`` is polled between batches; when it returns True
    the run stops at once with ``stopped=True`` and no partial-epoch checkpoint.
    ``on_batch(batches_done, batches_per_epoch)`` is for progress bars.
    """
    device = resolve_device(device)
    bf16 = config.precision == "bf16"

    resume_payload: dict[str, Any] | None = None
    history: list[EpochMetrics] = []
    best_test_accuracy: float | None = None
    start_epoch = 1
    if resume_from is not None:
        resume_payload = load_checkpoint(resume_from)
        _check_resumable(resume_payload["config"], config)
        history = [EpochMetrics.from_dict(item) for item in resume_payload["history"]]
        best_test_accuracy = resume_payload["best_test_accuracy"]
        done = int(resume_payload["epoch"])
        if done > config.epochs:
            raise ValueError(f"checkpoint is at epoch {done}, beyond epochs={config.epochs}")
        if done == config.epochs:
            return TrainResult(history, done, stopped=False, best_test_accuracy=best_test_accuracy)
        start_epoch = done + 1

    train_split, test_split = _load_splits(
        config, Path(data_dir), download, download_url, download_md5
    )
    torch.manual_seed(config.seed)
    loader_generator = torch.Generator(device=device).manual_seed(config.seed)
    model = prepare_model(config.block, config.num_classes, device)
    optimizer = make_optimizer(config, model)
    scheduler = make_scheduler(config, optimizer)
    channels_last = True  # matches prepare_model
    train_loader = DeviceLoader(
        train_split.images,
        train_split.labels,
        dataset=config.dataset,
        batch_size=config.batch_size,
        device=device,
        generator=loader_generator,
        shuffle=True,
        augment=config.augment,
        channels_last=channels_last,
    )
    test_loader = DeviceLoader(
        test_split.images,
        test_split.labels,
        dataset=config.dataset,
        batch_size=max(config.batch_size, 256),
        device=device,
        channels_last=channels_last,
    )

    if resume_payload is not None:
        model.load_state_dict(resume_payload["model"])
        optimizer.load_state_dict(resume_payload["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(resume_payload["scheduler"])
        rng = resume_payload["rng"]
        torch.set_rng_state(rng["torch"])
        loader_generator.set_state(rng["loader"])
        if device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"], device)

    for epoch in range(start_epoch, config.epochs + 1):
        learning_rate = float(optimizer.param_groups[0]["lr"])
        epoch_start = time.perf_counter()
        outcome = train_epoch(
            model,
            train_loader,
            optimizer,
            bf16=bf16,
            should_stop=should_stop,
            on_batch=on_batch,
        )
        if outcome is None:
            return TrainResult(
                history, epoch - 1, stopped=True, best_test_accuracy=best_test_accuracy
            )
        train_seconds = time.perf_counter() - epoch_start
        train_loss, train_accuracy = outcome
        test_loss, test_accuracy = evaluate(model, test_loader, bf16=bf16)
        if scheduler is not None:
            scheduler.step()
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=train_loss,
            train_accuracy=train_accuracy,
            test_loss=test_loss,
            test_accuracy=test_accuracy,
            learning_rate=learning_rate,
            seconds=time.perf_counter() - epoch_start,
            images_per_second=train_loader.num_images / train_seconds,
        )
        history.append(metrics)
        improved = best_test_accuracy is None or test_accuracy > best_test_accuracy
        if improved:
            best_test_accuracy = test_accuracy

        checkpoints: dict[str, Path] = {}
        if checkpoint_dir is not None:
            payload = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": {
                    "torch": torch.get_rng_state(),
                    "loader": loader_generator.get_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                },
                "epoch": epoch,
                "config": config.model_dump(),
                "history": [item.to_dict() for item in history],
                "best_test_accuracy": best_test_accuracy,
                "block": config.block,
                "num_classes": config.num_classes,
            }
            names = ["latest"]
            if improved:
                names.append("best")
            if epoch == config.epochs:
                names.append("final")
            for name in names:
                path = Path(checkpoint_dir) / CHECKPOINT_NAMES[name]
                save_checkpoint(path, payload)
                checkpoints[name] = path
        if on_epoch is not None:
            on_epoch(EpochReport(metrics=metrics, history=list(history), checkpoints=checkpoints))

    return TrainResult(history, config.epochs, stopped=False, best_test_accuracy=best_test_accuracy)
