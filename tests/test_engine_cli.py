"""The command line: generate a dataset, train, keep the newest and best checkpoints, list the
architectures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.checkpoint import checkpoint_file_name

ROOT = Path(__file__).resolve().parents[1]


def _engine(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


@pytest.mark.slow
def test_generate_data_then_train_keeping_the_newest_and_best(tmp_path: Path) -> None:
    data_dir, out = tmp_path / "data", tmp_path / "run"
    _engine(
        "generate-data", "--out", str(data_dir), "--dataset", "cifar100", "--classes", "4",
        "--train-per-class", "8", "--test-per-class", "4",
    )  # fmt: skip
    assert (data_dir / "cifar-100-python" / "train").is_file()
    completed = _engine(
        "train", "--block", "mobile", "--epochs", "3", "--data-dir", str(data_dir),
        "--train-samples", "32", "--test-samples", "16", "--batch-size", "16",
        "--out", str(out), "--device", "cpu", "--no-progress",
    )  # fmt: skip
    assert "test acc" in completed.stdout
    history = json.loads((out / "metrics.json").read_text())
    assert [entry["epoch"] for entry in history] == [1, 2, 3]
    assert all(0.0 <= entry["test_accuracy"] <= 1.0 for entry in history)
    best_epoch = max(history, key=lambda entry: entry["test_accuracy"])["epoch"]  # first max
    kept = {checkpoint_file_name(3), checkpoint_file_name(best_epoch)}
    assert {path.name for path in out.glob("*.pt")} == kept
    assert f"final checkpoint: {out / checkpoint_file_name(3)} (epoch 3)" in completed.stdout
    best_line = f"best checkpoint:  {out / checkpoint_file_name(best_epoch)} (epoch {best_epoch})"
    assert best_line in completed.stdout
    for name in kept:
        payload = torch.load(out / name, map_location="cpu", weights_only=True)
        assert payload["config"]["train_samples"] == 32
        assert checkpoint_file_name(payload["epoch"]) == name


@pytest.mark.slow
def test_missing_data_fails_with_the_path(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "engine", "train", "--data-dir", str(tmp_path), "--out",
         str(tmp_path / "run"), "--device", "cpu", "--epochs", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 1
    assert str(tmp_path.resolve() / "cifar-100-python") in completed.stderr


@pytest.mark.slow
def test_architectures_table() -> None:
    output = _engine("architectures").stdout
    assert "11,050,212" in output and "11,224,932" in output and "1,326,052" in output


def test_keeper_keeps_the_newest_and_the_best_epoch_files(tmp_path: Path) -> None:
    from engine.checkpoint import save_checkpoint
    from engine.cli import CheckpointKeeper
    from engine.trainer import EpochMetrics, EpochReport

    keeper = CheckpointKeeper()
    history: list[EpochMetrics] = []
    on_disk: list[set[int]] = []
    for epoch, test_accuracy in enumerate([0.2, 0.5, 0.4, 0.5, 0.6], 1):
        history.append(EpochMetrics(epoch, 1.0, 0.5, 1.0, test_accuracy, 0.01, 1.0, 10.0))
        keeper.on_epoch(EpochReport(metrics=history[-1], history=list(history)))
        path = tmp_path / checkpoint_file_name(epoch)
        keeper.on_checkpoint(save_checkpoint(path, {"epoch": epoch}))
        on_disk.append({int(item.stem.split("-")[1]) for item in tmp_path.glob("*.pt")})
    # The best stays while newer epochs come and go; a tie keeps the earlier epoch.
    assert on_disk == [{1}, {2}, {2, 3}, {2, 4}, {5}]
    assert keeper.newest is not None and keeper.newest.epoch == 5
    assert keeper.best is not None and keeper.best.epoch == 5
