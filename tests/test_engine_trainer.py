"""The training loop on a tiny generated dataset: learning, reporting, stopping, resuming."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from engine.checkpoint import load_checkpoint, load_model_from_checkpoint
from engine.config import TrainConfig
from engine.synthetic import generate_cifar
from engine.trainer import EpochReport, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("cifar10")
    generate_cifar(directory, "cifar10", train_per_class=32, test_per_class=10, seed=0)
    return directory


LEARNING = TrainConfig(
    block="plain", dataset="cifar10", batch_size=16, learning_rate=0.02, epochs=3, augment=False
)
TINY = TrainConfig(
    block="mobile", dataset="cifar10", batch_size=32, epochs=2, train_samples=64, test_samples=32
)


def test_learns_far_above_chance_and_reports_each_epoch(data_dir: Path, tmp_path: Path) -> None:
    reports: list[EpochReport] = []
    result = train(
        LEARNING, data_dir=data_dir, device="cpu", checkpoint_dir=tmp_path, on_epoch=reports.append
    )
    assert not result.stopped and result.epochs_done == 3
    assert [report.metrics.epoch for report in reports] == [1, 2, 3]
    for report in reports:
        metrics = report.metrics
        for fraction in (metrics.train_accuracy, metrics.test_accuracy):
            assert 0.0 <= fraction <= 1.0
        assert metrics.learning_rate == pytest.approx(0.02)
        assert metrics.images_per_second > 0 and metrics.seconds > 0
        assert report.checkpoints["latest"] == tmp_path / "latest.pt"
        assert report.checkpoints["latest"].exists()
        assert [item.epoch for item in report.history] == list(range(1, metrics.epoch + 1))
    assert "best" in reports[0].checkpoints
    assert "final" in reports[-1].checkpoints and "final" not in reports[0].checkpoints
    assert result.best_test_accuracy == max(m.test_accuracy for m in result.history)
    assert result.best_test_accuracy > 0.3  # chance is 0.1
    assert reports[-1].metrics.train_loss < reports[0].metrics.train_loss


def test_checkpoints_are_weights_only_and_rebuild_the_model(data_dir: Path, tmp_path: Path) -> None:
    train(TINY, data_dir=data_dir, device="cpu", checkpoint_dir=tmp_path)
    payload = torch.load(tmp_path / "final.pt", map_location="cpu", weights_only=True)
    assert payload["epoch"] == 2 and payload["block"] == "mobile" and payload["num_classes"] == 10
    assert TrainConfig.model_validate(payload["config"]) == TINY
    assert [item["epoch"] for item in payload["history"]] == [1, 2]
    model = load_model_from_checkpoint(tmp_path / "final.pt")
    for name, value in model.state_dict().items():
        assert torch.equal(value, payload["model"][name])


def test_on_epoch_exceptions_propagate(data_dir: Path) -> None:
    def abort(report: EpochReport) -> None:
        raise RuntimeError("job cancelled")

    with pytest.raises(RuntimeError, match="job cancelled"):
        train(TINY, data_dir=data_dir, device="cpu", on_epoch=abort)


def test_should_stop_stops_between_batches(data_dir: Path, tmp_path: Path) -> None:
    polls = 0

    def should_stop() -> bool:
        nonlocal polls
        polls += 1
        return polls > 1  # one batch runs, then stop inside the first epoch

    reports: list[EpochReport] = []
    result = train(
        TINY,
        data_dir=data_dir,
        device="cpu",
        checkpoint_dir=tmp_path,
        should_stop=should_stop,
        on_epoch=reports.append,
    )
    assert result.stopped and result.epochs_done == 0 and result.history == []
    assert polls == 2 and reports == []
    assert list(tmp_path.iterdir()) == []  # no partial-epoch checkpoint


RESUME_SCRIPT = """
import json, sys
from pathlib import Path
from engine.config import TrainConfig
from engine.trainer import train
config = TrainConfig.model_validate_json(sys.argv[1])
result = train(config, data_dir=Path(sys.argv[2]), device="cpu",
               checkpoint_dir=Path(sys.argv[3]), resume_from=Path(sys.argv[4]))
print(json.dumps([m.to_dict() for m in result.history]))
"""


def _comparable(history: list[dict]) -> list[dict]:
    return [
        {k: v for k, v in m.items() if k not in ("seconds", "images_per_second")} for m in history
    ]


def test_resume_in_a_fresh_process_matches_a_straight_run(data_dir: Path, tmp_path: Path) -> None:
    straight = train(TINY, data_dir=data_dir, device="cpu", checkpoint_dir=tmp_path / "straight")
    one_epoch = TINY.model_copy(update={"epochs": 1})
    train(one_epoch, data_dir=data_dir, device="cpu", checkpoint_dir=tmp_path / "first")

    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            RESUME_SCRIPT,
            TINY.model_dump_json(),
            str(data_dir),
            str(tmp_path / "resumed"),
            str(tmp_path / "first" / "latest.pt"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    resumed_history = json.loads(completed.stdout.strip().splitlines()[-1])
    assert _comparable(resumed_history) == _comparable([m.to_dict() for m in straight.history])
    straight_weights = load_checkpoint(tmp_path / "straight" / "final.pt")["model"]
    resumed_weights = load_checkpoint(tmp_path / "resumed" / "final.pt")["model"]
    for name, value in straight_weights.items():
        assert torch.equal(value, resumed_weights[name]), name


def test_resume_rejects_a_different_config_and_returns_when_done(
    data_dir: Path, tmp_path: Path
) -> None:
    one_epoch = TINY.model_copy(update={"epochs": 1})
    first = train(one_epoch, data_dir=data_dir, device="cpu", checkpoint_dir=tmp_path)
    changed = TINY.model_copy(update={"learning_rate": 0.1})
    with pytest.raises(ValueError, match="learning_rate"):
        train(changed, data_dir=data_dir, device="cpu", resume_from=tmp_path / "latest.pt")
    done = train(one_epoch, data_dir=data_dir, device="cpu", resume_from=tmp_path / "latest.pt")
    assert done.epochs_done == 1 and not done.stopped
    assert [m.to_dict() for m in done.history] == [m.to_dict() for m in first.history]


def test_config_round_trips_and_validates_strictly() -> None:
    config = TrainConfig(block="residual", optimizer="adamw", scheduler="cosine")
    assert TrainConfig.model_validate_json(config.model_dump_json()) == config
    with pytest.raises(ValidationError, match="colour"):
        TrainConfig.model_validate({"colour": "red"})
    for field, value in [
        ("block", "dense"),
        ("optimizer", "rmsprop"),
        ("batch_size", 0),
        ("epochs", "1"),
        ("seed", False),
        ("augment", "no"),
        ("learning_rate", float("nan")),
    ]:
        with pytest.raises(ValidationError, match=field):
            TrainConfig.model_validate({field: value})
    assert TrainConfig().num_classes == 100 and TrainConfig(dataset="cifar10").num_classes == 10
    assert config.hyperparameters.optimizer == "adamw"
