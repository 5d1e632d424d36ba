"""What the service adds to each job, how tiny jobs scale over worker processes, and how long a
1,000-job experiment takes to submit; on the embedded SQLite broker and on Redis.

For each broker it starts the real API (uvicorn) and real workers (`python -m worker`, one job
at a time each, DEVICE=cpu) in a temporary VAR_DIR with a generated CIFAR-100-format set, and
submits tiny jobs (mobile net, one epoch of `--train-samples` images) over HTTP:

- overhead: one worker, `--latency-jobs` jobs one after another, each submitted a random 0 to
  0.2 s after the one before has succeeded (the worker is idle and waiting; the submit lands
  anywhere in the embedded broker's 0.1 s poll). From the job rows: submit to claimed
  (`created_at` to `started_at`: the commit, the message, the broker's delivery, the claim) and
  the last epoch recorded to `succeeded` (the epoch row's `recorded_at` to `finished_at`),
  split at the last checkpoint's `recorded_at`: before it, the engine writes the checkpoint
  file and the store takes it; after it, the uploads are drained and the job is finished. The
  engine's data, model and training time is outside all of them.
- throughput: `--jobs` jobs submitted at once, run by 1 and by `--workers` worker processes;
  jobs per second from the first submit to the last `succeeded`, and the speed-up.
- a 1,000-job experiment (a grid of `--experiment-jobs` learning rates) submitted with no
  worker running: the request's wall time, and the time of the database transaction alone
  (the same experiment created through the core in this process and committed, without
  sending its messages).

Only 127.0.0.1 is contacted; Redis is the server at `--redis-url` (one database of it,
flushed before and after).

    python -m bench.dispatch [--brokers sqlite,redis] [--workers 4] [--jobs 40]
                             [--latency-jobs 20] [--train-samples 32]
                             [--experiment-jobs 1000] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from bench.api_latency import service_environment, this_process_uses
from jobs.queue import SQLITE_BROKER_POLL_SECONDS

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/11"
READY_TIMEOUT_SECONDS = 120.0
JOB_TIMEOUT_SECONDS = 600.0


def tiny_job(train_samples: int, number: int) -> dict[str, Any]:
    return {
        "block": "mobile",
        "hyperparameters": {"epochs": 1, "batch_size": 32, "seed": number % 1000},
        "train_samples": train_samples,
        "test_samples": max(train_samples // 4, 10),
        "name": f"tiny {number}",
    }


def _ms(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds() * 1000.0


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "median": round(statistics.median(ordered), 1),
        "p95": round(p95, 1),
        "max": round(ordered[-1], 1),
    }


def _parse(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


class Service:
    """The API and a number of workers on one VAR_DIR and broker."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        from tests.support import free_port, start_api

        self.workdir = workdir
        self.env = env
        self.port = free_port()
        self.api = start_api(env, workdir, self.port)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=120)
        self.workers: list[Any] = []
        self.engine = create_engine(f"sqlite:///{workdir / 'var' / 'jobs.sqlite3'}")

    def start_workers(self, count: int) -> None:
        from tests.support import start_worker, wait_for

        if len(self.workers) == count and all(worker.alive() for worker in self.workers):
            return  # the same workers go on
        self.stop_workers()
        names = [f"bench-{len(self.workers) + number}-{time.time_ns()}" for number in range(count)]
        self.workers = [start_worker(self.env, self.workdir, name) for name in names]

        def ready() -> bool:
            for worker in self.workers:
                if not worker.alive():
                    raise AssertionError(f"a worker exited:\n{worker.output()}")
            with self.engine.connect() as connection:
                rows = connection.execute(text("SELECT name FROM workers")).scalars().all()
            return set(names) <= set(rows)

        wait_for(ready, timeout=READY_TIMEOUT_SECONDS, interval=0.5, what="the workers")

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop(timeout=60)
        self.workers = []

    def submit(self, spec: dict[str, Any]) -> int:
        response = self.client.post("/jobs", json=spec)
        response.raise_for_status()
        return int(response.json()["id"])

    def wait_ended(self, job_ids: list[int]) -> None:
        from tests.support import wait_for

        wanted = ",".join(str(job_id) for job_id in job_ids)

        def ended() -> bool:
            with self.engine.connect() as connection:
                statuses = connection.execute(
                    text(f"SELECT status FROM jobs WHERE id IN ({wanted})")
                ).scalars()
                return all(status in ("succeeded", "failed", "cancelled") for status in statuses)

        wait_for(ended, timeout=JOB_TIMEOUT_SECONDS, interval=0.01, what="the jobs to end")
        with self.engine.connect() as connection:
            bad = connection.execute(
                text(
                    f"SELECT id, status FROM jobs WHERE id IN ({wanted}) AND status != 'succeeded'"
                )
            ).all()
        if bad:
            raise AssertionError(f"jobs did not succeed: {bad}; see the logs in {self.workdir}")

    def timings(self, job_ids: list[int]) -> list[dict[str, datetime]]:
        wanted = ",".join(str(job_id) for job_id in job_ids)
        with self.engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT j.created_at, j.started_at, j.finished_at, "
                    "(SELECT MAX(m.recorded_at) FROM epoch_metrics m WHERE m.job_id = j.id), "
                    "(SELECT MAX(c.recorded_at) FROM checkpoint_files c WHERE c.job_id = j.id) "
                    f"FROM jobs j WHERE j.id IN ({wanted}) ORDER BY j.id"
                )
            ).all()
        return [
            {
                "created": _parse(row[0]),
                "claimed": _parse(row[1]),
                "finished": _parse(row[2]),
                "last_epoch": _parse(row[3]),
                "last_checkpoint": _parse(row[4]),
            }
            for row in rows
        ]

    def close(self) -> None:
        self.stop_workers()
        self.client.close()
        self.api.stop()
        self.engine.dispose()


@contextmanager
def service(broker: str, workdir: Path, redis_url: str) -> Iterator[Service]:
    from engine.synthetic import generate_cifar
    from jobs.migrations import upgrade

    env = service_environment(workdir)
    env["MAX_QUEUED_JOBS"] = "100000"
    env["WORKER_CONCURRENCY"] = "1"
    if broker == "redis":
        env["CELERY_BROKER_URL"] = redis_url
        _flush_redis(redis_url)
    generate_cifar(
        workdir / "data", "cifar100", classes=10, train_per_class=50, test_per_class=10, seed=0
    )
    with this_process_uses(env):
        upgrade()
        running = Service(workdir, env)
        try:
            yield running
        finally:
            running.close()
            if broker == "redis":
                _flush_redis(redis_url)


def _flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def measure_overhead(running: Service, jobs: int, train_samples: int) -> dict[str, Any]:
    running.start_workers(1)
    # One job first so that the worker has loaded the data and built a net once.
    warm = running.submit(tiny_job(train_samples, 0))
    running.wait_ended([warm])
    pause = random.Random(0)
    ids = []
    for number in range(1, jobs + 1):
        # A user submits at any moment, not just as the worker finished its last job: land
        # anywhere in the embedded broker's poll interval.
        time.sleep(pause.uniform(0, 2 * SQLITE_BROKER_POLL_SECONDS))
        job_id = running.submit(tiny_job(train_samples, number))
        running.wait_ended([job_id])
        ids.append(job_id)
    rows = running.timings(ids)

    def spans(start: str, end: str) -> dict[str, float]:
        return _summary([_ms(row[start], row[end]) for row in rows])

    return {
        "jobs": jobs,
        "submit_to_claimed_ms": spans("created", "claimed"),
        "last_epoch_to_succeeded_ms": spans("last_epoch", "finished"),
        # ...of which: the engine writes the last checkpoint file, the store takes it and its
        # row is recorded; then the uploads are drained and the job is finished.
        "last_epoch_to_checkpoint_recorded_ms": spans("last_epoch", "last_checkpoint"),
        "checkpoint_recorded_to_succeeded_ms": spans("last_checkpoint", "finished"),
        "claimed_to_last_epoch_ms": spans("claimed", "last_epoch"),
    }


def measure_throughput(running: Service, workers: int, jobs: int, train_samples: int) -> float:
    running.start_workers(workers)
    warm = [running.submit(tiny_job(train_samples, number)) for number in range(workers)]
    running.wait_ended(warm)
    ids = [running.submit(tiny_job(train_samples, number)) for number in range(jobs)]
    running.wait_ended(ids)
    rows = running.timings(ids)
    span = (
        max(row["finished"] for row in rows) - min(row["created"] for row in rows)
    ).total_seconds()
    return jobs / span


def measure_experiment(running: Service, jobs: int, train_samples: int) -> dict[str, float]:
    running.stop_workers()
    grid = {"learning_rate": [round(0.0001 + 0.0001 * number, 6) for number in range(jobs)]}
    spec = {
        "name": f"{jobs} jobs",
        "blocks": ["mobile"],
        "hyperparameters": {"epochs": 1},
        "train_samples": train_samples,
        "test_samples": max(train_samples // 4, 10),
        "grid": grid,
    }
    started = time.perf_counter()
    response = running.client.post("/experiments", json=spec)
    request_s = time.perf_counter() - started
    response.raise_for_status()
    created = int(response.json()["job_count"])
    transaction_s = _experiment_transaction_seconds(spec)
    return {
        "jobs": created,
        "request_s": round(request_s, 3),
        "transaction_s": round(transaction_s, 3),
    }


def _experiment_transaction_seconds(spec: dict[str, Any]) -> float:
    """The same experiment created through the core and committed, its messages not sent."""
    from jobs import wiring
    from jobs.db import session_scope
    from jobs.experiments import create_experiment
    from jobs.queue import _PENDING
    from jobs.settings import get_settings
    from jobs.specs import ExperimentCreate

    wiring.connect()
    parsed = ExperimentCreate.model_validate({**spec, "name": spec["name"] + " (core)"})
    started = time.perf_counter()
    with session_scope() as session:
        create_experiment(session, parsed, settings=get_settings())
        session.info.pop(_PENDING, None)  # time the transaction alone: no message is sent
    return time.perf_counter() - started


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for broker in args.brokers.split(","):
        with (
            tempfile.TemporaryDirectory(prefix=f"bench-dispatch-{broker}-") as tmp,
            service(broker, Path(tmp), args.redis_url) as running,
        ):
            figures: dict[str, Any] = {}
            figures["overhead"] = measure_overhead(running, args.latency_jobs, args.train_samples)
            print(broker, "overhead", json.dumps(figures["overhead"]), flush=True)
            one = measure_throughput(running, 1, args.jobs, args.train_samples)
            many = measure_throughput(running, args.workers, args.jobs, args.train_samples)
            figures["throughput"] = {
                "jobs": args.jobs,
                "one_worker_jobs_per_s": round(one, 2),
                f"{args.workers}_workers_jobs_per_s": round(many, 2),
                "workers": args.workers,
                "speedup": round(many / one, 2),
            }
            print(broker, "throughput", json.dumps(figures["throughput"]), flush=True)
            if args.experiment_jobs:
                figures["experiment"] = measure_experiment(
                    running, args.experiment_jobs, args.train_samples
                )
                print(broker, "experiment", json.dumps(figures["experiment"]), flush=True)
            results[broker] = figures
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", default="sqlite,redis")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--latency-jobs", type=int, default=20)
    parser.add_argument("--train-samples", type=int, default=32)
    parser.add_argument("--experiment-jobs", type=int, default=1000)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results = run(args)
    print()
    print(
        "| broker | submit to claimed, ms (median, p95) | last epoch to succeeded, ms "
        "(median, p95) | 1 worker, jobs/s | "
        f"{args.workers} workers, jobs/s | speed-up | {args.experiment_jobs}-job experiment: "
        "request s, transaction s |"
    )
    print("|---|---|---|---|---|---|---|")
    for broker, figures in results.items():
        overhead = figures["overhead"]
        claim = overhead["submit_to_claimed_ms"]
        end = overhead["last_epoch_to_succeeded_ms"]
        throughput = figures["throughput"]
        experiment = figures.get("experiment", {})
        print(
            f"| {broker} | {claim['median']}, {claim['p95']} | {end['median']}, {end['p95']} | "
            f"{throughput['one_worker_jobs_per_s']} | "
            f"{throughput[f'{args.workers}_workers_jobs_per_s']} | {throughput['speedup']}x | "
            f"{experiment.get('request_s', '-')}, {experiment.get('transaction_s', '-')} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
