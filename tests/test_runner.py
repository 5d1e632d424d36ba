"""Every outcome of the job runner, in-process and in milliseconds: a scripted trainer stands in
for the engine (which has its own tests) and drives the runner's callbacks against a real
migrated database, as the engine would. The CPU threads of jobs trained at once are seen only
inside the engine's training threads, so that test trains with the real engine."""

from __future__ import annotations

import errno
import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from jobs import experiments, lifecycle, submission
from jobs.db import session_scope
from jobs.settings import get_settings
from jobs.specs import JobCreate
from jobs.tables import Checkpoint, EpochMetric, Job
from tests.support import flip_bit_keeping_mtime
from worker import runner


@dataclass
class Metrics:
    epoch: int
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float
    learning_rate: float = 0.01
    seconds: float = 0.01
    images_per_second: float = 100.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Report:
    metrics: Metrics
    history: list[Metrics]


@dataclass
class Written:
    epoch: int
    path: Path
    size_bytes: int
    sha256: str


@dataclass
class Result:
    history: list[Metrics]
    epochs_done: int
    stopped: bool


def metrics(epoch: int) -> Metrics:
    return Metrics(epoch, 4.0 / epoch, 0.1 * epoch, 3.0, 0.05 * epoch)


class ScriptedTrainer:
    """Trains `config.epochs` epochs of `batches` batches, polling should_stop before each batch
    like the engine; writes a real checkpoint file per epoch; `hooks[epoch]` runs after the epoch
    is reported (to inject cancels, signals, failures)."""

    def __init__(
        self,
        batches: int = 3,
        hooks: dict[int, Callable[[], None]] | None = None,
        *,
        test_accuracy: dict[int, float] | None = None,
        padding: int = 0,
    ):
        self.batches = batches
        self.hooks = hooks or {}
        self.batches_trained = 0
        self.resumed_from: Path | None = None
        # An epoch's test accuracy other than metrics()'s (to make an older epoch the best).
        self.test_accuracy = test_accuracy or {}
        self.padding = padding  # spaces after the epoch number in each file

    def metrics(self, epoch: int) -> Metrics:
        figures = metrics(epoch)
        if epoch in self.test_accuracy:
            figures.test_accuracy = self.test_accuracy[epoch]
        return figures

    def __call__(self, config: Any, **kwargs: Any) -> Result:
        self.resumed_from = kwargs["resume_from"]
        start = 1
        history: list[Metrics] = []
        if self.resumed_from is not None:
            start = int(self.resumed_from.read_text()) + 1
            history = [self.metrics(e) for e in range(1, start)]
        for epoch in range(start, config.epochs + 1):
            for _ in range(self.batches):
                if kwargs["should_stop"]():
                    return Result(history, epoch - 1, stopped=True)
                self.batches_trained += 1
            history.append(self.metrics(epoch))
            kwargs["on_epoch"](Report(history[-1], list(history)))
            path = kwargs["checkpoint_dir"] / f"epoch-{epoch:04d}.pt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(str(epoch) + " " * self.padding)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            kwargs["on_checkpoint"](Written(epoch, path, path.stat().st_size, digest))
            if epoch in self.hooks:
                self.hooks[epoch]()
        return Result(history, config.epochs, stopped=False)


@pytest.fixture
def new_job(configure, database_url: str):
    configure(database_url, HEARTBEAT_SECONDS="60", LEASE_SECONDS="60")
    runner.shutting_down.clear()

    def create(epochs: int = 3) -> int:
        spec = JobCreate(block="mobile", hyperparameters={"epochs": epochs}, train_samples=10)
        with session_scope() as session:
            return submission.create_job(session, spec, settings=get_settings()).job.id

    yield create
    runner.shutting_down.clear()


def job_row(job_id: int) -> Job:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def epochs_recorded(job_id: int) -> list[int]:
    with session_scope() as session:
        rows = session.execute(select(EpochMetric.epoch).where(EpochMetric.job_id == job_id))
        return sorted(rows.scalars())


def checkpoint_epochs(job_id: int) -> list[int]:
    with session_scope() as session:
        rows = session.execute(select(Checkpoint.epoch).where(Checkpoint.job_id == job_id))
        return sorted(rows.scalars())


def run(job_id: int, trainer: Any) -> str:
    return runner.run_job(job_id, settings=get_settings(), trainer=trainer)


def cancel(job_id: int) -> None:
    with session_scope() as session:
        lifecycle.cancel_job(session, job_id)


def test_success_records_every_epoch_and_keeps_latest_and_best_files(new_job) -> None:
    job_id = new_job(epochs=4)
    assert run(job_id, ScriptedTrainer()) == "succeeded"
    job = job_row(job_id)
    assert (job.status, job.epochs_done, job.final_test_accuracy) == ("succeeded", 4, 0.2)
    assert epochs_recorded(job_id) == [1, 2, 3, 4]
    assert checkpoint_epochs(job_id) == [4]  # latest = best = final; older files pruned
    folder = get_settings().resolved_artifact_dir / "jobs" / str(job_id) / "attempt-1"
    assert sorted(path.name for path in folder.iterdir()) == ["epoch-0004.pt"]


def test_a_duplicate_delivery_is_skipped(new_job) -> None:
    job_id = new_job()
    assert run(job_id, ScriptedTrainer()) == "succeeded"
    assert run(job_id, ScriptedTrainer()) == "skipped"


def test_cancel_before_the_first_batch_trains_nothing(new_job) -> None:
    job_id = new_job()
    trainer = ScriptedTrainer()
    with session_scope() as session:  # claimed, then cancelled before training starts
        from jobs.lifecycle import claim_job

        claim = claim_job(session, job_id, worker="x", lease_seconds=60)
    assert claim is not None
    cancel(job_id)
    watcher = runner.LeaseWatcher(claim, get_settings())
    watcher.check_cancel()
    outcome = runner.JobRun(claim, get_settings(), watcher, trainer).run()
    assert outcome == "cancelled" and trainer.batches_trained == 0
    assert job_row(job_id).status == "cancelled"


def test_cancel_while_running_stops_within_a_second(new_job) -> None:
    job_id = new_job(epochs=3)
    trainer = ScriptedTrainer(batches=10_000)
    stopped = threading.Event()

    def slow_should_stop_wrapper(config: Any, **kwargs: Any) -> Result:
        inner = kwargs["should_stop"]

        def should_stop() -> bool:
            threading.Event().wait(0.001)
            return inner()

        kwargs["should_stop"] = should_stop
        try:
            return trainer(config, **kwargs)
        finally:
            stopped.set()

    threading.Timer(0.2, cancel, args=(job_id,)).start()
    assert run(job_id, slow_should_stop_wrapper) == "cancelled"  # HEARTBEAT_SECONDS is 60
    assert stopped.is_set() and job_row(job_id).status == "cancelled"


def test_training_error_fails_the_job_with_the_exception(new_job) -> None:
    job_id = new_job()

    def boom() -> None:
        raise RuntimeError("CUDA error: an illegal memory access")

    assert run(job_id, ScriptedTrainer(hooks={2: boom})) == "failed"
    job = job_row(job_id)
    assert job.error_reason == "training_error" and "illegal memory access" in (job.error or "")
    assert epochs_recorded(job_id) == [1, 2]


@pytest.mark.slow
def test_a_diverging_job_fails_as_diverged_keeping_the_epochs_before(
    configure, database_url: str
) -> None:
    """With the real engine, on both databases: a learning rate far too high makes a loss NaN;
    the job fails `diverged` naming the epoch and the learning rate, its earlier epochs kept
    (SQLite cannot even store a NaN in a metric column)."""
    configure(database_url)
    spec = JobCreate(
        block="mobile",
        dataset="cifar100",
        hyperparameters={"epochs": 3, "batch_size": 4, "learning_rate": 10.0, "augment": False},
        train_samples=32,
        test_samples=16,
    )
    with session_scope() as session:
        job_id = submission.create_job(session, spec, settings=get_settings()).job.id
    assert runner.run_job(job_id, settings=get_settings()) == "failed"
    job = job_row(job_id)
    assert job.error_reason == "diverged", job.error
    epoch = int((job.error or "").split("training diverged at epoch ")[1].split(":")[0])
    assert "learning_rate 10" in (job.error or "")
    assert epochs_recorded(job_id) == list(range(1, epoch))


def test_timeout(new_job, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = new_job()
    settings = get_settings().model_copy(update={"max_job_seconds": 0.0})
    assert runner.run_job(job_id, settings=settings, trainer=ScriptedTrainer()) == "failed"
    assert job_row(job_id).error_reason == "timeout"


def test_sigterm_releases_the_job_without_counting_the_attempt(new_job) -> None:
    job_id = new_job(epochs=3)
    assert run(job_id, ScriptedTrainer(hooks={1: runner.shutting_down.set})) == "released"
    job = job_row(job_id)
    assert (job.status, job.attempt, job.epochs_done) == ("queued", 0, 1)
    runner.shutting_down.clear()
    trainer = ScriptedTrainer()
    assert run(job_id, trainer) == "succeeded"  # the next attempt resumes from epoch 1's file
    assert trainer.resumed_from is not None and trainer.resumed_from.name == "epoch-0001.pt"
    assert epochs_recorded(job_id) == [1, 2, 3]


def test_cancel_during_sigterm_ends_cancelled_not_queued(new_job) -> None:
    job_id = new_job(epochs=3)

    def cancel_then_sigterm() -> None:
        with session_scope() as session:  # the cancel lands; the watcher has not seen it yet
            session.get(Job, job_id).cancel_requested = True
        runner.shutting_down.set()

    assert run(job_id, ScriptedTrainer(hooks={1: cancel_then_sigterm})) in ("cancelled",)
    assert job_row(job_id).status == "cancelled"


def test_a_worker_whose_lease_was_taken_over_writes_nothing(new_job) -> None:
    job_id = new_job(epochs=3)

    def take_over() -> None:
        with session_scope() as session:
            session.get(Job, job_id).lease_token = "another-worker"

    assert run(job_id, ScriptedTrainer(hooks={1: take_over})) == "lease_lost"
    assert epochs_recorded(job_id) == [1]


def test_missing_dataset_names_the_service_settings(new_job) -> None:
    from engine.data import DatasetUnavailable

    job_id = new_job()

    def no_data(config: Any, **kwargs: Any) -> Result:
        raise DatasetUnavailable("/srv/data/cifar-100-python is missing; pass --download")

    assert run(job_id, no_data) == "failed"
    job = job_row(job_id)
    assert job.error_reason == "dataset_unavailable"
    assert "ALLOW_DOWNLOAD" in (job.error or "") and "DATA_DIR" in (job.error or "")
    assert "--download" not in (job.error or "") and "/srv" not in (job.error or "")


def test_storage_full_fails_with_the_path(new_job) -> None:
    from engine.checkpoint import StorageFull

    job_id = new_job()

    def full(config: Any, **kwargs: Any) -> Result:
        raise StorageFull(errno.ENOSPC, kwargs["checkpoint_dir"] / "epoch-0001.pt", 90_000_000, 10)

    assert run(job_id, full) == "failed"
    job = job_row(job_id)
    assert job.error_reason == "storage_full" and "epoch-0001.pt" in (job.error or "")
    assert "ARTIFACT_DIR" in (job.error or "") and "90,000,000 bytes" in (job.error or "")


def test_a_transient_database_error_is_retried_not_fatal(new_job, monkeypatch) -> None:
    job_id = new_job(epochs=2)
    failures = iter([True, True])
    real_record = runner.record_epoch

    def flaky_record(*args: Any, **kwargs: Any) -> Any:
        if next(failures, False):
            raise OperationalError("UPDATE jobs", {}, Exception("server closed the connection"))
        return real_record(*args, **kwargs)

    monkeypatch.setattr(runner, "record_epoch", flaky_record)
    assert run(job_id, ScriptedTrainer()) == "succeeded"
    assert epochs_recorded(job_id) == [1, 2] and job_row(job_id).attempt == 1


def test_a_damaged_checkpoint_falls_back_to_an_older_intact_one(new_job) -> None:
    job_id = new_job(epochs=4)
    # Released after epoch 2: its file is the only one kept (latest and best).
    assert run(job_id, ScriptedTrainer(hooks={2: runner.shutting_down.set})) == "released"
    runner.shutting_down.clear()
    root = get_settings().resolved_artifact_dir
    with session_scope() as session:
        rows = session.execute(select(Checkpoint).where(Checkpoint.job_id == job_id)).scalars()
        paths = {row.epoch: root / row.key for row in rows}
    assert set(paths) == {2}
    paths[2].write_text("9")  # flipped bytes: the sha256 no longer matches
    trainer = ScriptedTrainer()
    assert run(job_id, trainer) == "succeeded"
    assert trainer.resumed_from is None  # no intact checkpoint: started over, said so in the log
    assert epochs_recorded(job_id) == [1, 2, 3, 4]


def test_a_checkpoint_damaged_after_it_was_verified_is_not_resumed_from(new_job) -> None:
    """The worker's store remembers verified files; a bit flipped in place with the mtime set
    back must still make the next attempt fall back to the older intact checkpoint."""
    from jobs.artifacts import ArtifactState, artifact_store

    job_id = new_job(epochs=4)
    # Epoch 1 is the best, epoch 2 the latest: both files are kept when it stops after epoch 2.
    trainer = ScriptedTrainer(
        hooks={2: runner.shutting_down.set}, test_accuracy={1: 0.9}, padding=4096
    )
    assert run(job_id, trainer) == "released"
    runner.shutting_down.clear()
    store = artifact_store(get_settings())
    with session_scope() as session:
        rows = session.execute(select(Checkpoint).where(Checkpoint.job_id == job_id)).scalars()
        recorded = {row.epoch: (row.key, row.size_bytes, row.sha256) for row in rows}
    assert set(recorded) == {1, 2}
    key, size_bytes, sha256 = recorded[2]
    assert store.state(key, size_bytes=size_bytes, sha256=sha256) == ArtifactState.INTACT

    flip_bit_keeping_mtime(get_settings().resolved_artifact_dir / key)

    resumed = ScriptedTrainer(test_accuracy={1: 0.9})
    assert run(job_id, resumed) == "succeeded"
    assert resumed.resumed_from is not None and resumed.resumed_from.name == "epoch-0001.pt"
    assert resumed.batches_trained == 3 * 3  # epochs 2, 3 and 4 trained again
    assert epochs_recorded(job_id) == [1, 2, 3, 4]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_jobs_trained_at_once_each_get_their_share_of_the_cpus(
    configure, database_url: str
) -> None:
    """WORKER_CONCURRENCY=2: two jobs train in two threads of one process, here with the real
    engine, and inside each training thread PyTorch runs on the usable CPUs divided by 2, not
    on every core (two jobs with a thread per core each slow each other down)."""
    import torch

    from engine.trainer import train
    from worker.cpus import available_cpus, threads_per_job

    configure(database_url, WORKER_CONCURRENCY="2")
    expected = threads_per_job(available_cpus(), 2)
    spec = JobCreate(
        block="mobile",
        hyperparameters={"epochs": 1, "batch_size": 8},
        train_samples=16,
        test_samples=8,
    )
    with session_scope() as session:
        ids = [submission.create_job(session, spec, settings=get_settings()).job.id for _ in "ab"]

    seen: dict[int, set[int]] = {}  # per job: torch.get_num_threads() at each batch
    recorded: dict[int, int] = {}  # per job: the count the engine reports
    both_training = threading.Barrier(2, timeout=120)

    def watched_engine(config: Any, **kwargs: Any) -> Any:
        job = threading.get_ident()
        seen[job] = set()

        def on_batch(done: int, total: int) -> None:
            if not seen[job]:
                both_training.wait()  # the other job is training too
            seen[job].add(torch.get_num_threads())

        result = train(config, on_batch=on_batch, **kwargs)
        recorded[job] = result.cpu_threads
        return result

    outcomes: list[str] = []
    threads = [
        threading.Thread(target=lambda job_id=job_id: outcomes.append(run(job_id, watched_engine)))
        for job_id in ids
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert list(seen.values()) == [{expected}, {expected}]
    assert outcomes == ["succeeded", "succeeded"]
    assert [job_row(job_id).status for job_id in ids] == ["succeeded", "succeeded"]
    assert list(recorded.values()) == [expected, expected]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.slow
def test_a_resumed_job_keeps_its_cpu_threads_when_the_machine_has_more_workers_now(
    configure, database_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    """Attempt 1 trains with every CPU (the only worker); by attempt 2 another worker shares
    the machine, which would halve the live share. The resumed attempt trains with the count
    its checkpoint was written with, and its metrics are those of a run never interrupted."""
    import subprocess
    import sys

    import torch
    from sqlalchemy import text

    from engine.trainer import train
    from jobs.tables import utcnow
    from jobs.workers import worker_heartbeat
    from worker.cpus import available_cpus

    if available_cpus() < 2:
        pytest.skip("one usable CPU: every share is one thread")
    configure(database_url, WORKER_CONCURRENCY="1", HEARTBEAT_SECONDS="60", LEASE_SECONDS="60")
    monkeypatch.delenv("TORCH_THREADS", raising=False)
    runner.shutting_down.clear()
    spec = JobCreate(
        block="mobile",
        hyperparameters={"epochs": 2, "batch_size": 8, "seed": 3},
        train_samples=32,
        test_samples=16,
    )
    with session_scope() as session:
        resumed, straight = (
            submission.create_job(session, spec, settings=get_settings()).job.id for _ in "ab"
        )
    seen: list[int] = []  # torch.get_num_threads() at each batch of the engine

    def engine(config: Any, **kwargs: Any) -> Any:
        def on_batch(done: int, total: int) -> None:
            seen.append(torch.get_num_threads())

        def on_checkpoint(written: Any) -> None:
            kwargs_on_checkpoint(written)
            if interrupt:
                runner.shutting_down.set()  # a deploy: the job goes back to the queue

        kwargs_on_checkpoint = kwargs.pop("on_checkpoint")
        return train(config, on_batch=on_batch, on_checkpoint=on_checkpoint, **kwargs)

    alone = available_cpus()
    interrupt = True
    assert run(resumed, engine) == "released"
    runner.shutting_down.clear()
    assert set(seen) == {alone} and checkpoint_epochs(resumed) == [1]

    peer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        with session_scope() as session:
            worker_heartbeat(session, "peer", concurrency=1, started_at=utcnow())
            session.execute(
                text("UPDATE workers SET pid = :pid WHERE name = 'peer'"), {"pid": peer.pid}
            )
        assert runner.job_cpu_threads(get_settings())[0] == alone // 2  # the live share now
        seen.clear()
        interrupt = False
        with caplog.at_level("INFO", logger="worker.runner"):
            assert run(resumed, engine) == "succeeded"
    finally:
        peer.kill()
        peer.wait()
    assert seen and set(seen) == {alone}
    assert f"job {resumed} resuming from" in caplog.text
    assert (
        f"trains with {alone} CPU threads (kept from the checkpoint it resumes from)" in caplog.text
    ), caplog.text

    seen.clear()
    assert run(straight, engine) == "succeeded" and set(seen) == {alone}

    def figures(job_id: int) -> list[tuple[Any, ...]]:
        with session_scope() as session:
            rows = session.execute(
                select(
                    EpochMetric.epoch,
                    EpochMetric.train_loss,
                    EpochMetric.train_accuracy,
                    EpochMetric.test_loss,
                    EpochMetric.test_accuracy,
                )
                .where(EpochMetric.job_id == job_id)
                .order_by(EpochMetric.epoch)
            )
            return [tuple(row) for row in rows]

    assert figures(resumed) == figures(straight) and len(figures(straight)) == 2


# -- checkpoints in an S3 bucket (moto's server) -------------------------------------------


@pytest.fixture
def s3_job(configure, sqlite_url: str, private_s3, tmp_path: Path):
    """Settings on SQLite and the bucket `jobs` of a private S3 server; returns a function
    that applies extra settings and creates a job."""
    runner.shutting_down.clear()

    def create(epochs: int = 3, **extra: str) -> int:
        configure(
            sqlite_url,
            HEARTBEAT_SECONDS="60",
            LEASE_SECONDS="60",
            ARTIFACT_URL="s3://jobs/ckpt",
            S3_ENDPOINT_URL=private_s3.url,
            ARTIFACT_STAGING_DIR=str(tmp_path / "staging"),
            **extra,
        )
        spec = JobCreate(block="mobile", hyperparameters={"epochs": epochs}, train_samples=10)
        with session_scope() as session:
            return submission.create_job(session, spec, settings=get_settings()).job.id

    yield create
    runner.shutting_down.clear()


def bucket_keys(server: Any) -> list[str]:
    listed = server.client().list_objects_v2(Bucket="jobs").get("Contents", [])
    return sorted(item["Key"] for item in listed)


def local_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()] if root.exists() else []


def test_on_s3_checkpoints_are_recorded_once_in_the_bucket_and_nothing_stays_local(
    s3_job, private_s3, tmp_path: Path
) -> None:
    job_id = s3_job(epochs=3)
    assert run(job_id, ScriptedTrainer()) == "succeeded"
    assert checkpoint_epochs(job_id) == [3]  # latest = best = final; older ones pruned
    assert bucket_keys(private_s3) == [f"ckpt/jobs/{job_id}/attempt-1/epoch-0003.pt"]
    assert local_files(tmp_path / "staging") == []
    assert local_files(get_settings().resolved_artifact_dir) == []


def test_on_s3_training_goes_on_while_the_store_is_down_and_loses_nothing(
    s3_job, private_s3
) -> None:
    job_id = s3_job(epochs=4)
    seen: dict[str, list[int]] = {}

    def outage() -> None:
        # Epoch 2 is trained and reported while the store answers nothing; its checkpoint
        # waits, and the outage lasts a few seconds more before the store comes back.
        seen["epochs"] = epochs_recorded(job_id)
        seen["checkpoints"] = checkpoint_epochs(job_id)
        time.sleep(3)
        private_s3.thaw()

    trainer = ScriptedTrainer(hooks={1: private_s3.freeze, 2: outage}, test_accuracy={2: 0.9})
    started = time.monotonic()
    assert run(job_id, trainer) == "succeeded"
    assert seen["epochs"] == [1, 2] and 2 not in seen["checkpoints"]
    assert trainer.batches_trained == 4 * 3
    # Epoch 2 (the best) and epoch 4 (latest, final) were both stored and recorded.
    assert checkpoint_epochs(job_id) == [2, 4]
    assert bucket_keys(private_s3) == [
        f"ckpt/jobs/{job_id}/attempt-1/epoch-0002.pt",
        f"ckpt/jobs/{job_id}/attempt-1/epoch-0004.pt",
    ]
    assert time.monotonic() - started < 30


def test_on_s3_a_store_down_past_the_upload_timeout_fails_the_job(s3_job, private_s3) -> None:
    job_id = s3_job(epochs=3, ARTIFACT_UPLOAD_TIMEOUT_SECONDS="2")
    private_s3.freeze()
    try:
        started = time.monotonic()
        assert run(job_id, ScriptedTrainer()) == "failed"
        assert time.monotonic() - started < 20  # not held up by the hanging request
    finally:
        private_s3.thaw()
    job = job_row(job_id)
    assert job.status == "failed" and job.error_reason == "artifact_store_unavailable"
    assert "ARTIFACT_UPLOAD_TIMEOUT_SECONDS" in (job.error or "")
    assert checkpoint_epochs(job_id) == []


def test_on_s3_a_replaced_object_is_not_resumed_from(s3_job, private_s3, tmp_path: Path) -> None:
    job_id = s3_job(epochs=4)
    trainer = ScriptedTrainer(hooks={2: runner.shutting_down.set}, test_accuracy={1: 0.9})
    assert run(job_id, trainer) == "released"
    runner.shutting_down.clear()
    assert checkpoint_epochs(job_id) == [1, 2]
    # Epoch 2's object replaced in the bucket by other bytes of the same size.
    private_s3.client().put_object(
        Bucket="jobs", Key=f"ckpt/jobs/{job_id}/attempt-1/epoch-0002.pt", Body=b"7"
    )
    resumed = ScriptedTrainer(test_accuracy={1: 0.9})
    assert run(job_id, resumed) == "succeeded"
    assert resumed.resumed_from is not None and resumed.resumed_from.name == "epoch-0001.pt"
    assert resumed.resumed_from.is_relative_to(tmp_path / "staging")
    assert resumed.batches_trained == 3 * 3
    assert local_files(tmp_path / "staging") == []  # the downloaded copy is gone too


def test_a_pruned_trial_stops_at_the_next_batch_and_keeps_its_last_checkpoint(
    new_job,
) -> None:
    """The pruner's decision after epoch 1 (a second trial worse than the first at asha's first
    rung) stops training at the next batch; the trial ends pruned with epoch 1's metrics and
    checkpoint, and its successor is queued in the same transaction."""
    from jobs.specs import ExperimentCreate

    del new_job  # its settings only: a job of its own would be claimed first
    body = {
        "name": "search",
        "blocks": ["mobile"],
        "hyperparameters": {"epochs": 3},
        "train_samples": 10,
        "search": {
            "space": {"learning_rate": {"uniform": [0.01, 0.1]}},
            "sampler": "random",
            "max_trials": 3,
            "pruner": {"type": "asha", "min_epochs": 1},
        },
    }
    with session_scope() as session:
        made = experiments.create_experiment(
            session, ExperimentCreate.model_validate(body), settings=get_settings()
        )
        experiment_id = made.experiment.id

    def trial(number: int) -> int:
        with session_scope() as session:
            return session.execute(
                select(Job.id).where(Job.experiment_id == experiment_id, Job.trial_number == number)
            ).scalar_one()

    first = trial(0)
    assert run(first, ScriptedTrainer()) == "succeeded"
    second = trial(1)
    trainer = ScriptedTrainer(batches=5, test_accuracy={1: 0.0})
    assert run(second, trainer) == "pruned"
    assert trainer.batches_trained == 5  # epoch 1 only: stopped at epoch 2's first batch
    job = job_row(second)
    assert (job.status, job.epochs_done, job.rung, job.prune_requested) == ("pruned", 1, 0, True)
    assert epochs_recorded(second) == [1]
    assert checkpoint_epochs(second) == [1]
    assert job_row(trial(2)).status == "queued"
