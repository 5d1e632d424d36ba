"""The supported datasets in one table: class counts, archive layout, source and statistics.

No torch here, so the API can validate a job spec without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DatasetName = Literal["cifar100", "cifar10"]


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset: how many classes, where its files sit inside the official archive."""

    name: str
    num_classes: int
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    url: str
    md5: str
    mean: tuple[float, float, float]  # per-channel training-set statistics, fractions of 255
    std: tuple[float, float, float]
    test_images: int = 10_000  # in the official test set

    @property
    def archive_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def required_files(self) -> tuple[str, ...]:
        return (*self.train_files, *self.test_files, self.meta_file)


DATASETS: dict[str, DatasetInfo] = {
    "cifar100": DatasetInfo(
        name="cifar100",
        num_classes=100,
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
    ),
    "cifar10": DatasetInfo(
        name="cifar10",
        num_classes=10,
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{index}" for index in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    ),
}


def dataset_info(dataset: str) -> DatasetInfo:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid datasets are: {', '.join(DATASETS)}")
    return DATASETS[dataset]
