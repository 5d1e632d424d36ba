"""What the dispatch order costs on a hostile queue shared by several people: a claim, one
job's queue position and its reason, a page's positions, and a submission, on SQLite and
PostgreSQL without ANALYZE.

The queue is built through the core as the API builds it (`create_experiment`, `create_job`,
each in its own transaction), `--queued` jobs in all (the default MAX_QUEUED_JOBS): alice
submits experiments of `--experiment-jobs` jobs, bob lone jobs, carol one smaller experiment,
in turns, and at the end dave submits one lone job (the newcomer). Each figure is the median
and p95 of `--repeats` runs, each in a transaction that is rolled back, so the queue is the
same for every run:

- claim: `claim_next_job` (the first job of the order);
- claim, alice capped: the same with MAX_RUNNING_JOBS_PER_USER=1 while one of alice's jobs
  runs, so that the claim passes over her jobs;
- position, deepest job: `queue_position` of the last job of the order;
- reason, deepest job: `queue_place` (the position and its reason) of that job;
- page of positions: `queue_positions` of the 50 newest queued jobs;
- submit a lone job: `create_job` by alice, who owns most of the queue.

It also reports where dave's job is (its position): how long a newcomer waits.

    python -m bench.fair_share [--databases sqlite,postgresql] [--queued 10000]
                               [--experiment-jobs 1000] [--repeats 30] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.api_latency import service_environment, this_process_uses
from bench.scale import _database

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SPEC = {"block": "mobile", "hyperparameters": {"epochs": 1}, "train_samples": 10}
PAGE = 50


def _experiment(owner: str, jobs: int) -> Callable[[Any], None]:
    def submit(session: Any) -> None:
        from jobs.experiments import create_experiment
        from jobs.settings import get_settings
        from jobs.specs import ExperimentCreate

        spec = ExperimentCreate.model_validate(
            {
                "name": f"{owner} sweep",
                "blocks": ["mobile"],
                "hyperparameters": {"epochs": 1},
                "seeds": list(range(jobs)),
            }
        )
        create_experiment(session, spec, settings=get_settings(), owner=owner)

    return submit


def _lone(owner: str) -> Callable[[Any], None]:
    def submit(session: Any) -> None:
        from jobs.settings import get_settings
        from jobs.specs import JobCreate
        from jobs.submission import create_job

        create_job(session, JobCreate.model_validate(SPEC), settings=get_settings(), owner=owner)

    return submit


def build(queued: int, experiment_jobs: int) -> None:
    """Fill the queue: alice's experiments (about 90 % of it), bob's lone jobs and carol's
    experiment in turns between them, then dave's one job."""
    from jobs.db import session_scope

    bob_jobs = max(1, queued // 20)
    carol_jobs = max(1, queued // 20)
    alice_experiments = max(1, (queued - bob_jobs - carol_jobs - 1) // experiment_jobs)
    alice_left = queued - bob_jobs - carol_jobs - 1 - alice_experiments * experiment_jobs
    submissions: list[Callable[[Any], None]] = []
    for number in range(alice_experiments):
        submissions.append(_experiment("alice", experiment_jobs))
        submissions += [_lone("bob")] * (bob_jobs // alice_experiments)
        if number == alice_experiments // 2:
            submissions.append(_experiment("carol", carol_jobs))
    submissions += [_lone("bob")] * (bob_jobs - (bob_jobs // alice_experiments) * alice_experiments)
    submissions += [_lone("alice")] * alice_left
    submissions.append(_lone("dave"))
    for submit in submissions:
        with session_scope() as session:
            submit(session)


def _timed(work: Callable[[Any], Any], repeats: int) -> dict[str, float]:
    from jobs.db import session_scope

    wall = []
    for _ in range(repeats):
        with session_scope() as session:
            started = time.perf_counter()
            work(session)
            wall.append((time.perf_counter() - started) * 1000)
            session.rollback()
    ordered = sorted(wall)
    return {
        "median": round(statistics.median(ordered), 2),
        "p95": round(ordered[round(0.95 * (len(ordered) - 1))], 2),
    }


def measure(repeats: int) -> dict[str, Any]:
    from sqlalchemy import func, select

    from jobs import dispatch
    from jobs.db import session_scope
    from jobs.lifecycle import claim_next_job
    from jobs.settings import get_settings
    from jobs.tables import Job, JobStatus

    with session_scope(write=False) as session:
        queued = list(
            session.execute(
                select(Job.id).where(Job.status == JobStatus.QUEUED).order_by(Job.id)
            ).scalars()
        )
        dave = session.execute(select(func.max(Job.id)).where(Job.owner == "dave")).scalar_one()
        positions = dispatch.queue_positions(session, queued)
    deepest = max(positions, key=positions.__getitem__)
    newest = queued[-PAGE:]

    def claim(session: Any) -> None:
        assert claim_next_job(session, worker="bench", lease_seconds=600) is not None

    figures: dict[str, Any] = {
        "queued": len(queued),
        "dave_position": positions[dave],
        "claim_ms": _timed(claim, repeats),
        "position_deepest_ms": _timed(
            lambda session: dispatch.queue_position(session, deepest), repeats
        ),
        "reason_deepest_ms": _timed(
            lambda session: dispatch.queue_place(session, deepest), repeats
        ),
        "page_positions_ms": _timed(
            lambda session: dispatch.queue_positions(session, newest), repeats
        ),
        "submit_lone_ms": _timed(_lone("alice"), repeats),
    }
    # One of alice's jobs runs and she may run one: the claim passes over her jobs.
    with session_scope() as session:
        first = claim_next_job(session, worker="bench", lease_seconds=600)
        assert first is not None
        alice_running = session.execute(select(Job.owner).where(Job.id == first.job_id)).scalar()
    os.environ["MAX_RUNNING_JOBS_PER_USER"] = "1"
    get_settings.cache_clear()
    figures["claim_alice_capped_ms"] = _timed(claim, repeats)
    figures["alice_was_running"] = alice_running == "alice"
    return figures


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from jobs.migrations import upgrade

    results: dict[str, Any] = {}
    for kind in args.databases:
        folder = workdir / kind
        folder.mkdir()
        with _database(kind, folder, args.postgres_url) as url:
            env = {
                **service_environment(folder),
                "DATABASE_URL": url,
                # Room for the timed submissions (each rolled back) on a full queue.
                "MAX_QUEUED_JOBS": str(args.queued + 1),
            }
            with this_process_uses(env):
                upgrade()
                started = time.perf_counter()
                build(args.queued, args.experiment_jobs)
                built = time.perf_counter() - started
                results[kind] = {"build_s": round(built, 1), **measure(args.repeats)}
    return results


def markdown(results: dict[str, Any]) -> str:
    names = [
        ("claim_ms", "claim"),
        ("claim_alice_capped_ms", "claim, alice capped"),
        ("position_deepest_ms", "position, deepest job"),
        ("reason_deepest_ms", "position and reason, deepest job"),
        ("page_positions_ms", "positions of a page of 50"),
        ("submit_lone_ms", "submit a lone job (alice)"),
    ]
    kinds = list(results)
    lines = [
        "| ms, median / p95 | " + " | ".join(kinds) + " |",
        "|---|" + "---|" * len(kinds),
    ]
    for key, label in names:
        cells = [f"{results[kind][key]['median']} / {results[kind][key]['p95']}" for kind in kinds]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(
        "| dave's position | " + " | ".join(str(results[k]["dave_position"]) for k in kinds) + " |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--experiment-jobs", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.databases = args.databases.split(",")
    with tempfile.TemporaryDirectory() as folder:
        results = run(args, Path(folder))
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
