"""The training loop: one config in, per-epoch reports out through callbacks.

The loop is flat on purpose (airbench style): build data, model and optimizer from the config,
then for every epoch train, evaluate, report, and hand a CPU copy of the state to the
background checkpoint writer, in that order. Nothing here prints; callers (the CLI, the Celery
worker) decide what to do with each EpochReport and each CheckpointFile.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.augment import DeviceLoader
from engine.checkpoint import (
    CheckpointFile,
    CheckpointWriter,
    checkpoint_file_name,
    copy_to_cpu,
    load_checkpoint,
)
from engine.config import TrainConfig
from engine.data import CifarSplit, load_cifar, subset
from models.registry import build_model

# A resumed run may train longer, or compile where the first attempt did not.
RESUMABLE_CHANGES = frozenset({"epochs", "compile"})
# compile=None on CUDA: whether to torch.compile. Flip to True once GPU measurements show that
# compiling pays end to end, compile time included (docs/benchmarks.md).
COMPILE_ON_CUDA_BY_DEFAULT = False
# The torch.compile backend; tests on the CPU use "aot_eager", which skips code generation.
_COMPILE_BACKEND = "inductor"
# Evaluation needs no gradients, so on a GPU it runs in larger batches than training.
CUDA_EVAL_BATCH_SIZE = 1024
CPU_EVAL_BATCH_SIZE = 256
# (loss, outputs) of one batch: the part of the training step torch.compile may take over.
ForwardLoss = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


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
    # How much the figures above are measurements: the images each pass counted, and the
    # standard error of each mean loss (a search compares trials within these; None in the
    # history of a checkpoint written before they were recorded).
    train_images: int | None = None
    test_images: int | None = None
    train_loss_standard_error: float | None = None
    test_loss_standard_error: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpochMetrics:
        return cls(**data)


@dataclass(frozen=True)
class PassResult:
    """One pass over a data set: the mean loss, the accuracy, the standard error of the mean
    loss and how many images it counted."""

    loss: float
    accuracy: float
    loss_standard_error: float
    images: int


def _standard_error(total: float, total_of_squares: float, count: int) -> float:
    """The standard error of a mean from the sum and the sum of squares of its terms."""
    if count < 2:
        return 0.0
    mean = total / count
    variance = max(total_of_squares / count - mean * mean, 0.0) * count / (count - 1)
    return math.sqrt(variance / count)


class TrainingDiverged(ArithmeticError):
    """A loss became NaN or infinite: the weights are beyond use, so training stops there (the
    epoch is neither reported nor checkpointed). Names the epoch, the loss and the learning
    rate, the usual cause."""

    def __init__(self, epoch: int, which: str, value: float, learning_rate: float) -> None:
        self.epoch = epoch
        super().__init__(
            f"training diverged at epoch {epoch}: the {which} loss is {value} with "
            f"learning_rate {learning_rate:g}; a lower learning rate usually trains"
        )


def check_finite(epoch: int, which: str, value: float, learning_rate: float) -> None:
    if not math.isfinite(value):
        raise TrainingDiverged(epoch, which, value, learning_rate)


@dataclass
class EpochReport:
    """One finished epoch, reported before its checkpoint is written."""

    metrics: EpochMetrics
    history: list[EpochMetrics]  # every epoch so far, this one last


@dataclass
class TrainResult:
    history: list[EpochMetrics]
    epochs_done: int
    stopped: bool
    best_test_accuracy: float | None
    cpu_threads: int  # torch.get_num_threads() on the training thread during the run


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


def resolve_compile(config: TrainConfig, device: torch.device) -> bool:
    """Whether to torch.compile the training step: ``config.compile`` when set; otherwise off
    on the CPU and ``COMPILE_ON_CUDA_BY_DEFAULT`` on CUDA."""
    if config.compile is not None:
        return config.compile
    return device.type == "cuda" and COMPILE_ON_CUDA_BY_DEFAULT


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The configured optimizer: one fused kernel per step on CUDA, foreach kernels elsewhere
    (the same arithmetic as the per-parameter loop)."""
    on_cuda = next(model.parameters()).device.type == "cuda"
    fused = True if on_cuda else None
    foreach = None if on_cuda else True
    params = model.parameters()
    rate, decay = config.learning_rate, config.weight_decay
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=rate,
            momentum=config.momentum,
            weight_decay=decay,
            foreach=foreach,
            fused=fused,
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=rate, weight_decay=decay, foreach=foreach, fused=fused)
    return torch.optim.AdamW(params, lr=rate, weight_decay=decay, foreach=foreach, fused=fused)


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


def make_forward_loss(model: nn.Module, *, bf16: bool = False) -> ForwardLoss:
    """The forward pass and loss of one training batch, autocast to bf16 when asked."""
    device_type = next(model.parameters()).device.type

    def forward_loss(
        inputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=bf16):
            outputs = model(inputs)
        return F.cross_entropy(outputs.float(), labels), outputs

    return forward_loss


def compile_forward_loss(model: nn.Module, *, bf16: bool = False) -> ForwardLoss:
    """``make_forward_loss`` under torch.compile, for full batches only.

    Shapes are static (``dynamic=False``) and ``train_epoch`` sends the last, partial batch
    and evaluation through the eager module, so one graph is compiled in the first epoch and
    later epochs never recompile.
    """
    compiled: ForwardLoss = torch.compile(
        make_forward_loss(model, bf16=bf16), dynamic=False, backend=_COMPILE_BACKEND
    )
    return compiled


def train_epoch(
    model: nn.Module,
    loader: DeviceLoader,
    optimizer: torch.optim.Optimizer,
    *,
    bf16: bool = False,
    should_stop: Callable[[], bool] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    compiled_forward_loss: ForwardLoss | None = None,
) -> PassResult | None:
    """One pass over ``loader``, or None when ``should_stop`` fired. The loss's standard error
    is that of the batches' mean losses (a per-image loss is not kept while training).

    Full batches go through ``compiled_forward_loss`` when given, a last partial batch through
    the eager module. Loss and correct counts accumulate on the device; the host reads them
    once, at the end.
    """
    model.train()
    device = loader.device
    eager_forward_loss = make_forward_loss(model, bf16=bf16)
    loss_sum = torch.zeros((), device=device)
    batch_loss_sum = torch.zeros((), device=device)
    batch_loss_squares = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    batches = len(loader)
    for batch_index, (inputs, labels) in enumerate(loader, 1):
        if should_stop is not None and should_stop():
            return None
        full_batch = labels.shape[0] == loader.batch_size
        if compiled_forward_loss is not None and full_batch:
            loss, outputs = compiled_forward_loss(inputs, labels)
        else:
            loss, outputs = eager_forward_loss(inputs, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        batch_loss = loss.detach()
        loss_sum += batch_loss * labels.shape[0]
        batch_loss_sum += batch_loss
        batch_loss_squares += batch_loss * batch_loss
        correct += (outputs.detach().argmax(dim=1) == labels).sum()
        if on_batch is not None:
            on_batch(batch_index, batches)
    return PassResult(
        loss_sum.item() / loader.num_images,
        correct.item() / loader.num_images,
        _standard_error(batch_loss_sum.item(), batch_loss_squares.item(), batches),
        loader.num_images,
    )


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader, *, bf16: bool = False) -> PassResult:
    """``model`` in eval mode over ``loader``: its mean loss (with the standard error over the
    images' losses) and accuracy."""
    model.eval()
    device = loader.device
    loss_sum = torch.zeros((), device=device)
    loss_squares = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    for inputs, labels in loader:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            outputs = model(inputs)
        losses = F.cross_entropy(outputs.float(), labels, reduction="none")
        loss_sum += losses.sum()
        loss_squares += (losses * losses).sum()
        correct += (outputs.argmax(dim=1) == labels).sum()
    images = loader.num_images
    return PassResult(
        loss_sum.item() / images,
        correct.item() / images,
        _standard_error(loss_sum.item(), loss_squares.item(), images),
        images,
    )


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


# Weight initialisation draws from PyTorch's global generator: jobs that start at the same time in
# one process (WORKER_CONCURRENCY > 1) seed and build their networks one at a time.
_GLOBAL_RNG = threading.Lock()


# The intra-op threads of this process before any run set its own: torch.set_num_threads also
# sets the count that threads pick up at their first parallel operation, for the whole process.
_process_threads: int | None = None
_process_threads_lock = threading.Lock()


@contextmanager
def intra_op_threads(threads: int | None) -> Iterator[int]:
    """Run the block with ``threads`` intra-op CPU threads (None: as they are) and yield the
    count in effect.

    It must be entered on the thread that trains: with PyTorch's OpenMP backend the count is
    the calling thread's own, so jobs trained in different threads of one process (the
    worker's WORKER_CONCURRENCY) each get their own, and a count set on another thread does
    not reach this one. Afterwards the calling thread, and threads that have not run parallel
    work yet, are back on the process's count from before the first run that set one.
    Inter-op threads are left alone: the training step never hands work to them, and their
    pool can be sized only once per process, before any parallel work.
    """
    global _process_threads
    if threads is None:
        yield torch.get_num_threads()
        return
    if threads < 1:
        raise ValueError(f"cpu_threads must be at least 1, got {threads}")
    with _process_threads_lock:
        if _process_threads is None:
            _process_threads = torch.get_num_threads()
        restore = _process_threads
    torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(restore)


def seeded_model(config: TrainConfig, device: torch.device) -> nn.Module:
    """The job's network with its seed's initial weights, whatever other threads are doing."""
    with _GLOBAL_RNG:
        torch.manual_seed(config.seed)
        return prepare_model(config.block, config.num_classes, device)


def train(
    config: TrainConfig,
    *,
    data_dir: Path,
    device: str | torch.device | None = None,
    checkpoint_dir: Path | None = None,
    resume_from: Path | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
    on_checkpoint: Callable[[CheckpointFile], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    download: bool = False,
    download_url: str | None = None,
    download_md5: str | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    cpu_threads: int | None = None,
) -> TrainResult:
    """Train ``config`` and return its history.

    After every epoch: evaluate, call ``on_epoch``, then (with a ``checkpoint_dir``) hand a CPU
    copy of the state to a background writer for ``checkpoint_dir/epoch-NNNN.pt`` and go on
    training. ``on_checkpoint`` is called in this thread once a file is whole on disk: between
    batches, and for the last one before ``train`` returns, so epoch N's ``on_checkpoint``
    always follows its ``on_epoch``. Exceptions from either callback propagate; a failed write
    (``StorageFull``, any OSError) raises here too. ``should_stop`` is polled between batches;
    when it returns True the run stops at once with ``stopped=True`` and no partial-epoch
    checkpoint. ``on_batch(batches_done, batches_per_epoch)`` is for progress bars.
    ``cpu_threads``: the intra-op CPU threads of this run (see ``intra_op_threads``); None
    leaves the calling thread's setting as it is. The result records the count in effect.
    """
    with intra_op_threads(cpu_threads) as threads_used:
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
                return TrainResult(
                    history,
                    done,
                    stopped=False,
                    best_test_accuracy=best_test_accuracy,
                    cpu_threads=threads_used,
                )
            start_epoch = done + 1

        train_split, test_split = _load_splits(
            config, Path(data_dir), download, download_url, download_md5
        )
        loader_generator = torch.Generator(device=device).manual_seed(config.seed)
        model = seeded_model(config, device)
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
        eval_batch_size = CUDA_EVAL_BATCH_SIZE if device.type == "cuda" else CPU_EVAL_BATCH_SIZE
        test_loader = DeviceLoader(
            test_split.images,
            test_split.labels,
            dataset=config.dataset,
            batch_size=max(config.batch_size, eval_batch_size),
            device=device,
            channels_last=channels_last,
        )
        compiled_forward_loss = (
            compile_forward_loss(model, bf16=bf16) if resolve_compile(config, device) else None
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

        writer = CheckpointWriter() if checkpoint_dir is not None else None

        def deliver(files: list[CheckpointFile]) -> None:
            for file in files:
                if on_checkpoint is not None:
                    on_checkpoint(file)

        def poll() -> bool:
            """Between batches: report finished checkpoint writes, then ask ``should_stop``."""
            if writer is not None:
                deliver(writer.completed())
            return should_stop is not None and should_stop()

        epochs_done = start_epoch - 1
        stopped = False
        try:
            for epoch in range(start_epoch, config.epochs + 1):
                learning_rate = float(optimizer.param_groups[0]["lr"])
                epoch_start = time.perf_counter()
                outcome = train_epoch(
                    model,
                    train_loader,
                    optimizer,
                    bf16=bf16,
                    should_stop=poll,
                    on_batch=on_batch,
                    compiled_forward_loss=compiled_forward_loss,
                )
                if outcome is None:
                    stopped = True
                    break
                train_seconds = time.perf_counter() - epoch_start
                check_finite(epoch, "train", outcome.loss, learning_rate)
                tested = evaluate(model, test_loader, bf16=bf16)
                check_finite(epoch, "test", tested.loss, learning_rate)
                test_accuracy = tested.accuracy
                if scheduler is not None:
                    scheduler.step()
                metrics = EpochMetrics(
                    epoch=epoch,
                    train_loss=outcome.loss,
                    train_accuracy=outcome.accuracy,
                    test_loss=tested.loss,
                    test_accuracy=tested.accuracy,
                    learning_rate=learning_rate,
                    seconds=time.perf_counter() - epoch_start,
                    images_per_second=train_loader.num_images / train_seconds,
                    train_images=outcome.images,
                    test_images=tested.images,
                    train_loss_standard_error=outcome.loss_standard_error,
                    test_loss_standard_error=tested.loss_standard_error,
                )
                history.append(metrics)
                epochs_done = epoch
                if best_test_accuracy is None or test_accuracy > best_test_accuracy:
                    best_test_accuracy = test_accuracy
                if on_epoch is not None:
                    on_epoch(EpochReport(metrics=metrics, history=list(history)))
                if writer is not None and checkpoint_dir is not None:
                    state = copy_to_cpu(
                        {
                            "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict() if scheduler is not None else None,
                            "rng": {
                                "torch": torch.get_rng_state(),
                                "loader": loader_generator.get_state(),
                                "cuda": torch.cuda.get_rng_state(device)
                                if device.type == "cuda"
                                else None,
                            },
                        }
                    )
                    payload = {
                        **state,
                        "epoch": epoch,
                        "config": config.model_dump(),
                        "history": [item.to_dict() for item in history],
                        "best_test_accuracy": best_test_accuracy,
                        "block": config.block,
                        "num_classes": config.num_classes,
                        # On the CPU the thread count changes the sums' rounding: a resumed
                        # run keeps it to reproduce a straight one (checkpoint_cpu_threads).
                        "cpu_threads": threads_used,
                    }
                    deliver(writer.completed())
                    writer.submit(
                        epoch, Path(checkpoint_dir) / checkpoint_file_name(epoch), payload
                    )
            if writer is not None:
                deliver(writer.flush())
        finally:
            if writer is not None:
                writer.close()
        return TrainResult(
            history,
            epochs_done,
            stopped=stopped,
            best_test_accuracy=best_test_accuracy,
            cpu_threads=threads_used,
        )
