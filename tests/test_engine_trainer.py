"""The training loop on a tiny generated dataset: learning, reporting, checkpoints, stopping,
resuming, compiling."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from engine import trainer
from engine.checkpoint import (
    CheckpointFile,
    checkpoint_cpu_threads,
    checkpoint_file_name,
    load_checkpoint,
    load_model_from_checkpoint,
    verify_checkpoint,
)
from engine.config import TrainConfig
from engine.synthetic import generate_cifar
from engine.trainer import EpochReport, make_optimizer, resolve_compile, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("cifar10")
    generate_cifar(directory, "cifar10", train_per_class=32, test_per_class=10, seed=0)
    return directory


@pytest.fixture(scope="module")
def learning_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("cifar10-learning")
    generate_cifar(directory, "cifar10", train_per_class=64, test_per_class=10, seed=0)
    return directory


# Evaluation uses batch norm's running statistics, which trail the weights by about ten steps.
# While the weights still move fast they are far off, compounded over 17 layers: after 20 steps
# a deep net scores chance in evaluation (test loss in the hundreds) while the same batch in
# training mode scores 40 %. So the run needs enough steps: 40 per epoch, about 78 % from the
# second epoch on (epoch 1 still evaluates near chance).
LEARNING = TrainConfig(
    block="mobile", dataset="cifar10", batch_size=16, learning_rate=0.02, epochs=3, augment=False
)
TINY = TrainConfig(
    block="mobile", dataset="cifar10", batch_size=32, epochs=2, train_samples=64, test_samples=32
)
QUICK = TrainConfig(
    block="mobile", dataset="cifar10", batch_size=16, epochs=1, train_samples=32, test_samples=16
)


def _checkpoint_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("checkpoint")]


@pytest.mark.slow
@pytest.mark.timeout(900)  # about a minute on an idle 2-core CPU, several on a loaded one
def test_learns_far_above_chance_and_reports_each_epoch(
    learning_data_dir: Path, tmp_path: Path
) -> None:
    events: list[tuple[str, int]] = []
    reports: list[EpochReport] = []
    files: list[CheckpointFile] = []

    def on_epoch(report: EpochReport) -> None:
        events.append(("epoch", report.metrics.epoch))
        reports.append(report)

    def on_checkpoint(file: CheckpointFile) -> None:
        events.append(("checkpoint", file.epoch))
        files.append(file)

    result = train(
        LEARNING,
        data_dir=learning_data_dir,
        device="cpu",
        checkpoint_dir=tmp_path,
        on_epoch=on_epoch,
        on_checkpoint=on_checkpoint,
    )
    assert not result.stopped and result.epochs_done == 3
    assert [report.metrics.epoch for report in reports] == [1, 2, 3]
    for report in reports:
        metrics = report.metrics
        for fraction in (metrics.train_accuracy, metrics.test_accuracy):
            assert 0.0 <= fraction <= 1.0
        assert metrics.learning_rate == pytest.approx(0.02)
        assert metrics.images_per_second > 0 and metrics.seconds > 0
        assert [item.epoch for item in report.history] == list(range(1, metrics.epoch + 1))
    # Every epoch's checkpoint is reported after that epoch, whole and with its own hash.
    for epoch in (1, 2, 3):
        assert events.index(("epoch", epoch)) < events.index(("checkpoint", epoch))
    assert [file.epoch for file in files] == [1, 2, 3]
    for file in files:
        assert file.path == tmp_path / checkpoint_file_name(file.epoch)
        assert verify_checkpoint(file.path, file.sha256, file.size_bytes)
        assert load_checkpoint(file.path)["epoch"] == file.epoch
    assert sorted(path.name for path in tmp_path.iterdir()) == [file.path.name for file in files]
    assert not _checkpoint_threads()
    assert result.best_test_accuracy == max(m.test_accuracy for m in result.history)
    assert result.best_test_accuracy > 0.5  # chance is 0.1
    assert reports[-1].metrics.train_loss < reports[0].metrics.train_loss
    assert reports[-1].metrics.test_loss < reports[0].metrics.test_loss


@pytest.mark.slow
def test_checkpoints_are_weights_only_and_rebuild_the_model(data_dir: Path, tmp_path: Path) -> None:
    train(TINY, data_dir=data_dir, device="cpu", checkpoint_dir=tmp_path)
    final = tmp_path / checkpoint_file_name(2)
    payload = torch.load(final, map_location="cpu", weights_only=True)
    assert payload["epoch"] == 2 and payload["block"] == "mobile" and payload["num_classes"] == 10
    assert TrainConfig.model_validate(payload["config"]) == TINY
    assert [item["epoch"] for item in payload["history"]] == [1, 2]
    epoch_one = load_checkpoint(tmp_path / checkpoint_file_name(1))
    assert [item["epoch"] for item in epoch_one["history"]] == [1]
    model = load_model_from_checkpoint(final)
    for name, value in model.state_dict().items():
        assert torch.equal(value, payload["model"][name])
    # The file of epoch 1 was written while epoch 2 trained: it holds epoch 1's weights.
    assert any(
        not torch.equal(value, payload["model"][name]) for name, value in epoch_one["model"].items()
    )


def test_a_checkpoint_records_the_cpu_threads_it_was_trained_with(
    data_dir: Path, tmp_path: Path
) -> None:
    """A resumed run takes the count back: on the CPU another one rounds differently."""
    train(QUICK, data_dir=data_dir, device="cpu", checkpoint_dir=tmp_path, cpu_threads=1)
    assert checkpoint_cpu_threads(tmp_path / checkpoint_file_name(1)) == 1
    (tmp_path / "other.pt").write_bytes(b"not a checkpoint")
    assert checkpoint_cpu_threads(tmp_path / "other.pt") is None


def test_without_a_checkpoint_dir_nothing_is_written(data_dir: Path, tmp_path: Path) -> None:
    files: list[CheckpointFile] = []
    result = train(TINY, data_dir=data_dir, device="cpu", on_checkpoint=files.append)
    assert result.epochs_done == 2 and files == []


@pytest.mark.slow
def test_callback_exceptions_propagate_and_stop_the_writer(data_dir: Path, tmp_path: Path) -> None:
    def abort_epoch(report: EpochReport) -> None:
        raise RuntimeError("job cancelled")

    with pytest.raises(RuntimeError, match="job cancelled"):
        train(TINY, data_dir=data_dir, device="cpu", checkpoint_dir=tmp_path, on_epoch=abort_epoch)
    assert list(tmp_path.iterdir()) == [] and not _checkpoint_threads()

    def abort_checkpoint(file: CheckpointFile) -> None:
        raise RuntimeError(f"lease lost at epoch {file.epoch}")

    reports: list[EpochReport] = []
    with pytest.raises(RuntimeError, match="lease lost at epoch 1"):
        train(
            TINY,
            data_dir=data_dir,
            device="cpu",
            checkpoint_dir=tmp_path,
            on_epoch=reports.append,
            on_checkpoint=abort_checkpoint,
        )
    assert not _checkpoint_threads()
    assert len(reports) <= 2  # stopped at the first report of a checkpoint
    # Whatever was written is whole: only finished epoch files, no temporary ones.
    for path in tmp_path.iterdir():
        assert path.name in {checkpoint_file_name(1), checkpoint_file_name(2)}
        assert load_checkpoint(path)["epoch"] in (1, 2)


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


def test_a_stopped_run_still_reports_its_finished_checkpoints(
    data_dir: Path, tmp_path: Path
) -> None:
    reports: list[EpochReport] = []
    files: list[CheckpointFile] = []
    batches_per_epoch = 2  # 64 samples, batch 32

    def should_stop() -> bool:
        return bool(reports)  # stop at the first batch of epoch 2

    result = train(
        TINY,
        data_dir=data_dir,
        device="cpu",
        checkpoint_dir=tmp_path,
        should_stop=should_stop,
        on_epoch=reports.append,
        on_checkpoint=files.append,
    )
    assert batches_per_epoch == -(-64 // TINY.batch_size)
    assert result.stopped and result.epochs_done == 1
    assert [file.epoch for file in files] == [1]
    assert verify_checkpoint(files[0].path, files[0].sha256, files[0].size_bytes)
    assert not _checkpoint_threads()


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


@pytest.mark.slow
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
            str(tmp_path / "first" / checkpoint_file_name(1)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    resumed_history = json.loads(completed.stdout.strip().splitlines()[-1])
    assert _comparable(resumed_history) == _comparable([m.to_dict() for m in straight.history])
    straight_weights = load_checkpoint(tmp_path / "straight" / checkpoint_file_name(2))["model"]
    resumed_weights = load_checkpoint(tmp_path / "resumed" / checkpoint_file_name(2))["model"]
    for name, value in straight_weights.items():
        assert torch.equal(value, resumed_weights[name]), name


@pytest.mark.slow
def test_resume_rejects_a_different_config_and_returns_when_done(
    data_dir: Path, tmp_path: Path
) -> None:
    one_epoch = TINY.model_copy(update={"epochs": 1})
    first = train(one_epoch, data_dir=data_dir, device="cpu", checkpoint_dir=tmp_path)
    latest = tmp_path / checkpoint_file_name(1)
    changed = TINY.model_copy(update={"learning_rate": 0.1})
    with pytest.raises(ValueError, match="learning_rate"):
        train(changed, data_dir=data_dir, device="cpu", resume_from=latest)
    events: list[object] = []
    done = train(
        one_epoch.model_copy(update={"compile": False}),  # compile may differ on resume
        data_dir=tmp_path / "no-data-needed",
        device="cpu",
        checkpoint_dir=tmp_path / "resumed",
        resume_from=latest,
        on_epoch=events.append,
        on_checkpoint=events.append,
    )
    assert done.epochs_done == 1 and not done.stopped and events == []
    assert [m.to_dict() for m in done.history] == [m.to_dict() for m in first.history]
    assert not (tmp_path / "resumed").exists() and not _checkpoint_threads()


# A learning rate far too high for batches of four: the test loss is NaN after the first epoch.
DIVERGING = TrainConfig(
    block="mobile",
    dataset="cifar10",
    batch_size=4,
    learning_rate=10.0,
    epochs=3,
    train_samples=32,
    test_samples=16,
    augment=False,
)


def test_a_diverging_run_stops_at_the_epoch_naming_the_loss_and_learning_rate(
    data_dir: Path, tmp_path: Path
) -> None:
    """A NaN or infinite loss stops training at that epoch: it is neither reported nor
    checkpointed, and the error says which loss, which epoch and the learning rate."""
    reports: list[EpochReport] = []
    with pytest.raises(trainer.TrainingDiverged) as raised:
        train(DIVERGING, data_dir=data_dir, checkpoint_dir=tmp_path, on_epoch=reports.append)
    error = raised.value
    assert error.epoch == len(reports) + 1
    assert re.fullmatch(
        rf"training diverged at epoch {error.epoch}: the (train|test) loss is (nan|-?inf) with "
        r"learning_rate 10; a lower learning rate usually trains",
        str(error),
    ), str(error)
    assert sorted(path.name for path in tmp_path.glob("*.pt")) == [
        checkpoint_file_name(epoch) for epoch in range(1, error.epoch)
    ]


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


def test_resolve_compile_follows_the_config_and_the_device() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for device in (cpu, cuda):
        assert resolve_compile(TINY.model_copy(update={"compile": True}), device)
        assert not resolve_compile(TINY.model_copy(update={"compile": False}), device)
    assert TINY.compile is None
    assert not resolve_compile(TINY, cpu)
    assert resolve_compile(TINY, cuda) is trainer.COMPILE_ON_CUDA_BY_DEFAULT


def test_sgd_uses_foreach_kernels_on_the_cpu() -> None:
    model = torch.nn.Linear(2, 2)
    for optimizer_name in ("sgd", "adam", "adamw"):
        config = TINY.model_copy(update={"optimizer": optimizer_name})
        group = make_optimizer(config, model).param_groups[0]
        assert group["foreach"] is True and not group.get("fused")


@pytest.mark.slow
def test_compiled_training_compiles_once(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three epochs with a last partial batch and evaluation: no recompiles after epoch 1."""
    from torch._dynamo.utils import counters

    # aot_eager traces and differentiates like inductor but skips code generation (seconds,
    # not minutes, on a small CPU).
    monkeypatch.setattr(trainer, "_COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    counters.clear()
    compiled = TINY.model_copy(
        update={"compile": True, "epochs": 3, "train_samples": 80, "test_samples": 40}
    )
    graphs_after_epoch: list[int] = []
    frames_after_epoch: list[int] = []

    def on_epoch(report: EpochReport) -> None:
        graphs_after_epoch.append(counters["stats"]["unique_graphs"])
        frames_after_epoch.append(counters["frames"]["total"])

    result = train(compiled, data_dir=data_dir, device="cpu", on_epoch=on_epoch)
    assert result.epochs_done == 3
    assert graphs_after_epoch[0] >= 1  # the training step really was compiled
    assert graphs_after_epoch == [graphs_after_epoch[0]] * 3
    # Dynamo looked at frames again each epoch (cache hits are not counted), but compiled no more.
    assert frames_after_epoch == [frames_after_epoch[0]] * 3
    assert counters["recompiles"] == {} or sum(counters["recompiles"].values()) == 0


def test_networks_built_in_parallel_threads_get_their_own_seeds_weights() -> None:
    """Several jobs in one worker process (WORKER_CONCURRENCY) start at once: each network's
    initial weights must be those of its seed alone."""
    device = torch.device("cpu")
    seeds = [3, 4, 5, 6]

    def weights(seed: int) -> torch.Tensor:
        config = TrainConfig(block="mobile", seed=seed)
        model = trainer.seeded_model(config, device)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    alone = {seed: weights(seed) for seed in seeds}
    together: dict[int, torch.Tensor] = {}
    barrier = threading.Barrier(len(seeds))

    def build(seed: int) -> None:
        barrier.wait()
        together[seed] = weights(seed)

    threads = [threading.Thread(target=build, args=(seed,)) for seed in seeds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for seed in seeds:
        assert torch.equal(alone[seed], together[seed]), f"seed {seed} got another job's weights"
    assert not torch.equal(alone[3], alone[4])


@pytest.mark.slow
def test_each_training_thread_runs_with_its_own_cpu_threads(data_dir: Path) -> None:
    """Jobs trained at once in threads of one process (WORKER_CONCURRENCY): each runs its
    parallel operations with the intra-op threads it was given, whatever the other sets, and
    afterwards the process's count is as it was."""
    before = torch.get_num_threads()
    wanted = {"a": 1, "b": before + 1}  # both differ from the default, and from each other
    seen: dict[str, set[int]] = {name: set() for name in wanted}
    results: dict[str, trainer.TrainResult] = {}
    both_training = threading.Barrier(len(wanted), timeout=120)
    errors: list[BaseException] = []

    def job(name: str) -> None:
        def on_batch(done: int, total: int) -> None:
            if not seen[name]:
                both_training.wait()  # the other job has set its count too
            seen[name].add(torch.get_num_threads())

        try:
            results[name] = train(
                QUICK, data_dir=data_dir, device="cpu", on_batch=on_batch, cpu_threads=wanted[name]
            )
        except BaseException as error:
            errors.append(error)
            both_training.abort()

    threads = [threading.Thread(target=job, args=(name,)) for name in wanted]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for name, count in wanted.items():
        assert seen[name] == {count}, (name, seen)
        assert results[name].cpu_threads == count
    assert torch.get_num_threads() == before
    fresh: list[int] = []  # a thread yet to run parallel work takes the process's count
    fresh_thread = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
    fresh_thread.start()
    fresh_thread.join()
    assert fresh == [before]

    result = train(QUICK, data_dir=data_dir, device="cpu", cpu_threads=1)
    assert result.cpu_threads == 1
    assert torch.get_num_threads() == before  # restored on the calling thread
    assert train(QUICK, data_dir=data_dir, device="cpu").cpu_threads == before
