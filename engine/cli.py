"""``python -m engine``: train, generate a dataset, or list the architectures."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from engine.config import DATASET_CLASSES, OPTIMIZERS, PRECISIONS, SCHEDULERS, TrainConfig
from engine.data import DatasetUnavailable
from models import ARCHITECTURES

TABLE_HEADER = (
    f"{'epoch':>5}  {'lr':>8}  {'train loss':>10}  {'train acc':>9}  "
    f"{'test loss':>9}  {'test acc':>8}  {'img/s':>8}  {'seconds':>7}"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    defaults = TrainConfig()

    train = commands.add_parser("train", help="train one network and write checkpoints")
    train.add_argument("--block", choices=sorted(ARCHITECTURES), default=defaults.block)
    train.add_argument("--dataset", choices=sorted(DATASET_CLASSES), default=defaults.dataset)
    train.add_argument("--epochs", type=int, default=defaults.epochs)
    train.add_argument("--batch-size", type=int, default=defaults.batch_size)
    train.add_argument("--lr", dest="learning_rate", type=float, default=defaults.learning_rate)
    train.add_argument("--optimizer", choices=OPTIMIZERS, default=defaults.optimizer)
    train.add_argument("--momentum", type=float, default=defaults.momentum)
    train.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    train.add_argument("--scheduler", choices=SCHEDULERS, default=defaults.scheduler)
    train.add_argument("--step-size", type=int, default=defaults.step_size)
    train.add_argument("--gamma", type=float, default=defaults.gamma)
    train.add_argument(
        "--no-augment", dest="augment", action="store_false", help="turn off crop and flip"
    )
    train.add_argument("--seed", type=int, default=defaults.seed)
    train.add_argument("--precision", choices=PRECISIONS, default=defaults.precision)
    train.add_argument("--train-samples", type=int, default=None)
    train.add_argument("--test-samples", type=int, default=None)
    train.add_argument("--data-dir", type=Path, default=Path("data"))
    train.add_argument("--out", type=Path, required=True, help="checkpoints and metrics.json")
    train.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if any)")
    train.add_argument("--download", action="store_true", help="fetch the dataset if missing")
    train.add_argument("--download-url", default=None)
    train.add_argument("--download-md5", default=None)
    train.add_argument("--resume", type=Path, default=None, help="checkpoint to continue from")
    train.add_argument("--no-progress", action="store_true", help="no per-batch progress bar")

    generate = commands.add_parser("generate-data", help="write a small generated dataset")
    generate.add_argument("--out", type=Path, required=True)
    generate.add_argument("--dataset", choices=sorted(DATASET_CLASSES), default="cifar100")
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


def run_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from engine.trainer import EpochReport, train

    config = TrainConfig(
        block=args.block,
        dataset=args.dataset,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        epochs=args.epochs,
        optimizer=args.optimizer,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        scheduler=args.scheduler,
        step_size=args.step_size,
        gamma=args.gamma,
        augment=args.augment,
        seed=args.seed,
        precision=args.precision,
        train_samples=args.train_samples,
        test_samples=args.test_samples,
    )
    try:
        config.validate()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    progress: tqdm | None = None

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
            on_batch=on_batch,
            download=args.download,
            download_url=args.download_url,
            download_md5=args.download_md5,
        )
    except DatasetUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    _write_json(args.out / "metrics.json", [item.to_dict() for item in result.history])
    best = result.best_test_accuracy
    print(
        f"done: {result.epochs_done} epochs, best test accuracy "
        f"{'n/a' if best is None else f'{best:.2%}'}"
    )
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
    from models import architecture_complexity

    print(f"{'block':<10}  {'params':>12}  {'M params':>8}  {'MACs':>13}  {'GMac':>5}")
    for block in ARCHITECTURES:
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
