"""CIFAR-10/100 read straight from the official python-format archives into uint8 tensors.

The archives are pickles of ``(N, 3072)`` uint8 arrays (RGB planes, row-major), so a split is
one reshape away from ``(N, 3, 32, 32)``: no per-image PIL decoding.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.datasets import DatasetInfo, dataset_info

DOWNLOAD_TIMEOUT_SECONDS = 60.0
_CHUNK_BYTES = 1 << 20


class DatasetUnavailable(RuntimeError):
    """The dataset is not on disk and could not be downloaded; the message says how to fix it."""


@dataclass
class CifarSplit:
    images: torch.Tensor  # (N, 3, 32, 32) uint8
    labels: torch.Tensor  # (N,) int64
    classes: list[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _is_complete(folder: Path, layout: DatasetInfo) -> bool:
    return all((folder / name).is_file() for name in layout.required_files())


def _unavailable(layout: DatasetInfo, folder: Path, reason: str, url: str) -> DatasetUnavailable:
    return DatasetUnavailable(
        f"{reason}. The dataset was expected at {folder} (files: "
        f"{', '.join(layout.required_files())}). To provide it, place the official archive "
        f"{layout.archive_name} extracted there (so that {folder} exists), or enable downloads "
        f"(download=True, `--download` on the command line) to fetch it from {url}, or set the "
        f"download URL to a reachable copy of the archive."
    )


def _download_and_extract(
    layout: DatasetInfo, data_dir: Path, folder: Path, url: str, md5: str
) -> None:
    """Fetch, verify and unpack into ``folder``; anything temporary is removed on every path."""
    data_dir.mkdir(parents=True, exist_ok=True)
    archive_fd, archive_name = tempfile.mkstemp(
        prefix=f".{layout.folder}-", suffix=".tar.gz.part", dir=data_dir
    )
    archive_path = Path(archive_name)
    extract_dir: Path | None = None
    try:
        digest = hashlib.md5()
        try:
            with (
                os.fdopen(archive_fd, "wb") as archive_file,
                urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response,
            ):
                while chunk := response.read(_CHUNK_BYTES):
                    digest.update(chunk)
                    archive_file.write(chunk)
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise _unavailable(
                layout, folder, f"Downloading {url} failed ({error})", url
            ) from error
        if digest.hexdigest() != md5:
            raise _unavailable(
                layout,
                folder,
                f"The archive downloaded from {url} has MD5 {digest.hexdigest()}, expected {md5}",
                url,
            )
        extract_dir = Path(tempfile.mkdtemp(prefix=f".{layout.folder}-extract-", dir=data_dir))
        try:
            with tarfile.open(archive_path, "r:gz") as archive:
                archive.extractall(extract_dir, filter="data")
        except (tarfile.TarError, OSError, EOFError) as error:
            raise _unavailable(
                layout, folder, f"The archive from {url} could not be extracted ({error})", url
            ) from error
        extracted = extract_dir / layout.folder
        if not _is_complete(extracted, layout):
            raise _unavailable(
                layout, folder, f"The archive from {url} does not contain {layout.folder}/", url
            )
        # One rename makes the folder appear complete or not at all.
        os.replace(extracted, folder)
    finally:
        archive_path.unlink(missing_ok=True)
        if extract_dir is not None:
            shutil.rmtree(extract_dir, ignore_errors=True)


def ensure_dataset(
    dataset: str,
    data_dir: Path,
    *,
    download: bool,
    url: str | None = None,
    md5: str | None = None,
) -> Path:
    """The extracted dataset folder under ``data_dir``, downloading it first if allowed.

    ``url`` and ``md5`` default to the official archive's (a mirror has the same MD5); the
    archive is always MD5-verified. Raises DatasetUnavailable when it cannot be provided.
    """
    layout = dataset_info(dataset)
    data_dir = Path(data_dir).expanduser().resolve()
    folder = data_dir / layout.folder
    if _is_complete(folder, layout):
        return folder
    source_url = url or layout.url
    expected_md5 = md5 or layout.md5
    if folder.exists():
        raise _unavailable(layout, folder, f"{folder} exists but is incomplete", source_url)
    if not download:
        raise _unavailable(
            layout, folder, f"{dataset} was not found and downloads are off", source_url
        )
    _download_and_extract(layout, data_dir, folder, source_url, expected_md5)
    return folder


def _read_pickle(path: Path) -> dict[str, Any]:
    with path.open("rb") as file:
        # The official archives are Python 2 pickles; latin1 maps their byte strings to str.
        loaded: dict[str, Any] = pickle.load(file, encoding="latin1")
        return loaded


def load_cifar(
    dataset: str,
    data_dir: Path,
    *,
    train: bool,
    download: bool = False,
    url: str | None = None,
    md5: str | None = None,
) -> CifarSplit:
    """The train or test split as uint8 images (N, 3, 32, 32), int64 labels and class names."""
    layout = dataset_info(dataset)
    folder = ensure_dataset(dataset, data_dir, download=download, url=url, md5=md5)
    images: list[np.ndarray] = []
    labels: list[int] = []
    for name in layout.train_files if train else layout.test_files:
        batch = _read_pickle(folder / name)
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(int(label) for label in batch[layout.label_key])
    meta = _read_pickle(folder / layout.meta_file)
    return CifarSplit(
        images=torch.from_numpy(np.ascontiguousarray(np.concatenate(images))),
        labels=torch.tensor(labels, dtype=torch.int64),
        classes=[str(name) for name in meta[layout.names_key]],
    )


def subset(split: CifarSplit, n: int | None, seed: int) -> CifarSplit:
    """A seeded random subset of ``n`` examples (all of them when ``n`` is None or too large)."""
    if n is None or n >= len(split):
        return split
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(split), generator=generator)[:n]
    return CifarSplit(split.images[indices], split.labels[indices], list(split.classes))
