"""Training images/s of the engine against a naive DataLoader loop, per block, precision and
compile setting, measured in alternating rounds.

The naive reference is the usual course-notebook loop: torchvision's CIFAR100 dataset, a
DataLoader with PIL RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize,
fp32, NCHW, ``loss.item()`` every step. Both loops train the same network (same seed) with the
same optimizer settings, batch size and images on the same device; warm-up batches are not
timed. Each round times the same number of batches of the naive loop and of every engine
variant back to back, in alternating order, so a change of machine load lands in both sides
of that round's ratio rather than in one.

With ``--concurrent-jobs N`` it measures instead what the worker does with WORKER_CONCURRENCY=N:
N small jobs (``engine.train``, one epoch each) trained at once in N threads of this process,
each with the worker's per-job CPU threads, against the same N jobs one after the other with
every usable CPU each, and against the N jobs at once with a thread per core each (the worker
before it split the CPUs). Rounds alternate the order of the three.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from engine.augment import DeviceLoader
from engine.config import TrainConfig
from engine.data import load_cifar
from engine.datasets import DATASETS
from engine.synthetic import generate_cifar
from engine.trainer import (
    compile_forward_loss,
    make_optimizer,
    prepare_model,
    resolve_device,
    train,
    train_epoch,
)
from worker.cpus import available_cpus, threads_per_job

WARMUP_BATCHES = 2


@dataclass
class Timing:
    wall_seconds: float
    cpu_seconds: float  # this process's CPU time (all its threads; not DataLoader workers)


@dataclass
class Row:
    """One block/precision/compile variant against the naive loop, over every round."""

    block: str
    precision: str
    compile: bool
    images_per_round: int
    naive: list[Timing] = field(default_factory=list)
    engine: list[Timing] = field(default_factory=list)
    first_step_seconds: float | None = None  # compile on: the first batch, compilation included

    def ratios(self) -> list[float]:
        """Per round: engine images/s over naive images/s (naive wall / engine wall)."""
        return [
            n.wall_seconds / e.wall_seconds for n, e in zip(self.naive, self.engine, strict=True)
        ]

    def summary(self) -> dict[str, Any]:
        ratios = self.ratios()
        return {
            "block": self.block,
            "precision": self.precision,
            "compile": self.compile,
            "rounds": len(ratios),
            "images_per_round": self.images_per_round,
            "ratio_min": min(ratios),
            "ratio_median": statistics.median(ratios),
            "ratio_max": max(ratios),
            "naive_images_per_second": _median_rate(self.images_per_round, self.naive),
            "engine_images_per_second": _median_rate(self.images_per_round, self.engine),
            "naive_cpu_seconds_per_round": statistics.median(t.cpu_seconds for t in self.naive),
            "engine_cpu_seconds_per_round": statistics.median(t.cpu_seconds for t in self.engine),
            "naive_wall_seconds_per_round": statistics.median(t.wall_seconds for t in self.naive),
            "engine_wall_seconds_per_round": statistics.median(t.wall_seconds for t in self.engine),
            "first_step_seconds": self.first_step_seconds,
            "naive_rounds": [asdict(t) for t in self.naive],
            "engine_rounds": [asdict(t) for t in self.engine],
        }


def _median_rate(images: int, timings: list[Timing]) -> float:
    return statistics.median(images / t.wall_seconds for t in timings)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, run: Callable[[], object]) -> Timing:
    _synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    _synchronize(device)
    return Timing(time.perf_counter() - wall, time.process_time() - cpu)


class EngineLoop:
    """The engine's training step (as ``engine.train`` runs it) over a fixed set of images."""

    def __init__(
        self,
        block: str,
        data_dir: Path,
        images: int,
        batch_size: int,
        device: torch.device,
        precision: str,
        compile: bool,
    ) -> None:
        config = TrainConfig.model_validate(
            {"block": block, "batch_size": batch_size, "precision": precision}
        )
        split = load_cifar(config.dataset, data_dir, train=True)
        torch.manual_seed(0)
        self.model = prepare_model(block, config.num_classes, device)
        self.optimizer = make_optimizer(config, self.model)
        self.bf16 = precision == "bf16"
        self.compiled = compile_forward_loss(self.model, bf16=self.bf16) if compile else None
        generator = torch.Generator(device=device).manual_seed(0)

        def loader(count: int) -> DeviceLoader:
            return DeviceLoader(
                split.images[:count],
                split.labels[:count],
                dataset=config.dataset,
                batch_size=batch_size,
                device=device,
                generator=generator,
                shuffle=True,
                augment=True,
                channels_last=True,
            )

        self.warmup_loader = loader(WARMUP_BATCHES * batch_size)
        self.timed_loader = loader(images)
        self.device = device

    def warm_up(self) -> float:
        """Run the warm-up batches; the seconds the first one took (compilation included)."""
        first = loader_of_one(self.warmup_loader)
        seconds = _timed(self.device, lambda: self._run(first)).wall_seconds
        self._run(self.warmup_loader)
        return seconds

    def run(self) -> None:
        self._run(self.timed_loader)

    def _run(self, loader: DeviceLoader) -> None:
        train_epoch(
            self.model,
            loader,
            self.optimizer,
            bf16=self.bf16,
            compiled_forward_loss=self.compiled,
        )


def loader_of_one(loader: DeviceLoader) -> DeviceLoader:
    """A loader over the first full batch of ``loader``'s images."""
    return DeviceLoader(
        loader.images[: loader.batch_size],
        loader.labels[: loader.batch_size],
        dataset="cifar100",
        batch_size=loader.batch_size,
        device=loader.device,
        generator=loader.generator,
        shuffle=loader.shuffle,
        augment=loader.augment,
        channels_last=loader.channels_last,
    )


class NaiveLoop:
    """The course-notebook loop: torchvision dataset, PIL transforms, DataLoader, fp32, NCHW."""

    def __init__(
        self,
        block: str,
        data_dir: Path,
        images: int,
        batch_size: int,
        device: torch.device,
        workers: int = 0,
    ) -> None:
        from torch.utils.data import DataLoader, Subset
        from torchvision import datasets, transforms

        from models import build_model

        class LocalCIFAR100(datasets.CIFAR100):
            # No MD5s: the generated files are not the official ones.
            train_list = [["train", None]]
            test_list = [["test", None]]
            meta = {**datasets.CIFAR100.meta, "md5": None}

        transform = transforms.Compose(
            [
                transforms.RandomCrop(32, padding=4),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(DATASETS["cifar100"].mean, DATASETS["cifar100"].std),
            ]
        )
        dataset = LocalCIFAR100(str(data_dir), train=True, transform=transform, download=False)
        torch.manual_seed(0)
        self.model = build_model(block, num_classes=100).to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.device = device

        def loader(count: int) -> DataLoader[Any]:
            return DataLoader(
                Subset(dataset, range(count)),
                batch_size=batch_size,
                shuffle=True,
                num_workers=workers,
            )

        self.warmup_loader = loader(WARMUP_BATCHES * batch_size)
        self.timed_loader = loader(images)

    def warm_up(self) -> None:
        self._run(self.warmup_loader)

    def run(self) -> None:
        self._run(self.timed_loader)

    def _run(self, loader: Any) -> None:
        self.model.train()
        running_loss = 0.0
        for inputs, labels in loader:
            inputs, labels = inputs.to(self.device), labels.to(self.device)
            loss = F.cross_entropy(self.model(inputs), labels)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            running_loss += loss.item()


def run_benchmark(
    *,
    device: torch.device,
    blocks: list[str],
    precisions: list[str],
    compile_modes: list[bool],
    images: int,
    rounds: int,
    batch_size: int,
    data_dir: Path | None = None,
    workers: int = 0,
    report: Callable[[Row], None] | None = None,
) -> list[Row]:
    """Time every block against the naive loop in ``rounds`` alternating rounds."""
    images = max(batch_size, images // batch_size * batch_size)  # full batches only
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-data-") as temp_dir:
        if data_dir is None:
            data_dir = Path(temp_dir)
            per_class = math.ceil((images + WARMUP_BATCHES * batch_size) / 100)
            generate_cifar(data_dir, "cifar100", train_per_class=per_class, test_per_class=1)
        for block in blocks:
            naive = NaiveLoop(block, data_dir, images, batch_size, device, workers)
            naive.warm_up()
            variants: list[tuple[Row, EngineLoop]] = []
            for precision in precisions:
                for compile in compile_modes:
                    row = Row(block, precision, compile, images)
                    engine = EngineLoop(
                        block, data_dir, images, batch_size, device, precision, compile
                    )
                    first_step = engine.warm_up()
                    row.first_step_seconds = first_step if compile else None
                    variants.append((row, engine))
            for round_index in range(rounds):
                # Even rounds: naive, then each variant; odd rounds: the reverse.
                naive_timing: Timing | None = None
                if round_index % 2 == 0:
                    naive_timing = _timed(device, naive.run)
                order = variants if naive_timing is not None else list(reversed(variants))
                for row, engine in order:
                    row.engine.append(_timed(device, engine.run))
                if naive_timing is None:
                    naive_timing = _timed(device, naive.run)
                for row, _ in variants:
                    row.naive.append(naive_timing)
            for row, _ in variants:
                rows.append(row)
                if report is not None:
                    report(row)
            del naive, variants
    return rows


# The modes of the concurrency benchmark: the jobs one after the other with every usable CPU
# each; at once with the worker's per-job threads; at once with a thread per core each.
SEQUENTIAL = "one after the other"
SHARED = "together, per-job threads"
UNLIMITED = "together, thread per core"
CONCURRENCY_MODES = (SEQUENTIAL, SHARED, UNLIMITED)


@dataclass
class ConcurrencyRow:
    """N jobs, one after the other and at once, over every round."""

    block: str
    jobs: int
    images_per_job: int
    usable_cpus: int
    threads: dict[str, int]  # intra-op threads per job, per mode
    rounds: dict[str, list[Timing]] = field(
        default_factory=lambda: {mode: [] for mode in CONCURRENCY_MODES}
    )
    # Per mode: the counts the engine reported from the jobs' training threads.
    threads_used: dict[str, set[int]] = field(
        default_factory=lambda: {mode: set() for mode in CONCURRENCY_MODES}
    )

    def ratios(self, mode: str) -> list[float]:
        """Per round: the jobs' wall seconds one after the other over at once in ``mode``;
        1 or more means training them at once took no longer."""
        return [
            sequential.wall_seconds / together.wall_seconds
            for sequential, together in zip(self.rounds[SEQUENTIAL], self.rounds[mode], strict=True)
        ]

    def summary(self) -> dict[str, Any]:
        modes = {}
        for mode in CONCURRENCY_MODES:
            timings = self.rounds[mode]
            entry: dict[str, Any] = {
                "threads_per_job": self.threads[mode],
                "threads_used": sorted(self.threads_used[mode]),
                "wall_seconds_median": statistics.median(t.wall_seconds for t in timings),
                "cpu_seconds_median": statistics.median(t.cpu_seconds for t in timings),
                "rounds": [asdict(t) for t in timings],
            }
            if mode != SEQUENTIAL:
                ratios = self.ratios(mode)
                entry |= {
                    "ratio_min": min(ratios),
                    "ratio_median": statistics.median(ratios),
                    "ratio_max": max(ratios),
                }
            modes[mode] = entry
        return {
            "block": self.block,
            "jobs": self.jobs,
            "images_per_job": self.images_per_job,
            "usable_cpus": self.usable_cpus,
            "rounds": len(self.rounds[SEQUENTIAL]),
            "modes": modes,
        }


def _train_jobs(
    configs: list[TrainConfig],
    data_dir: Path,
    device: torch.device,
    cpu_threads: int,
    *,
    at_once: bool,
    threads_used: set[int],
) -> None:
    """Train ``configs`` as the worker would: each in a thread of its own, all started at once,
    or one after the other on one thread; each sets ``cpu_threads`` on its training thread and
    adds the count it ran with to ``threads_used``."""
    errors: list[BaseException] = []

    def run(batch: list[TrainConfig]) -> None:
        try:
            for config in batch:
                result = train(config, data_dir=data_dir, device=device, cpu_threads=cpu_threads)
                threads_used.add(result.cpu_threads)
        except BaseException as error:
            errors.append(error)

    batches = [[config] for config in configs] if at_once else [configs]
    threads = [threading.Thread(target=run, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def run_concurrency_benchmark(
    *,
    device: torch.device,
    blocks: list[str],
    jobs: int,
    images: int,
    rounds: int,
    batch_size: int,
    data_dir: Path | None = None,
    report: Callable[[ConcurrencyRow], None] | None = None,
) -> list[ConcurrencyRow]:
    """Time ``jobs`` one-epoch jobs of ``images`` training images per block in every mode, in
    ``rounds`` rounds whose order of modes rotates."""
    images = max(batch_size, images // batch_size * batch_size)  # full batches only
    cpus = available_cpus()
    # What each job got before the worker split the CPUs: PyTorch's default, a thread per core.
    per_core = torch.get_num_threads()
    threads = {
        SEQUENTIAL: threads_per_job(cpus, 1),
        SHARED: threads_per_job(cpus, jobs),
        UNLIMITED: per_core,
    }
    rows: list[ConcurrencyRow] = []
    with tempfile.TemporaryDirectory(prefix="bench-data-") as temp_dir:
        if data_dir is None:
            data_dir = Path(temp_dir)
            generate_cifar(
                data_dir, "cifar100", train_per_class=math.ceil(images / 100), test_per_class=1
            )
        for block in blocks:
            configs = [
                TrainConfig.model_validate(
                    {
                        "block": block,
                        "epochs": 1,
                        "batch_size": batch_size,
                        "seed": seed,
                        "train_samples": images,
                        "test_samples": batch_size,
                        "compile": False,
                    }
                )
                for seed in range(jobs)
            ]
            warm_up = [configs[0].model_copy(update={"train_samples": batch_size})]
            row = ConcurrencyRow(block, jobs, images, cpus, threads)
            for mode in CONCURRENCY_MODES:
                _train_jobs(
                    warm_up, data_dir, device, threads[mode], at_once=False, threads_used=set()
                )
            for round_index in range(rounds):
                start = round_index % len(CONCURRENCY_MODES)
                for mode in CONCURRENCY_MODES[start:] + CONCURRENCY_MODES[:start]:
                    run = functools.partial(
                        _train_jobs,
                        configs,
                        data_dir,
                        device,
                        threads[mode],
                        at_once=mode != SEQUENTIAL,
                        threads_used=row.threads_used[mode],
                    )
                    row.rounds[mode].append(_timed(device, run))
            rows.append(row)
            if report is not None:
                report(row)
    return rows


def format_concurrency_row(row: ConcurrencyRow) -> str:
    s = row.summary()
    lines = [
        f"{row.block}: {row.jobs} jobs of {row.images_per_job} images, {row.usable_cpus} usable "
        f"CPUs, {s['rounds']} rounds",
        f"  {'mode':<27} {'threads/job':>11} {'wall s':>8} {'CPU s':>8} "
        f"{'one after the other / this, min/med/max':>40}",
    ]
    for mode, entry in s["modes"].items():
        ratios = (
            "-"
            if mode == SEQUENTIAL
            else f"{entry['ratio_min']:.2f}/{entry['ratio_median']:.2f}/{entry['ratio_max']:.2f}"
        )
        used = ",".join(str(count) for count in entry["threads_used"])
        lines.append(
            f"  {mode:<27} {used:>11} {entry['wall_seconds_median']:>8.1f} "
            f"{entry['cpu_seconds_median']:>8.1f} {ratios:>40}"
        )
    return "\n".join(lines)


TABLE_HEADER = (
    f"{'block':<9} {'prec':<5} {'compile':<7} {'naive img/s':>11} {'engine img/s':>12} "
    f"{'ratio min/med/max':>19} {'CPU s naive':>11} {'CPU s engine':>12} {'1st step s':>10}"
)


def format_row(row: Row) -> str:
    s = row.summary()
    first = "-" if s["first_step_seconds"] is None else f"{s['first_step_seconds']:.1f}"
    ratios = f"{s['ratio_min']:.2f}/{s['ratio_median']:.2f}/{s['ratio_max']:.2f}"
    return (
        f"{row.block:<9} {row.precision:<5} {'on' if row.compile else 'off':<7} "
        f"{s['naive_images_per_second']:>11.1f} {s['engine_images_per_second']:>12.1f} "
        f"{ratios:>19} {s['naive_cpu_seconds_per_round']:>11.1f} "
        f"{s['engine_cpu_seconds_per_round']:>12.1f} {first:>10}"
    )


def environment(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _split(text: str) -> list[str]:
    return [item for item in text.split(",") if item]


def _compile_modes(text: str) -> list[bool]:
    modes = {"off": False, "on": True}
    try:
        return [modes[item] for item in _split(text)]
    except KeyError as error:
        raise argparse.ArgumentTypeError(f"--compile takes off,on; got {text!r}") from error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train_throughput", description=__doc__)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA if any)")
    parser.add_argument("--blocks", default="plain,residual,mobile")
    parser.add_argument("--precision", default="fp32", help="engine precisions, e.g. fp32,bf16")
    parser.add_argument("--compile", default="off", type=_compile_modes, help="off, on or off,on")
    parser.add_argument("--images", type=int, default=None, help="timed images per loop, round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0, help="naive DataLoader workers")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: generated")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--concurrent-jobs",
        type=int,
        default=0,
        metavar="N",
        help="instead: N one-epoch jobs at once in threads of this process, as a worker with "
        "WORKER_CONCURRENCY=N trains them, against one after the other (--images per job)",
    )
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    images = args.images or (512 if device.type == "cpu" else 10_000)
    info = environment(device)
    if args.concurrent_jobs > 0:
        return concurrency_main(args, device, images, info)
    print(
        f"{info['date']} {device} ({info.get('gpu', info['cpu'])}), torch {info['torch']}, "
        f"{info['threads']} threads; {images} timed images per loop per round, "
        f"{args.rounds} rounds, batch {args.batch_size}"
    )
    print(TABLE_HEADER, flush=True)
    rows = run_benchmark(
        device=device,
        blocks=_split(args.blocks),
        precisions=_split(args.precision),
        compile_modes=args.compile,
        images=images,
        rounds=args.rounds,
        batch_size=args.batch_size,
        data_dir=args.data_dir,
        workers=args.workers,
        report=lambda row: print(format_row(row), flush=True),
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        results = {"environment": info, "rows": [row.summary() for row in rows]}
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def concurrency_main(
    args: argparse.Namespace, device: torch.device, images: int, info: dict[str, Any]
) -> int:
    print(
        f"{info['date']} {device} ({info.get('gpu', info['cpu'])}), torch {info['torch']}, "
        f"{info['threads']} threads by default; {args.concurrent_jobs} jobs of {images} "
        f"training images, {args.rounds} rounds, batch {args.batch_size}",
        flush=True,
    )
    rows = run_concurrency_benchmark(
        device=device,
        blocks=_split(args.blocks),
        jobs=args.concurrent_jobs,
        images=images,
        rounds=args.rounds,
        batch_size=args.batch_size,
        data_dir=args.data_dir,
        report=lambda row: print(format_concurrency_row(row), flush=True),
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        results = {"environment": info, "concurrency": [row.summary() for row in rows]}
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
