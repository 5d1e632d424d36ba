"""``python -m engine``: train, generate a dataset, or list the architectures."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import typing
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from engine.config import TrainConfig
from engine.data import DatasetUnavailable
from engine.datasets import DATASETS

if typing.TYPE_CHECKING:
    from engine.checkpoint import CheckpointFile
    from engine.trainer import EpochReport

TABLE_HEADER = (
    f"{'epoch':>5}  {'lr':>8}  {'train loss':>10}  {'train acc':>9}  "
    f"{'test loss':>9}  {'test acc':>8}  {'img/s':>8}  {'seconds':>7}"
)


def _literal_choices(annotation: Any) -> tuple[Any, ...] | None:
    for candidate in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(candidate) is typing.Literal:
            return typing.get_args(candidate)
    return None


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, with its type, choices, default and description; the
    model validates the values (bounds included) after parsing."""
    for name, field in TrainConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = field.description or ""
        annotation = field.annotation
        if annotation is bool:
            parser.add_argument(
                flag,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=field.default,
                help=help_text,
            )
            continue
        if annotation == bool | None:
            parser.add_argument(
                flag,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{help_text} (default: decided by the engine)",
            )
            continue
        choices = _literal_choices(annotation)
        if choices is not None:
            kind: Any = str
        elif annotation in (int, int | None):
            kind = int
        elif annotation is float:
            kind = float
        else:
            raise TypeError(f"no command-line type for TrainConfig.{name}: {annotation}")
        parser.add_argument(
            flag,
            dest=name,
            type=kind,
            choices=choices,
            default=field.default,
            help=f"{help_text} (default: {field.default})",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train one network and write checkpoints")
    _add_config_flags(train)
    train.add_argument("--data-dir", type=Path, default=Path("data"))
    train.add_argument(
        "--out",
        type=Path,
        required=True,
        help="metrics.json and two checkpoints: the newest epoch's and the best epoch's",
    )
    train.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if any)")
    train.add_argument("--download", action="store_true", help="fetch the dataset if missing")
    train.add_argument("--download-url", default=None)
    train.add_argument("--download-md5", default=None)
    train.add_argument("--resume", type=Path, default=None, help="checkpoint to continue from")
    train.add_argument("--no-progress", action="store_true", help="no per-batch progress bar")

    generate = commands.add_parser("generate-data", help="write a small generated dataset")
    generate.add_argument("--out", type=Path, required=True)
    generate.add_argument("--dataset", choices=sorted(DATASETS), default="cifar100")
    generate.add_argument("--classes", type=int, default=None)
    generate.add_argument("--train-per-class", type=int, required=True)
    generate.add_argument("--test-per-class", type=int, required=True)
    generate.add_argument("--seed", type=int, default=0)

    commands.add_parser("architectures", help="parameters and MACs of every block")
    return parser


def _write_json(path: Path, data: object) -> None:
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w") as file:
        json.dump(data, file, indent=2)
    os.replace(temp_name, path)


class CheckpointKeeper:
    """Keeps the newest and the best epoch files in a folder and deletes the rest, each only
    once a newer file is whole on disk. Best is the highest test accuracy, the earliest epoch
    on a tie (as the trainer counts it)."""

    def __init__(self, existing: list[CheckpointFile] | None = None) -> None:
        self.files: dict[int, CheckpointFile] = {file.epoch: file for file in existing or []}
        self.test_accuracy: dict[int, float] = {}
        self.newest: CheckpointFile | None = None
        self.best: CheckpointFile | None = None

    def on_epoch(self, report: EpochReport) -> None:
        for metrics in report.history:
            self.test_accuracy[metrics.epoch] = metrics.test_accuracy

    def on_checkpoint(self, file: CheckpointFile) -> None:
        self.files[file.epoch] = file
        self.newest = file
        scored = [epoch for epoch in self.files if epoch in self.test_accuracy]
        best_epoch = min(scored, key=lambda epoch: (-self.test_accuracy[epoch], epoch))
        self.best = self.files[best_epoch]
        for epoch in sorted(self.files):
            if epoch not in (file.epoch, best_epoch):
                self.files.pop(epoch).path.unlink(missing_ok=True)


def _existing_checkpoints(folder: Path) -> list[CheckpointFile]:
    """Epoch files already in ``folder`` (a resumed run keeps managing them); sizes and hashes
    are not needed to decide which to keep."""
    from engine.checkpoint import CheckpointFile, checkpoint_file_epoch

    found = []
    for path in sorted(folder.glob("epoch-*.pt")):
        epoch = checkpoint_file_epoch(path)
        if epoch is not None:
            found.append(CheckpointFile(epoch=epoch, path=path, size_bytes=-1, sha256=""))
    return found


def run_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from engine.trainer import TrainingDiverged, train

    try:
        config = TrainConfig.model_validate(
            {name: getattr(args, name) for name in TrainConfig.model_fields}
        )
    except ValidationError as error:
        for problem in error.errors():
            field = ".".join(str(part) for part in problem["loc"])
            print(f"error: --{field.replace('_', '-')}: {problem['msg']}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    progress: tqdm | None = None
    keeper = CheckpointKeeper(_existing_checkpoints(args.out) if args.resume else None)

    def on_batch(batches_done: int, batches_total: int) -> None:
        nonlocal progress
        if args.no_progress:
            return
        if progress is None:
            progress = tqdm(total=batches_total, desc="train", unit="batch", leave=False)
        progress.update(1)
        if batches_done == batches_total:
            progress.close()
            progress = None

    def on_epoch(report: EpochReport) -> None:
        m = report.metrics
        print(
            f"{m.epoch:>5}  {m.learning_rate:>8.4g}  {m.train_loss:>10.4f}  "
            f"{m.train_accuracy:>9.2%}  {m.test_loss:>9.4f}  {m.test_accuracy:>8.2%}  "
            f"{m.images_per_second:>8.1f}  {m.seconds:>7.1f}",
            flush=True,
        )
        _write_json(args.out / "metrics.json", [item.to_dict() for item in report.history])
        keeper.on_epoch(report)

    print(f"training {config.block} on {config.dataset}; checkpoints in {args.out}")
    print(TABLE_HEADER, flush=True)
    try:
        result = train(
            config,
            data_dir=args.data_dir,
            device=args.device,
            checkpoint_dir=args.out,
            resume_from=args.resume,
            on_epoch=on_epoch,
            on_checkpoint=keeper.on_checkpoint,
            on_batch=on_batch,
            download=args.download,
            download_url=args.download_url,
            download_md5=args.download_md5,
        )
    except (DatasetUnavailable, TrainingDiverged) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    _write_json(args.out / "metrics.json", [item.to_dict() for item in result.history])
    best = result.best_test_accuracy
    print(
        f"done: {result.epochs_done} epochs, best test accuracy "
        f"{'n/a' if best is None else f'{best:.2%}'}"
    )
    if keeper.newest is not None and keeper.best is not None:
        print(f"final checkpoint: {keeper.newest.path} (epoch {keeper.newest.epoch})")
        print(f"best checkpoint:  {keeper.best.path} (epoch {keeper.best.epoch})")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from engine.synthetic import generate_cifar

    folder = generate_cifar(
        args.out,
        args.dataset,
        classes=args.classes,
        train_per_class=args.train_per_class,
        test_per_class=args.test_per_class,
        seed=args.seed,
    )
    print(f"wrote {folder}")
    return 0


def run_architectures() -> int:
    from models import BLOCK_NAMES, architecture_complexity

    print(f"{'block':<10}  {'params':>12}  {'M params':>8}  {'MACs':>13}  {'GMac':>5}")
    for block in BLOCK_NAMES:
        complexity = architecture_complexity(block)
        print(
            f"{block:<10}  {complexity.params:>12,}  {complexity.params / 1e6:>8.2f}  "
            f"{complexity.macs:>13,}  {complexity.macs / 1e9:>5.2f}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        return run_train(args)
    if args.command == "generate-data":
        return run_generate(args)
    return run_architectures()
