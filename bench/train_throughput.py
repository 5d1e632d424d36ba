"""Training images/s of the engine against a naive DataLoader loop, per block.

The naive reference is the usual course-notebook loop: torchvision's CIFAR100 dataset, a
DataLoader with PIL RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize,
fp32, NCHW, ``loss.item()`` every step. Both loops train the same network (same seed) with the
same optimizer, batch size and images on the same device; warm-up batches are not timed.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from engine.augment import DeviceLoader
from engine.config import TrainConfig
from engine.data import load_cifar
from engine.datasets import DATASETS
from engine.synthetic import generate_cifar
from engine.trainer import make_optimizer, prepare_model, resolve_device, train_epoch

WARMUP_BATCHES = 2


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, run: Callable[[], None]) -> float:
    _synchronize(device)
    start = time.perf_counter()
    run()
    _synchronize(device)
    return time.perf_counter() - start


def engine_images_per_second(
    block: str, data_dir: Path, images: int, batch_size: int, device: torch.device, precision: str
) -> float:
    config = TrainConfig(block=block, batch_size=batch_size, precision=precision)
    split = load_cifar(config.dataset, data_dir, train=True)
    torch.manual_seed(0)
    model = prepare_model(block, config.num_classes, device)
    optimizer = make_optimizer(config, model)
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

    bf16 = precision == "bf16"
    warmup, timed = loader(WARMUP_BATCHES * batch_size), loader(images)
    train_epoch(model, warmup, optimizer, bf16=bf16)
    seconds = _timed(device, lambda: train_epoch(model, timed, optimizer, bf16=bf16))
    return images / seconds


def naive_images_per_second(
    block: str, data_dir: Path, images: int, batch_size: int, device: torch.device, workers: int
) -> float:
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

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
    model = build_naive_model(block, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def run(count: int) -> None:
        loader = DataLoader(
            Subset(dataset, range(count)), batch_size=batch_size, shuffle=True, num_workers=workers
        )
        model.train()
        running_loss = 0.0
        for inputs, labels in loader:
            inputs, labels = inputs.to(device), labels.to(device)
            loss = F.cross_entropy(model(inputs), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running_loss += loss.item()

    run(WARMUP_BATCHES * batch_size)
    return images / _timed(device, lambda: run(images))


def build_naive_model(block: str, device: torch.device) -> torch.nn.Module:
    from models import build_model

    return build_model(block, num_classes=100).to(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train_throughput", description=__doc__)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA if any)")
    parser.add_argument("--blocks", default="plain,residual,mobile")
    parser.add_argument("--images", type=int, default=None, help="timed images per loop")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--precision", default="fp32", help="engine precisions, e.g. fp32,bf16")
    parser.add_argument("--workers", type=int, default=0, help="naive DataLoader workers")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: generated")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    images = args.images or (512 if device.type == "cpu" else 10_000)
    blocks = [block for block in args.blocks.split(",") if block]
    precisions = [precision for precision in args.precision.split(",") if precision]
    print(
        f"device {device}, {images} timed images, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads, naive workers {args.workers}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-data-") as temp_dir:
        data_dir = args.data_dir
        if data_dir is None:
            data_dir = Path(temp_dir)
            per_class = math.ceil((images + WARMUP_BATCHES * args.batch_size) / 100)
            generate_cifar(data_dir, "cifar100", train_per_class=per_class, test_per_class=1)
        print(
            f"{'block':<9} {'precision':<9} {'naive img/s':>11} {'engine img/s':>12} {'ratio':>6}"
        )
        for block in blocks:
            naive = naive_images_per_second(
                block, data_dir, images, args.batch_size, device, args.workers
            )
            for precision in precisions:
                engine = engine_images_per_second(
                    block, data_dir, images, args.batch_size, device, precision
                )
                print(
                    f"{block:<9} {precision:<9} {naive:>11.1f} {engine:>12.1f} "
                    f"{engine / naive:>6.2f}x",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
