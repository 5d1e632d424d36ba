"""Read and write latency of the API over a lab's year of jobs.

Builds a database of `--jobs` jobs in bulk SQL (not through the API): most finished with
`--epochs` epochs each, 1% queued and 0.2% running, 80% of them in experiments of 50 jobs and
the rest submitted alone, created over a year; on the embedded SQLite default or on
PostgreSQL. The event log holds each job's status events (the routes measured do not read it).
Then it starts the real API (uvicorn, one process) on that database and times, one request at
a time after two warm-up requests each, `--requests` requests of every route below, and prints
p50 and p95 in milliseconds (a Markdown table; `--json PATH` writes every figure).

    python -m bench.scale --jobs 100000 [--database sqlite|postgresql] [--epochs 100]
                          [--requests 50] [--postgres-url URL] [--json PATH]

On PostgreSQL it creates a database of its own on the server of `--postgres-url` (default
postgresql+psycopg://postgres@127.0.0.1:5432/test) and drops it at the end. Only 127.0.0.1 is
contacted.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, insert, text

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
EXPERIMENT_SIZE = 50
YEAR = timedelta(days=365)
TAG = "nightly"


@contextmanager
def _database(kind: str, workdir: Path, postgres_url: str) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'jobs.sqlite3'}"
        return
    name = f"bench_scale_{uuid.uuid4().hex[:8]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _status(rng: random.Random, index: int, jobs: int) -> str:
    """The newest 1% queued and the 0.2% before them running; the rest mostly succeeded."""
    if index >= jobs - max(1, jobs // 100):
        return "queued"
    if index >= jobs - max(1, jobs // 100) - max(1, jobs // 500):
        return "running"
    draw = rng.random()
    return "succeeded" if draw < 0.9 else "failed" if draw < 0.95 else "cancelled"


def build(database_url: str, *, jobs: int, epochs: int, seed: int = 0) -> dict[str, Any]:
    """Fill a migrated, empty database; returns ids worth asking about."""
    from jobs.dispatch import DEFAULT_PRIORITY
    from jobs.specs import JobCreate
    from jobs.tables import Experiment, Job, JobEvent, JobTag
    from models.catalog import block_complexity

    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    step = YEAR / max(jobs, 1)
    engine = create_engine(database_url)
    experiments: list[dict[str, Any]] = []
    job_rows: list[dict[str, Any]] = []
    tag_rows: list[dict[str, Any]] = []
    event_rows: list[dict[str, Any]] = []
    finished_epochs: dict[int, int] = {}
    grouped = int(jobs * 0.8)
    for index in range(jobs):
        job_id = index + 1
        created = start + step * index
        experiment_id = None
        if index < grouped:
            experiment_id = index // EXPERIMENT_SIZE + 1
            if index % EXPERIMENT_SIZE == 0:
                experiments.append(
                    {
                        "id": experiment_id,
                        "name": f"sweep {experiment_id}",
                        "preset": None,
                        "tags": [],
                        "spec": {"blocks": ["mobile"], "grid": {}, "seeds": None},
                        "created_at": created,
                        "priority": DEFAULT_PRIORITY,
                    }
                )
        block = ("plain", "residual", "mobile")[index % 3]
        spec = JobCreate.model_validate(
            {
                "block": block,
                "hyperparameters": {"epochs": epochs, "seed": index % 5},
                "tags": [TAG] if index % 10 == 0 else [],
            }
        )
        complexity = block_complexity(block, 100)
        status = _status(rng, index, jobs)
        done = {"succeeded": epochs, "failed": rng.randint(1, epochs), "cancelled": 0}
        done["cancelled"] = rng.randint(0, epochs)
        done["running"] = rng.randint(0, epochs // 2)
        done["queued"] = 0
        epochs_done = done[status]
        best = None
        if epochs_done:
            finished_epochs[job_id] = epochs_done
            best = 0.3 + 0.4 * rng.random()
        ended = status in ("succeeded", "failed", "cancelled")
        job_rows.append(
            {
                "id": job_id,
                "experiment_id": experiment_id,
                "name": f"job {job_id}",
                "tags": spec.tags,
                "block": block,
                "dataset": "cifar100",
                "spec": spec.model_dump(mode="json"),
                "config": spec.train_config().model_dump(mode="json"),
                "status": status,
                "error_reason": "training_error" if status == "failed" else None,
                "error": "RuntimeError: bench" if status == "failed" else None,
                "cancel_requested": status == "cancelled",
                "priority": DEFAULT_PRIORITY,
                "fair_share_key": index % EXPERIMENT_SIZE if experiment_id else 0,
                "params": complexity.params,
                "macs": complexity.macs,
                "epochs_total": epochs,
                "epochs_done": epochs_done,
                "best_test_accuracy": best,
                "final_test_accuracy": None if best is None else best - 0.01,
                "final_train_loss": None if best is None else 0.5,
                "attempt": 0 if status == "queued" else 1,
                "max_attempts": 3,
                "worker": None if status == "queued" else "bench",
                "lease_token": uuid.uuid4().hex if status == "running" else None,
                "lease_expires_at": created + timedelta(days=400) if status == "running" else None,
                "heartbeat_at": None,
                "enqueued_at": created,
                "enqueue_count": 1,
                "idempotency_key": None,
                "request_sha256": spec.fingerprint(),
                "created_at": created,
                "started_at": None if status == "queued" else created + timedelta(seconds=5),
                "finished_at": created + timedelta(hours=2) if ended else None,
                "updated_at": created,
                "event_seq": 1 + (status != "queued") + ended,
            }
        )
        tag_rows += [{"tag": tag, "job_id": job_id} for tag in spec.tags]
        for seq, shown in enumerate(
            ["queued", *(["running"] if status != "queued" else []), *([status] if ended else [])],
            start=1,
        ):
            event_rows.append(
                {
                    "job_id": job_id,
                    "experiment_id": experiment_id,
                    "seq": seq,
                    "kind": "status",
                    "data": {"job_id": job_id, "status": shown},
                    "created_at": created,
                }
            )
    with engine.begin() as connection:
        if experiments:
            connection.execute(insert(Experiment), experiments)
        for chunk in range(0, len(job_rows), 5000):
            connection.execute(insert(Job), job_rows[chunk : chunk + 5000])
        if tag_rows:
            connection.execute(insert(JobTag), tag_rows)
        for chunk in range(0, len(event_rows), 20000):
            connection.execute(insert(JobEvent), event_rows[chunk : chunk + 20000])
    _insert_metrics(engine, finished_epochs, start, rng)
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("ANALYZE"))
            # The bulk-inserted experiments and job events took explicit ids.
            connection.execute(
                text("SELECT setval('experiments_id_seq', (SELECT max(id) FROM experiments))")
            )
            connection.execute(text("SELECT setval('jobs_id_seq', (SELECT max(id) FROM jobs))"))
        else:
            connection.execute(text("ANALYZE"))
    engine.dispose()
    queued = [row["id"] for row in job_rows if row["status"] == "queued"]
    succeeded = [row["id"] for row in job_rows if row["status"] == "succeeded"]
    return {
        "jobs": jobs,
        "epoch_rows": sum(finished_epochs.values()),
        "experiments": len(experiments),
        "queued_job": queued[len(queued) // 2],
        "finished_job": succeeded[len(succeeded) // 2],
        "experiment": max(1, len(experiments) // 2),
    }


def _insert_metrics(
    engine: Any, finished_epochs: dict[int, int], start: datetime, rng: random.Random
) -> None:
    """Every epoch row, through the driver's fastest path (COPY on PostgreSQL)."""

    def rows() -> Iterator[tuple[Any, ...]]:
        for job_id, count in finished_epochs.items():
            for epoch in range(1, count + 1):
                accuracy = min(0.99, 0.01 * epoch**0.5 * 7 + rng.random() * 0.01)
                yield (
                    job_id,
                    epoch,
                    4.0 / epoch,
                    accuracy,
                    3.0 / epoch,
                    accuracy,
                    0.01,
                    30.0,
                    1600.0,
                )

    columns = (
        "job_id, epoch, train_loss, train_accuracy, test_loss, test_accuracy, learning_rate, "
        "seconds, images_per_second, recorded_at"
    )
    stamp = start.replace(tzinfo=None)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        if engine.dialect.name == "postgresql":
            with cursor.copy(f"COPY epoch_metrics ({columns}) FROM STDIN") as copy:
                buffer = io.StringIO()
                for count, row in enumerate(rows(), start=1):
                    buffer.write("\t".join(map(str, row)) + f"\t{stamp.isoformat()}+00:00\n")
                    if count % 100_000 == 0:
                        copy.write(buffer.getvalue())
                        buffer = io.StringIO()
                copy.write(buffer.getvalue())
        else:
            cursor.execute("PRAGMA synchronous=OFF")
            cursor.executemany(
                f"INSERT INTO epoch_metrics ({columns}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                ((*row, stamp.strftime("%Y-%m-%d %H:%M:%S.%f")) for row in rows()),
            )
        raw.commit()
    finally:
        raw.close()


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": statistics.median(ordered) * 1000,
        "p95_ms": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000,
    }


def measure(base: str, ids: dict[str, Any], requests: int) -> dict[str, dict[str, float]]:
    """Each route's p50 and p95, one request at a time."""
    from jobs.listing import Cursor

    last_page = Cursor("jobs:created", 51).encode()  # the page holding jobs 50..1
    routes: dict[str, Callable[[httpx.Client, int], httpx.Response]] = {
        "GET /jobs?limit=50": lambda api, n: api.get("/jobs", params={"limit": 50}),
        "GET /jobs?status=succeeded": lambda api, n: api.get(
            "/jobs", params={"limit": 50, "status": "succeeded"}
        ),
        "GET /jobs?status=queued": lambda api, n: api.get(
            "/jobs", params={"limit": 50, "status": "queued"}
        ),
        "GET /jobs?block=plain": lambda api, n: api.get(
            "/jobs", params={"limit": 50, "block": "plain"}
        ),
        "GET /jobs?experiment_id=": lambda api, n: api.get(
            "/jobs", params={"limit": 50, "experiment_id": ids["experiment"]}
        ),
        "GET /jobs?tag=": lambda api, n: api.get("/jobs", params={"limit": 50, "tag": TAG}),
        "GET /jobs?sort=best_test_accuracy": lambda api, n: api.get(
            "/jobs", params={"limit": 50, "sort": "best_test_accuracy"}
        ),
        "GET /jobs (last page)": lambda api, n: api.get(
            "/jobs", params={"limit": 50, "cursor": last_page}
        ),
        "GET /jobs/{id} (queued)": lambda api, n: api.get(f"/jobs/{ids['queued_job']}"),
        "GET /jobs/{id} (finished)": lambda api, n: api.get(f"/jobs/{ids['finished_job']}"),
        "GET /jobs/{id}/metrics": lambda api, n: api.get(f"/jobs/{ids['finished_job']}/metrics"),
        "GET /experiments?limit=50": lambda api, n: api.get("/experiments", params={"limit": 50}),
        "GET /experiments/{id}": lambda api, n: api.get(f"/experiments/{ids['experiment']}"),
        "GET / (dashboard)": lambda api, n: api.get("/"),
        "GET /metrics (Prometheus)": lambda api, n: api.get("/metrics"),
        "POST /jobs": lambda api, n: api.post(
            "/jobs",
            json={"block": "mobile", "hyperparameters": {"epochs": 1, "seed": n}},
        ),
    }
    results = {}
    with httpx.Client(base_url=base, timeout=60) as api:
        for name, call in routes.items():
            samples = []
            for n in range(requests + 2):
                started = time.perf_counter()
                response = call(api, n)
                elapsed = time.perf_counter() - started
                if response.status_code not in (200, 202):
                    raise RuntimeError(f"{name}: {response.status_code} {response.text[:300]}")
                if n >= 2:  # two warm-up requests
                    samples.append(elapsed)
            results[name] = _percentiles(samples)
    return results


@contextmanager
def _api(database_url: str, workdir: Path) -> Iterator[str]:
    from tests.support import free_port, start_api

    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "API_KEY"))},
        "DATABASE_URL": database_url,
        "VAR_DIR": str(workdir / "var"),
        "MAX_QUEUED_JOBS": "1000000",
        "ALLOW_DOWNLOAD": "false",
    }
    api = start_api(env, workdir, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        api.stop()


def run(
    *, jobs: int, database: str, epochs: int, requests: int, postgres_url: str
) -> dict[str, Any]:
    from jobs.migrations import upgrade

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as folder:
        workdir = Path(folder)
        with _database(database, workdir, postgres_url) as url:
            upgrade(url)
            started = time.perf_counter()
            ids = build(url, jobs=jobs, epochs=epochs)
            build_seconds = time.perf_counter() - started
            print(
                f"built {jobs} jobs, {ids['epoch_rows']} epoch rows on {database} in "
                f"{build_seconds:.0f} s",
                file=sys.stderr,
            )
            with _api(url, workdir) as base:
                latency = measure(base, ids, requests)
    return {
        "database": database,
        "jobs": jobs,
        "epoch_rows": ids["epoch_rows"],
        "build_seconds": build_seconds,
        "requests": requests,
        "latency": latency,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"{result['database']}, {result['jobs']:,} jobs, {result['epoch_rows']:,} epoch rows:",
        "",
        "| route | p50 ms | p95 ms |",
        "|---|---|---|",
    ]
    for name, row in result["latency"].items():
        lines.append(f"| `{name}` | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if args.jobs < 10 or args.epochs < 1 or args.requests < 1:
        parser.error("--jobs must be at least 10, --epochs and --requests at least 1")
    result = run(
        jobs=args.jobs,
        database=args.database,
        epochs=args.epochs,
        requests=args.requests,
        postgres_url=args.postgres_url,
    )
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
