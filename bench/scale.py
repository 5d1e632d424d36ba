"""Read and write latency of the API over a lab's year of jobs, on hostile shapes.

Builds a database of `--jobs` jobs in bulk SQL (not through the API): experiments of
`--experiment-size` jobs (1,000, the API's maximum and what one search makes) spread over the
year with the jobs submitted alone between them (a fifth of the jobs), the newest
`--queued` (10 %, the default MAX_QUEUED_JOBS at 100,000 jobs) queued and 0.2 % before them
running, the rest mostly finished with `--epochs` epochs each, every tenth job tagged; on the
embedded SQLite default or on PostgreSQL. The service's kept figures (status counts, each
job's epoch times, the tag rows' copy of their job's columns) are made as the migrations make
them for an existing database. The database has no statistics: no ANALYZE is run (the service
runs none) and PostgreSQL's autovacuum is off for its tables, unless `--analyze`.

Then it starts the real API (uvicorn, one process) on that database and times, one request at a
time after two warm-up requests each, `--requests` requests of every route below: every filter,
filter pair and sort of GET /jobs, the experiment routes on a 1,000-job experiment, the
Prometheus scrape and the submissions. It prints p50 and p95 in milliseconds, the CPU
milliseconds per request of the API process (and, on PostgreSQL, of the server processes that
serve it), which a loaded machine inflates much less than wall time, and the largest answer's
size (a Markdown table; `--json PATH` writes every figure).

    python -m bench.scale --jobs 100000 [--database sqlite|postgresql] [--epochs 100]
                          [--requests 50] [--experiment-size 1000] [--queued 0.1] [--analyze]
                          [--postgres-url URL] [--json PATH]

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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, create_engine, insert, text

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
EXPERIMENT_SIZE = 1000
GROUPED = 0.8  # the share of jobs in experiments
QUEUED = 0.1
RUNNING = 0.002
YEAR = timedelta(days=365)
TAG = "nightly"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The tables whose statistics the planner would use; their autovacuum is off on PostgreSQL.
PLANNED_TABLES = ("jobs", "job_tags", "experiments", "epoch_metrics", "job_counts", "job_events")


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


@dataclass(frozen=True)
class Shape:
    """How the benchmark's jobs are laid out."""

    jobs: int
    epochs: int
    experiment_size: int = EXPERIMENT_SIZE
    queued: float = QUEUED

    @property
    def size(self) -> int:
        """Jobs per experiment: `experiment_size`, or all the grouped jobs when fewer."""
        return max(1, min(self.experiment_size, int(self.jobs * GROUPED)))

    @property
    def period(self) -> int:
        """An experiment's jobs, then the jobs submitted alone before the next one."""
        return self.size + round(self.size * (1 - GROUPED) / GROUPED)

    def experiment_of(self, index: int) -> int | None:
        cycle, offset = divmod(index, self.period)
        return cycle + 1 if offset < self.size else None

    def status(self, rng: random.Random, index: int) -> str:
        """The newest `queued` share queued and the 0.2 % before them running; the rest mostly
        succeeded."""
        queued = max(1, int(self.jobs * self.queued))
        if index >= self.jobs - queued:
            return "queued"
        if index >= self.jobs - queued - max(1, int(self.jobs * RUNNING)):
            return "running"
        draw = rng.random()
        return "succeeded" if draw < 0.9 else "failed" if draw < 0.95 else "cancelled"


def build(database_url: str, shape: Shape, *, seed: int = 0) -> dict[str, Any]:
    """Fill a migrated, empty database; returns ids worth asking about."""
    from sqlalchemy.orm import Session

    from jobs.dispatch import DEFAULT_PRIORITY
    from jobs.specs import JobCreate
    from jobs.status_counts import recount
    from jobs.tables import Experiment, Job, JobEvent, JobTag
    from models.catalog import block_complexity

    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    step = YEAR / max(shape.jobs, 1)
    engine = create_engine(database_url)
    experiments: dict[int, dict[str, Any]] = {}
    job_rows: list[dict[str, Any]] = []
    tag_rows: list[dict[str, Any]] = []
    event_rows: list[dict[str, Any]] = []
    event_seqs: dict[int | None, int] = {}  # per experiment, its last event number
    finished: dict[int, tuple[int, float]] = {}  # job id: epochs recorded, seconds each
    queued_in: dict[int | None, int] = {}  # queued jobs so far per experiment (fair share)
    specs = {
        (block, seed_value, tagged): JobCreate.model_validate(
            {
                "block": block,
                "hyperparameters": {"epochs": shape.epochs, "seed": seed_value},
                "tags": [TAG] if tagged else [],
            }
        )
        for block in ("plain", "residual", "mobile")
        for seed_value in range(5)
        for tagged in (False, True)
    }
    for index in range(shape.jobs):
        job_id = index + 1
        created = start + step * index
        experiment_id = shape.experiment_of(index)
        if experiment_id is not None and experiment_id not in experiments:
            experiments[experiment_id] = {
                "id": experiment_id,
                "name": f"sweep {experiment_id}",
                "preset": None,
                "tags": [],
                "spec": {"blocks": ["plain", "residual", "mobile"], "grid": {}, "seeds": None},
                "created_at": created,
                "priority": DEFAULT_PRIORITY,
            }
        block = ("plain", "residual", "mobile")[index % 3]
        spec = specs[(block, index % 5, index % 10 == 0)]
        complexity = block_complexity(block, 100)
        status = shape.status(rng, index)
        done = {"succeeded": shape.epochs, "queued": 0}
        done["failed"] = rng.randint(1, shape.epochs)
        done["cancelled"] = rng.randint(0, shape.epochs)
        done["running"] = rng.randint(0, shape.epochs // 2)
        epochs_done = done[status]
        seconds = 20.0 + 20.0 * rng.random()
        best = None
        if epochs_done:
            finished[job_id] = (epochs_done, seconds)
            best = 0.3 + 0.4 * rng.random()
        ended = status in ("succeeded", "failed", "cancelled")
        fair_share_key = 0
        if status == "queued":
            fair_share_key = queued_in.get(experiment_id, 0) if experiment_id else 0
            queued_in[experiment_id] = fair_share_key + 1
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
                "fair_share_key": fair_share_key,
                "params": complexity.params,
                "macs": complexity.macs,
                "epochs_total": shape.epochs,
                "epochs_done": epochs_done,
                "best_test_accuracy": best,
                "final_test_accuracy": None if best is None else best - 0.01,
                "final_train_loss": None if best is None else 0.5 + rng.random(),
                "epoch_seconds": epochs_done * seconds,
                "epochs_recorded": epochs_done,
                "seconds_per_epoch": seconds if epochs_done else None,
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
        tag_rows += [
            {
                "tag": tag,
                "job_id": job_id,
                "status": status,
                "block": block,
                "experiment_id": experiment_id,
                "best_test_accuracy": best,
            }
            for tag in spec.tags
        ]
        for seq, shown in enumerate(
            ["queued", *(["running"] if status != "queued" else []), *([status] if ended else [])],
            start=1,
        ):
            last = shown == status
            event_seqs[experiment_id] = event_seqs.get(experiment_id, 0) + 1
            event_rows.append(
                {
                    "job_id": job_id,
                    "experiment_id": experiment_id,
                    "seq": seq,
                    "experiment_seq": event_seqs[experiment_id] if experiment_id else None,
                    "kind": "status",
                    # As record_status writes them (jobs.events.STATUS_FIELDS).
                    "data": {
                        "job_id": job_id,
                        "status": shown,
                        "epochs_done": epochs_done if last else 0,
                        "epochs_total": shape.epochs,
                        "attempt": 0 if shown == "queued" else 1,
                        "cancel_requested": last and status == "cancelled",
                        "error_reason": job_rows[-1]["error_reason"] if last else None,
                        "error": job_rows[-1]["error"] if last else None,
                        "best_test_accuracy": best if last else None,
                        "final_test_accuracy": job_rows[-1]["final_test_accuracy"]
                        if last
                        else None,
                        "final_train_loss": job_rows[-1]["final_train_loss"] if last else None,
                        "ended": last and ended,
                    },
                    "created_at": created,
                }
            )
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            for table in PLANNED_TABLES:
                connection.execute(text(f"ALTER TABLE {table} SET (autovacuum_enabled = false)"))
        if experiments:
            connection.execute(insert(Experiment), list(experiments.values()))
        for chunk in range(0, len(job_rows), 5000):
            connection.execute(insert(Job), job_rows[chunk : chunk + 5000])
        for chunk in range(0, len(tag_rows), 20000):
            connection.execute(insert(JobTag), tag_rows[chunk : chunk + 20000])
        for chunk in range(0, len(event_rows), 20000):
            connection.execute(insert(JobEvent), event_rows[chunk : chunk + 20000])
    _insert_metrics(engine, finished, start, rng)
    with Session(engine) as session, session.begin():
        recount(session)
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            # The bulk-inserted experiments and jobs took explicit ids.
            connection.execute(
                text("SELECT setval('experiments_id_seq', (SELECT max(id) FROM experiments))")
            )
            connection.execute(text("SELECT setval('jobs_id_seq', (SELECT max(id) FROM jobs))"))
    engine.dispose()
    return _ids(job_rows, experiments)


def _ids(job_rows: list[dict[str, Any]], experiments: dict[int, Any]) -> dict[str, Any]:
    """The jobs and experiments the routes ask about: from the middle of their kind."""
    queued = [row for row in job_rows if row["status"] == "queued"]
    succeeded = [row["id"] for row in job_rows if row["status"] == "succeeded"]
    finished_experiments = sorted(
        {row["experiment_id"] for row in job_rows if row["experiment_id"]}
        - {row["experiment_id"] for row in queued}
    )
    queued_experiments = sorted({row["experiment_id"] for row in queued if row["experiment_id"]})
    return {
        "jobs": len(job_rows),
        "experiments": len(experiments),
        "queued_job": queued[len(queued) // 2]["id"],
        "finished_job": succeeded[len(succeeded) // 2],
        "experiment": _middle(finished_experiments or sorted(experiments)),
        "queued_experiment": queued_experiments[-1] if queued_experiments else 1,
    }


def _middle(values: list[int]) -> int:
    return values[len(values) // 2]


def _insert_metrics(
    engine: Engine, finished: dict[int, tuple[int, float]], start: datetime, rng: random.Random
) -> None:
    """Every epoch row, through the driver's fastest path (COPY on PostgreSQL)."""

    def rows() -> Iterator[tuple[Any, ...]]:
        for job_id, (count, seconds) in finished.items():
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
                    seconds,
                    1600.0,
                )

    columns = (
        "job_id, epoch, train_loss, train_accuracy, test_loss, test_accuracy, learning_rate, "
        "seconds, images_per_second, recorded_at"
    )
    stamp = start.replace(tzinfo=None)
    raw = engine.raw_connection()
    try:
        cursor: Any = raw.cursor()
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


def analyze(database_url: str) -> None:
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("ANALYZE"))
    engine.dispose()


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": statistics.median(ordered) * 1000,
        "p95_ms": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000,
    }


def _process_cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (its threads included)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class CpuMeter:
    """The CPU time the API process, and the PostgreSQL server processes connected to the
    benchmark's database, spent between two readings."""

    def __init__(self, api_pid: int, database_url: str) -> None:
        self.api_pid = api_pid
        self.database: str | None = None
        self.admin: Engine | None = None
        if database_url.startswith("postgresql"):
            self.database = database_url.rsplit("/", 1)[1]
            self.admin = create_engine(database_url)

    def _server_pids(self) -> list[int]:
        if self.admin is None:
            return []
        with self.admin.connect() as connection:
            return list(
                connection.execute(
                    text(
                        "SELECT pid FROM pg_stat_activity WHERE datname = :name "
                        "AND pid <> pg_backend_pid()"
                    ),
                    {"name": self.database},
                ).scalars()
            )

    def read(self) -> tuple[float, dict[int, float]]:
        servers = {pid: _process_cpu_seconds(pid) for pid in self._server_pids()}
        return _process_cpu_seconds(self.api_pid), servers

    @staticmethod
    def spent(
        before: tuple[float, dict[int, float]], after: tuple[float, dict[int, float]]
    ) -> tuple[float, float]:
        """(API seconds, database server seconds) between two readings."""
        server = sum(value - before[1].get(pid, 0.0) for pid, value in after[1].items())
        return after[0] - before[0], max(server, 0.0)

    def close(self) -> None:
        if self.admin is not None:
            self.admin.dispose()


Call = Callable[[httpx.Client, int], httpx.Response]


def routes(ids: dict[str, Any], client: httpx.Client) -> dict[str, Call]:
    """Every route measured, by name."""
    from jobs.listing import Cursor

    experiment = ids["experiment"]
    queued_experiment = ids["queued_experiment"]
    last_page = Cursor("jobs:created", 51).encode()  # the page holding jobs 50..1

    def jobs(**params: Any) -> Call:
        return lambda api, n: api.get("/jobs", params={"limit": 50, **params})

    filters: dict[str, dict[str, Any]] = {
        "status=succeeded": {"status": "succeeded"},
        "status=queued": {"status": "queued"},
        "status=running": {"status": "running"},
        "block=plain": {"block": "plain"},
        "experiment_id": {"experiment_id": experiment},
        "tag": {"tag": TAG},
        "status=running&block=plain": {"status": "running", "block": "plain"},
        "status=queued&experiment_id": {"status": "queued", "experiment_id": queued_experiment},
        "status=queued&tag": {"status": "queued", "tag": TAG},
        "block=plain&experiment_id": {"block": "plain", "experiment_id": experiment},
        "block=plain&tag": {"block": "plain", "tag": TAG},
        "experiment_id&tag": {"experiment_id": experiment, "tag": TAG},
    }
    measured: dict[str, Call] = {
        "GET /jobs": jobs(),
        "GET /jobs?sort=best_test_accuracy": jobs(sort="best_test_accuracy"),
        "GET /jobs (last page)": jobs(cursor=last_page),
    }
    for name, params in filters.items():
        measured[f"GET /jobs?{name}"] = jobs(**params)
        measured[f"GET /jobs?{name}&sort=best"] = jobs(**params, sort="best_test_accuracy")
    base = f"/experiments/{experiment}"
    fifth = _page_cursor(client, base, {"sort": "best_test_accuracy", "order": "desc"}, 5)
    last_event_id = client.get(base).json()["last_event_id"]
    measured |= {
        "GET /jobs/{id} (queued)": lambda api, n: api.get(f"/jobs/{ids['queued_job']}"),
        "GET /jobs/{id} (finished)": lambda api, n: api.get(f"/jobs/{ids['finished_job']}"),
        "GET /jobs/{id}/metrics": lambda api, n: api.get(f"/jobs/{ids['finished_job']}/metrics"),
        "GET /experiments": lambda api, n: api.get("/experiments", params={"limit": 50}),
        "GET /experiments/{id}": lambda api, n: api.get(base),
        "GET /experiments/{id}?sort=best desc": lambda api, n: api.get(
            base, params={"sort": "best_test_accuracy", "order": "desc"}
        ),
        "GET /experiments/{id}?sort=best desc (page 5)": lambda api, n: api.get(fifth),
        "GET /experiments/{id}?sort=status": lambda api, n: api.get(
            base, params={"sort": "status"}
        ),
        "GET /experiments/{id}?sort=macs desc": lambda api, n: api.get(
            base, params={"sort": "macs", "order": "desc"}
        ),
        "GET /experiments/{id} (queued)": lambda api, n: api.get(
            f"/experiments/{queued_experiment}"
        ),
        "GET /experiments/{id}/summary.csv": lambda api, n: api.get(f"{base}/summary.csv"),
        "GET /experiments/{id}/metrics": lambda api, n: api.get(f"{base}/metrics"),
        "GET /experiments/{id}/metrics?format=columns": lambda api, n: api.get(
            f"{base}/metrics", params={"format": "columns"}
        ),
        # An ended experiment's stream: its whole log (each job's status events), then from
        # the last_event_id its page reads (only the end).
        "GET /experiments/{id}/events (history)": lambda api, n: api.get(f"{base}/events"),
        "GET /experiments/{id}/events (from last_event_id)": lambda api, n: api.get(
            f"{base}/events", params={"last_event_id": last_event_id}
        ),
        "GET / (dashboard)": lambda api, n: api.get("/"),
        "GET /ui/experiments/{id}": lambda api, n: api.get(f"/ui/experiments/{experiment}"),
        "GET /metrics (Prometheus)": lambda api, n: api.get("/metrics"),
        "POST /jobs": lambda api, n: api.post(
            "/jobs", json={"block": "mobile", "hyperparameters": {"epochs": 1, "seed": n}}
        ),
        "POST /experiments (10 jobs)": lambda api, n: api.post(
            "/experiments",
            json={
                "name": f"bench {n}",
                "blocks": ["mobile"],
                "hyperparameters": {"epochs": 1},
                "seeds": list(range(10)),
            },
        ),
    }
    return measured


def _page_cursor(client: httpx.Client, path: str, params: dict[str, Any], page: int) -> str:
    """The URL of the `page`-th page of an experiment's rows (the last one if fewer)."""
    url = client.get(path, params=params).json()["jobs_next"] or path
    for _ in range(page - 2):
        following = client.get(url).json()["jobs_next"]
        if following is None:
            break
        url = following
    return str(url)


def measure(base: str, ids: dict[str, Any], requests: int, meter: CpuMeter) -> dict[str, Any]:
    """Each route's p50, p95, CPU per request and largest answer, one request at a time."""
    results: dict[str, Any] = {}
    with httpx.Client(base_url=base, timeout=120) as api:
        for name, call in routes(ids, api).items():
            samples = []
            largest = 0
            before = meter.read()
            for n in range(requests + 2):
                if n == 2:  # two warm-up requests
                    before = meter.read()
                started = time.perf_counter()
                response = call(api, n)
                elapsed = time.perf_counter() - started
                if response.status_code not in (200, 202):
                    raise RuntimeError(f"{name}: {response.status_code} {response.text[:300]}")
                largest = max(largest, len(response.content))
                if n >= 2:
                    samples.append(elapsed)
            api_cpu, server_cpu = CpuMeter.spent(before, meter.read())
            results[name] = {
                **_percentiles(samples),
                "api_cpu_ms": api_cpu * 1000 / requests,
                "db_cpu_ms": server_cpu * 1000 / requests,
                "max_bytes": largest,
            }
    return results


@contextmanager
def _api(database_url: str, workdir: Path) -> Iterator[tuple[str, int]]:
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
        yield f"http://127.0.0.1:{port}", api.pid
    finally:
        api.stop()


def run(
    *, shape: Shape, database: str, requests: int, postgres_url: str, statistics_too: bool
) -> dict[str, Any]:
    from jobs.migrations import upgrade

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as folder:
        workdir = Path(folder)
        with _database(database, workdir, postgres_url) as url:
            upgrade(url)
            started = time.perf_counter()
            ids = build(url, shape)
            if statistics_too:
                analyze(url)
            build_seconds = time.perf_counter() - started
            epoch_rows = _epoch_rows(url)
            print(
                f"built {shape.jobs} jobs, {epoch_rows} epoch rows on {database} in "
                f"{build_seconds:.0f} s",
                file=sys.stderr,
            )
            with _api(url, workdir) as (base, pid):
                meter = CpuMeter(pid, url)
                try:
                    latency = measure(base, ids, requests, meter)
                finally:
                    meter.close()
    return {
        "database": database,
        "jobs": shape.jobs,
        "experiment_size": shape.size,
        "queued": max(1, int(shape.jobs * shape.queued)),
        "analyzed": statistics_too,
        "epoch_rows": epoch_rows,
        "build_seconds": build_seconds,
        "requests": requests,
        "latency": latency,
    }


def _epoch_rows(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text("SELECT count(*) FROM epoch_metrics")).scalar_one())
    finally:
        engine.dispose()


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"{result['database']}, {result['jobs']:,} jobs in experiments of "
        f"{result['experiment_size']:,}, {result['queued']:,} queued, "
        f"{result['epoch_rows']:,} epoch rows, "
        f"{'with' if result['analyzed'] else 'no'} statistics:",
        "",
        "| route | p50 ms | p95 ms | API CPU ms | DB CPU ms | largest answer |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in result["latency"].items():
        lines.append(
            f"| `{name}` | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | "
            f"{row['api_cpu_ms']:.1f} | {row['db_cpu_ms']:.1f} | {row['max_bytes']:,} B |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--experiment-size", type=int, default=EXPERIMENT_SIZE)
    parser.add_argument("--queued", type=float, default=QUEUED, help="the share of jobs queued")
    parser.add_argument("--analyze", action="store_true", help="run ANALYZE after the build")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if args.jobs < 10 or args.epochs < 1 or args.requests < 1 or args.experiment_size < 1:
        parser.error("--jobs must be at least 10, the others at least 1")
    if not 0 < args.queued < 0.5:
        parser.error("--queued is a share of the jobs, between 0 and 0.5")
    result = run(
        shape=Shape(args.jobs, args.epochs, args.experiment_size, args.queued),
        database=args.database,
        requests=args.requests,
        postgres_url=args.postgres_url,
        statistics_too=args.analyze,
    )
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
