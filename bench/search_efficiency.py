"""Whether a search keeps the best setting, what its early stopping saves, and what a decision
costs; on curves shaped as a researcher meets them.

1. Replays. Three shapes of learning curves, each generated afresh for every order (so noise
   differs too), run through the service's own decision code (bench/search_replay.py) for each
   pruner in `--orders` random trial orders:
   - early: curves that separate from the first epoch and keep their order;
   - late: flat near chance for about half the budget, then separating, fast risers plateauing
     below slow ones (the curves cross);
   - noisy: a small test set (150 images, one image is 0.67 points): two settings take off late,
     the rest crawl (the digits case: a 12-point grid of 6 epochs).
   For each: the share of orders whose best trained-to-the-end trial is within 1 point of the
   full grid's best, and the share of the grid's epochs spent.

2. Real runs (`--real`). For each shape, a search on generated data in the official CIFAR
   format, through the API (uvicorn) and a worker process training the real engine: the grid
   with no pruner (its curves, as recorded, are then replayed in `--orders` orders too), then
   the default pruner. Printed: each run's best, epochs and wall time.

3. Decision cost. A search with `--decision-trials` trials is written straight into a fresh
   database; the core's work after an epoch at a rung (every trial's value there read and
   compared) and when a trial ends (the next trial made: its sampler asked) is timed, each in a
   transaction rolled back, `--repeats` times, for each pruner and sampler, on SQLite and on
   PostgreSQL (a database of its own on the server of `--postgres-url`, dropped at the end).

    python -m bench.search_efficiency [--orders 200] [--real] [--decision-trials 1000]
        [--repeats 30] [--databases sqlite postgresql] [--skip-replays] [--skip-decisions]
        [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.api_latency import service_environment, this_process_uses
from bench.scale import DEFAULT_POSTGRES_URL, _database
from bench.search_replay import replay
from jobs.search.pruners import Objective, pruner_for

PRUNERS: dict[str, dict[str, Any]] = {
    "none": {"type": "none"},
    "asha": {"type": "asha", "min_epochs": 1, "reduction_factor": 3},
    "median": {"type": "median", "min_epochs": 1, "startup_trials": 2},
    "hyperband": {"type": "hyperband", "min_epochs": 1, "reduction_factor": 3},
}
WITHIN_POINTS = 0.01
# A curve set generator: (rng) -> (curves, test images, chance).
Shape = Callable[[np.random.Generator], tuple[list[list[float]], int, float]]


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _measured(rng: np.random.Generator, accuracy: float, images: int) -> float:
    return float(rng.binomial(images, min(max(accuracy, 0.0), 1.0)) / images)


def early(rng: np.random.Generator) -> tuple[list[list[float]], int, float]:
    """12 settings, 9 epochs, 2,000 test images: each rises at the same rate to its own final
    accuracy, so the order is set from the first epoch."""
    chance, images = 0.05, 2000
    finals = rng.uniform(0.15, 0.85, size=12)
    curves = [
        [
            _measured(rng, chance + (final - chance) * (1 - math.exp(-0.6 * epoch)), images)
            for epoch in range(1, 10)
        ]
        for final in finals
    ]
    return curves, images, chance


def late(rng: np.random.Generator) -> tuple[list[list[float]], int, float]:
    """12 settings, 12 epochs, 1,000 test images: flat at chance until 45-60 % of the budget,
    then rising; the higher a setting's plateau, the slower it rises (curves cross)."""
    chance, images = 0.1, 1000
    curves = []
    for _ in range(12):
        onset = rng.uniform(0.45, 0.6) * 12
        plateau = rng.uniform(0.15, 0.7)
        rate = rng.uniform(0.5, 1.5) * (0.9 - plateau) * 2
        curves.append(
            [
                _measured(
                    rng,
                    chance + (plateau - chance) * (1 - math.exp(-rate * max(epoch - onset, 0))),
                    images,
                )
                for epoch in range(1, 13)
            ]
        )
    return curves, images, chance


def noisy(rng: np.random.Generator) -> tuple[list[list[float]], int, float]:
    """12 settings, 6 epochs, 150 test images: all near chance for 3 epochs; two take off at
    epochs 4 and 5 to 40-55 %, the rest crawl."""
    chance, images = 0.1, 150
    bloomers = set(rng.choice(12, 2, replace=False).tolist())
    curves = []
    for index in range(12):
        if index in bloomers:
            final, onset, width = rng.uniform(0.4, 0.55), rng.uniform(3.5, 4.5), 0.5
        else:
            final, onset, width = rng.uniform(0.1, 0.3), rng.uniform(4, 8), 0.7
        curves.append(
            [
                _measured(
                    rng,
                    chance + (final - chance) / (1 + math.exp(-(epoch - onset) / width)),
                    images,
                )
                for epoch in range(1, 7)
            ]
        )
    return curves, images, chance


SHAPES: dict[str, Shape] = {"early": early, "late": late, "noisy": noisy}


def replay_shape(
    curves_of: Callable[[np.random.Generator], tuple[Sequence[Sequence[float]], int, float]],
    orders: int,
    *,
    workers: int,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """For each pruner: the share of orders within a point of the grid's best, the share of
    the grid's epochs spent, and the trials stopped per search."""
    results: dict[str, dict[str, float]] = {}
    for name, spec in PRUNERS.items():
        rng = np.random.default_rng(seed)
        kept = spent = full = stopped = 0
        for _ in range(orders):
            curves, images, _chance = curves_of(rng)
            order = [int(index) for index in rng.permutation(len(curves))]
            outcome = replay(
                pruner_for(spec),
                curves,
                order,
                objective=Objective("test_accuracy", True, images),
                workers=workers,
            )
            grid_best = max(curve[-1] for curve in curves)
            kept += outcome.best is not None and outcome.best >= grid_best - WITHIN_POINTS
            spent += outcome.epochs
            full += len(curves) * len(curves[0])
            stopped += outcome.stopped
        results[name] = {
            "within_1_point": round(kept / orders, 3),
            "epoch_share": round(spent / full, 3),
            "stopped_per_search": round(stopped / orders, 2),
        }
    return results


# -- real runs, through the API ---------------------------------------------------------------

# Generated data (engine.synthetic) and a grid for each shape.
REAL: dict[str, dict[str, Any]] = {
    "early": {
        "data": {"classes": 10, "train_per_class": 40, "test_per_class": 40, "noise": 90.0},
        "epochs": 6,
        "space": {
            "learning_rate": {"choice": [0.0003, 0.003, 0.03, 0.1, 0.3]},
            "weight_decay": {"choice": [0.0, 0.005]},
        },
    },
    "late": {
        "data": {"classes": 10, "train_per_class": 40, "test_per_class": 40, "noise": 90.0},
        "epochs": 8,
        "space": {
            "learning_rate": {"choice": [0.0001, 0.0003, 0.001, 0.003]},
            "momentum": {"choice": [0.0, 0.9]},
        },
    },
    "noisy": {
        "data": {"classes": 10, "train_per_class": 20, "test_per_class": 15, "noise": 90.0},
        "epochs": 6,
        "space": {
            "learning_rate": {"choice": [0.001, 0.003, 0.01, 0.03, 0.1, 0.3]},
            "batch_size": {"choice": [16, 64]},
        },
    },
}


def _search_body(shape: str, pruner: dict[str, Any]) -> dict[str, Any]:
    setup = REAL[shape]
    return {
        "name": f"{shape} {pruner['type']}",
        "blocks": ["mobile"],
        "hyperparameters": {
            "epochs": setup["epochs"],
            "batch_size": 32,
            "seed": 0,
            "augment": False,
        },
        "search": {
            "space": setup["space"],
            "sampler": "grid",
            "seed": 0,
            "max_concurrent": 2,
            "pruner": pruner,
        },
    }


def _real_search(api: Any, body: dict[str, Any]) -> dict[str, Any]:
    started = time.monotonic()
    created = api.post("/experiments", json=body)
    created.raise_for_status()
    experiment_id = created.json()["id"]
    while True:
        read = api.get(f"/experiments/{experiment_id}").json()
        if read["ended"]:
            break
        time.sleep(2)
    curves = {}
    for job in read["jobs"]:
        metrics = api.get(f"/jobs/{job['job_id']}/metrics").json()["metrics"]
        curves[job["job_id"]] = [row["test_accuracy"] for row in metrics]
    search = read["search"]
    return {
        "best": None if search["best"] is None else search["best"]["value"],
        "epochs_spent": search["epochs_spent"],
        "epochs_full": search["epochs_full"],
        "seconds": round(time.monotonic() - started, 1),
        "warnings": [warning["code"] for warning in search["warnings"]],
        "curves": list(curves.values()),
    }


def real_runs(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import httpx

    import engine.synthetic as synthetic
    from jobs.specs import SearchPruner
    from tests.support import free_port, start_api, start_worker

    default = {"type": SearchPruner().type, "min_epochs": 1, "reduction_factor": 3}
    results: dict[str, Any] = {"default_pruner": default["type"]}
    for shape, setup in REAL.items():
        folder = workdir / f"real-{shape}"
        env = service_environment(folder)
        data = dict(setup["data"])
        synthetic.NOISE_STD = data.pop("noise")
        synthetic.generate_cifar(Path(env["DATA_DIR"]), seed=0, **data)
        with this_process_uses(env):
            from jobs.migrations import upgrade

            upgrade()
        port = free_port()
        api_process = start_api(env, folder, port)
        workers = [start_worker(env, folder, name=f"worker{n}") for n in range(args.workers)]
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as api:
                _progress(f"{shape}: the grid with no pruner")
                grid = _real_search(api, _search_body(shape, PRUNERS["none"]))
                _progress(f"{shape}: the default pruner ({default['type']})")
                pruned = _real_search(api, _search_body(shape, default))
        finally:
            for worker in workers:
                worker.stop()
            api_process.stop()
        recorded = grid.pop("curves")
        pruned.pop("curves")
        test_images = int(data["test_per_class"]) * int(data["classes"])

        chance = 1 / int(data["classes"])

        def recorded_curves(
            rng: np.random.Generator,
            curves: list[list[float]] = recorded,
            images: int = test_images,
            chance: float = chance,
        ) -> tuple[list[list[float]], int, float]:
            return curves, images, chance

        results[shape] = {
            "grid": grid,
            "default": pruned,
            "kept_within_1_point": grid["best"] is not None
            and pruned["best"] is not None
            and pruned["best"] >= grid["best"] - WITHIN_POINTS,
            "replayed": replay_shape(recorded_curves, args.orders, workers=args.workers),
        }
    return results


# -- decision cost ----------------------------------------------------------------------------


def _seed_trials(experiment_id: int, trials: int, epochs: int, rung_epochs: list[int]) -> None:
    """`trials` trials of the experiment, written directly: ended ones with metrics at each
    rung they passed and their last epoch, a decision recorded at each rung."""
    from sqlalchemy import insert

    from jobs.db import session_scope
    from jobs.tables import EpochMetric, Job, JobStatus, utcnow

    rng = random.Random(0)
    now = utcnow()
    with session_scope() as session:
        jobs: list[dict[str, Any]] = []
        for number in range(trials):
            reached = rng.randint(1, len(rung_epochs))
            done = (
                epochs
                if reached == len(rung_epochs) and rng.random() < 0.5
                else rung_epochs[reached - 1]
            )
            status = JobStatus.SUCCEEDED if done == epochs else JobStatus.PRUNED
            decisions = [
                {"outcome": "went_on", "epoch": e, "rung": i, "value": 0.5, "cutoff": 0.5,
                 "margin": 0.01, "compared_with": number, "bracket": None}
                for i, e in enumerate(rung_epochs[:reached])
            ]  # fmt: skip
            jobs.append(
                {
                    "experiment_id": experiment_id,
                    "name": f"trial {number}",
                    "tags": [],
                    "block": "mobile",
                    "dataset": "cifar100",
                    "spec": {},
                    "config": {},
                    "status": status,
                    "cancel_requested": False,
                    "params": 1,
                    "macs": 1,
                    "epochs_total": epochs,
                    "epochs_done": done,
                    "attempt": 1,
                    "max_attempts": 3,
                    "enqueue_count": 1,
                    "created_at": now,
                    "updated_at": now,
                    "event_seq": 0,
                    "trial_number": number,
                    "trial_params": {"learning_rate": 10 ** rng.uniform(-3, -0.5)},
                    "trial_state": {"bracket": None, "place": number, "decisions": decisions},
                    "rung": reached - 1,
                    "prune_requested": status == JobStatus.PRUNED,
                }
            )
        ids = session.execute(insert(Job).returning(Job.id), jobs).scalars().all()
        rows = []
        for job_id, job in zip(ids, jobs, strict=True):
            for epoch in sorted({*rung_epochs[: job["rung"] + 1], job["epochs_done"]}):
                rows.append(
                    {
                        "job_id": job_id,
                        "epoch": epoch,
                        "train_loss": 1.0,
                        "train_accuracy": 0.5,
                        "test_loss": 1.0,
                        "test_accuracy": rng.random(),
                        "learning_rate": 0.01,
                        "seconds": 1.0,
                        "images_per_second": 1.0,
                        "evaluation": {"test_images": 10000},
                        "recorded_at": now,
                    }
                )
        session.execute(insert(EpochMetric), rows)


def _decision_cost_of(
    args: argparse.Namespace, workdir: Path, database: str, pruner: dict[str, Any], sampler: str
) -> dict[str, Any]:

    from jobs import wiring

    wiring.connect()
    folder = workdir / f"decision-{database}-{pruner['type']}-{sampler}"
    with _database(database, folder, args.postgres_url) as url:
        env = {**service_environment(folder), "DATABASE_URL": url}
        return _decision_cost_in(args, env, pruner, sampler)


def _decision_cost_in(
    args: argparse.Namespace, env: dict[str, str], pruner: dict[str, Any], sampler: str
) -> dict[str, Any]:
    from sqlalchemy import select, update

    from jobs.db import session_scope
    from jobs.experiments import create_experiment
    from jobs.lifecycle import claim_job, finish_job, record_epoch
    from jobs.migrations import upgrade
    from jobs.settings import get_settings
    from jobs.specs import ExperimentCreate
    from jobs.tables import Experiment, Job, JobStatus

    epochs = 100
    body = {
        "name": "decision cost",
        "blocks": ["mobile"],
        "hyperparameters": {"epochs": epochs},
        "search": {
            "space": {"learning_rate": {"loguniform": [0.001, 0.3]}},
            "sampler": sampler,
            "max_trials": args.decision_trials,
            "max_concurrent": 1,
            "pruner": pruner,
        },
    }
    with this_process_uses(env):
        upgrade()
        with session_scope() as session:
            experiment_id = create_experiment(
                session, ExperimentCreate.model_validate(body), settings=get_settings()
            ).experiment.id
        rungs = pruner_for(pruner).rungs(epochs, None) or [1, 3, 9, 27, 81]
        ended = args.decision_trials - 2
        _seed_trials(experiment_id, ended, epochs, rungs)
        with session_scope() as session:
            running = session.execute(
                select(Job.id).where(
                    Job.experiment_id == experiment_id, Job.status == JobStatus.QUEUED
                )
            ).scalar_one()
            session.execute(
                update(Experiment)
                .where(Experiment.id == experiment_id)
                .values(trials_created=ended + 1, next_place=ended + 1)
            )
            session.execute(
                update(Job)
                .where(Job.id == running)
                .values(trial_number=ended, trial_state={"bracket": None, "decisions": []})
            )
            claim = claim_job(session, running, worker="bench", lease_seconds=600)
        assert claim is not None
        # Epochs 1 .. 8 recorded; epoch 9 is a rung of asha (1, 3, 9, 27, 81), where every
        # trial's value there is read and compared.
        for epoch in range(1, 9):
            with session_scope() as session:
                record_epoch(session, claim, _figures(epoch), lease_seconds=600)

        def timed(work: Any) -> dict[str, float]:
            """Wall and CPU milliseconds of each run (the CPU figure holds on a busy machine,
            where the wall time counts the waits for a core; SQLite runs in this process)."""
            wall, cpu = [], []
            for _ in range(args.repeats):
                with session_scope() as session:
                    started, used = time.perf_counter(), time.process_time()
                    work(session)
                    wall.append((time.perf_counter() - started) * 1000)
                    cpu.append((time.process_time() - used) * 1000)
                    session.rollback()
            return {
                "wall_median": round(statistics.median(wall), 2),
                "wall_p95": round(sorted(wall)[int(0.95 * (len(wall) - 1))], 2),
                "cpu_median": round(statistics.median(cpu), 2),
            }

        def after_epoch(session: Any) -> None:
            record_epoch(session, claim, _figures(9), lease_seconds=600)

        def after_trial(session: Any) -> None:
            assert finish_job(session, claim, JobStatus.SUCCEEDED)

        return {"after_epoch_ms": timed(after_epoch), "trial_ended_ms": timed(after_trial)}


def decision_cost(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    return {
        "trials": args.decision_trials,
        **{
            database: {
                f"{pruner}+{sampler}": _decision_cost_of(
                    args, workdir, database, PRUNERS[pruner], sampler
                )
                for pruner, sampler in (
                    ("asha", "random"),
                    ("asha", "tpe"),
                    ("median", "random"),
                    ("hyperband", "random"),
                )
            }
            for database in args.databases
        },
    }


def _figures(epoch: int) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "train_loss": 1.0 / epoch,
        "train_accuracy": 0.5,
        "test_loss": 1.0,
        "test_accuracy": 1.0,
        "learning_rate": 0.01,
        "seconds": 1.0,
        "images_per_second": 1.0,
        "test_images": 10000,
    }


def _table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = [
        "| pruner | " + " | ".join(f"{shape}: best kept / epochs" for shape in results) + " |",
        "|---|" + "---|" * len(results),
    ]
    for pruner in PRUNERS:
        cells = [
            f"{results[shape][pruner]['within_1_point']:.0%} / "
            f"{results[shape][pruner]['epoch_share']:.0%}"
            for shape in results
        ]
        lines.append(f"| {pruner} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--real", action="store_true", help="also the real runs (minutes)")
    parser.add_argument("--decision-trials", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--skip-decisions", action="store_true")
    parser.add_argument("--skip-replays", action="store_true")
    parser.add_argument(
        "--databases",
        nargs="+",
        choices=["sqlite", "postgresql"],
        default=["sqlite", "postgresql"],
        help="where the decision cost is measured",
    )
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "orders": args.orders,
    }
    if not args.skip_replays:
        _progress(f"replays: {args.orders} orders per shape and pruner")
        report["replays"] = {
            shape: replay_shape(curves_of, args.orders, workers=args.workers)
            for shape, curves_of in SHAPES.items()
        }
        print(_table(report["replays"]), flush=True)
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        if args.real:
            report["real"] = real_runs(args, workdir)
            print(
                json.dumps({k: v for k, v in report["real"].items() if k != "replayed"}, indent=1),
                flush=True,
            )
        if not args.skip_decisions:
            _progress(f"decision cost at {args.decision_trials} trials")
            report["decisions"] = decision_cost(args, workdir)
            print(json.dumps(report["decisions"], indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
