"""Reading the official archive format, and downloading it safely."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from engine.data import DatasetUnavailable, ensure_dataset, load_cifar, subset
from engine.synthetic import (
    CIFAR10_LABEL_NAMES,
    CIFAR100_FINE_LABEL_NAMES,
    generate_cifar,
    make_archive,
)


@pytest.mark.parametrize(
    ("dataset", "names"),
    [("cifar100", CIFAR100_FINE_LABEL_NAMES), ("cifar10", CIFAR10_LABEL_NAMES)],
)
def test_generated_dataset_round_trips(tmp_path: Path, dataset: str, names: list[str]) -> None:
    generate_cifar(tmp_path, dataset, classes=4, train_per_class=6, test_per_class=3, seed=1)
    train = load_cifar(dataset, tmp_path, train=True)
    test = load_cifar(dataset, tmp_path, train=False)
    assert train.images.shape == (24, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (12, 3, 32, 32)
    assert train.labels.dtype == torch.int64
    assert torch.bincount(train.labels).tolist() == [6, 6, 6, 6]
    assert train.classes == names and len(train.classes) == (100 if dataset == "cifar100" else 10)
    # The class signal is there: per-class mean colours differ clearly.
    means = torch.stack([train.images[train.labels == c].float().mean((0, 2, 3)) for c in range(4)])
    assert torch.cdist(means, means).fill_diagonal_(1e9).min() > 10


def test_cifar100_files_use_the_official_keys(tmp_path: Path) -> None:
    import pickle

    folder = generate_cifar(tmp_path, "cifar100", classes=2, train_per_class=2, test_per_class=1)
    with (folder / "train").open("rb") as file:
        batch = pickle.load(file, encoding="latin1")
    assert set(batch) == {"filenames", "batch_label", "fine_labels", "coarse_labels", "data"}
    assert batch["data"].shape == (4, 3072) and str(batch["data"].dtype) == "uint8"
    with (folder / "meta").open("rb") as file:
        assert len(pickle.load(file, encoding="latin1")["coarse_label_names"]) == 20


def test_subset_is_seeded_and_bounded(tmp_path: Path) -> None:
    generate_cifar(tmp_path, "cifar10", train_per_class=5, test_per_class=1)
    split = load_cifar("cifar10", tmp_path, train=True)
    first, again, other = subset(split, 7, 3), subset(split, 7, 3), subset(split, 7, 4)
    assert len(first) == 7 and torch.equal(first.labels, again.labels)
    assert torch.equal(first.images, again.images)
    assert not torch.equal(first.images, other.images)
    assert subset(split, None, 0) is split and len(subset(split, 1000, 0)) == len(split)


@pytest.fixture
def archive_server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A local HTTP server with a generated CIFAR-100 archive; yields (url, md5)."""
    source = tmp_path / "source"
    generate_cifar(source, "cifar100", classes=3, train_per_class=4, test_per_class=2)
    served = tmp_path / "served"
    md5 = make_archive(source, served / "cifar-100-python.tar.gz")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/cifar-100-python.tar.gz", md5
    finally:
        server.shutdown()
        server.server_close()


def test_download_fetches_verifies_and_reads(tmp_path: Path, archive_server) -> None:
    url, md5 = archive_server
    data_dir = tmp_path / "data"
    split = load_cifar("cifar100", data_dir, train=True, download=True, url=url, md5=md5)
    assert split.images.shape == (12, 3, 32, 32)
    assert sorted(p.name for p in data_dir.iterdir()) == ["cifar-100-python"]
    # Present now: no second download needed.
    assert ensure_dataset("cifar100", data_dir, download=False) == data_dir / "cifar-100-python"


def test_wrong_md5_leaves_nothing_behind(tmp_path: Path, archive_server) -> None:
    url, _ = archive_server
    data_dir = tmp_path / "data"
    with pytest.raises(DatasetUnavailable) as raised:
        ensure_dataset("cifar100", data_dir, download=True, url=url, md5="0" * 32)
    message = str(raised.value)
    assert "MD5" in message and str(data_dir.resolve() / "cifar-100-python") in message
    assert "extracted there" in message
    assert list(data_dir.iterdir()) == []


def test_downloads_off_names_the_expected_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetUnavailable) as raised:
        load_cifar("cifar10", tmp_path, train=True)
    message = str(raised.value)
    assert str(tmp_path.resolve() / "cifar-10-batches-py") in message
    assert "downloads are off" in message and "--download" in message
    assert list(tmp_path.iterdir()) == []


def test_connection_refused_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data_dir = tmp_path / "data"
    with pytest.raises(DatasetUnavailable) as raised:
        ensure_dataset("cifar100", data_dir, download=True, url=f"http://127.0.0.1:{port}/x.tar.gz")
    message = str(raised.value)
    assert "failed" in message and str(data_dir.resolve() / "cifar-100-python") in message
    assert list(data_dir.iterdir()) == []
