"""The command line: generate a dataset, train one epoch, list the architectures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

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


def test_generate_data_then_train_one_epoch(tmp_path: Path) -> None:
    data_dir, out = tmp_path / "data", tmp_path / "run"
    _engine(
        "generate-data", "--out", str(data_dir), "--dataset", "cifar100", "--classes", "4",
        "--train-per-class", "8", "--test-per-class", "4",
    )  # fmt: skip
    assert (data_dir / "cifar-100-python" / "train").is_file()
    completed = _engine(
        "train", "--block", "mobile", "--epochs", "1", "--data-dir", str(data_dir),
        "--train-samples", "32", "--test-samples", "16", "--batch-size", "16",
        "--out", str(out), "--device", "cpu",
    )  # fmt: skip
    assert "test acc" in completed.stdout
    history = json.loads((out / "metrics.json").read_text())
    assert [entry["epoch"] for entry in history] == [1]
    assert 0.0 <= history[0]["test_accuracy"] <= 1.0
    for name in ("latest.pt", "best.pt", "final.pt"):
        payload = torch.load(out / name, map_location="cpu", weights_only=True)
        assert payload["epoch"] == 1 and payload["config"]["train_samples"] == 32


def test_missing_data_fails_with_the_path(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "engine", "train", "--data-dir", str(tmp_path), "--out",
         str(tmp_path / "run"), "--device", "cpu", "--epochs", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 1
    assert str(tmp_path.resolve() / "cifar-100-python") in completed.stderr


def test_architectures_table() -> None:
    output = _engine("architectures").stdout
    assert "11,050,212" in output and "11,224,932" in output and "1,326,052" in output
