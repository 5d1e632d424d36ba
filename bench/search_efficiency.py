"""What early stopping saves, and what a search decision costs.

1. Efficiency. On a generated data set made hard (more noise, more classes than the demo set,
   which almost any setting learns to 99 %), every configuration of a fixed grid (learning rate
   x weight decay on the mobile net) is trained to the end as a search with no pruner; then the
   same grid, seeds and epochs are searched with asha. Both run as searches of the service, in
   this process, through the worker's runner and the real engine (the embedded SQLite database
   and broker in a temporary folder). Printed for each: the best objective (test accuracy at a
   trial's last epoch), the epochs trained, and the spread of the full run's final accuracies
   (a comparison is empty when every setting ends at the same accuracy).

2. Decision cost. A search with `--decision-trials` ended trials is written straight into a
   fresh database; then the core's work after an epoch (`decide`: rebuild the study, ask the
   pruner, store the decision) and after a trial ends (`trial_ended`: rebuild, ask the sampler,
   make the next trial's job, as finish_job does) is timed, each in a transaction rolled back,
   `--repeats` times.

    python -m bench.search_efficiency [--epochs 9] [--classes 20] [--noise 90]
        [--train-per-class 40] [--test-per-class 20] [--learning-rates 0.0003,...]
        [--weight-decays 0,0.005] [--decision-trials 1000] [--repeats 50] [--skip-training]
        [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.api_latency import service_environment, this_process_uses

ASHA: dict[str, Any] = {"type": "asha", "min_epochs": 1, "reduction_factor": 3}
LEARNING_RATES = (0.0003, 0.003, 0.03, 0.1, 0.3)
WEIGHT_DECAYS = (0.0, 0.005)


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _search_body(args: argparse.Namespace, pruner: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": f"efficiency {pruner['type']}",
        "blocks": ["mobile"],
        "dataset": "cifar100",
        "hyperparameters": {"epochs": args.epochs, "batch_size": 32, "seed": 0},
        "search": {
            "space": {
                "learning_rate": {"choice": args.learning_rates},
                "weight_decay": {"choice": args.weight_decays},
            },
            "sampler": "grid",
            "seed": args.search_seed,
            "max_concurrent": 1,
            "objective": {"metric": "test_accuracy", "mode": "max"},
            "pruner": pruner,
        },
    }


def _run_search(body: dict[str, Any]) -> dict[str, Any]:
    """Submit the search and train its trials one by one in this process until it ends."""
    from jobs import wiring
    from jobs.db import session_scope
    from jobs.experiments import create_experiment, summarize
    from jobs.listing import get_experiment
    from jobs.settings import get_settings
    from jobs.specs import MAX_EXPERIMENT_JOBS, ExperimentCreate
    from worker.runner import run_job

    wiring.connect()
    settings = get_settings()
    with session_scope() as session:
        experiment_id = create_experiment(
            session, ExperimentCreate.model_validate(body), settings=settings
        ).experiment.id
    started = time.monotonic()
    while True:
        with session_scope(write=False) as session:
            summary = summarize(session, get_experiment(session, experiment_id))
            if summary.status.ended:
                break
        run_job(0, settings=settings)
    seconds = time.monotonic() - started
    with session_scope(write=False) as session:
        experiment = get_experiment(session, experiment_id)
        summary = summarize(session, experiment, limit=MAX_EXPERIMENT_JOBS)  # every trial
        assert summary.search is not None
        trials = [
            {
                "learning_rate": job.trial_params["learning_rate"] if job.trial_params else None,
                "weight_decay": job.trial_params["weight_decay"] if job.trial_params else None,
                "status": job.status,
                "epochs": job.epochs_done,
                "final_test_accuracy": job.final_test_accuracy,
            }
            for job in summary.jobs
        ]
        return {
            "best": None if summary.search.best is None else summary.search.best.value,
            "epochs_spent": summary.search.epochs_spent,
            "epochs_full": summary.search.epochs_full,
            "seconds": round(seconds, 1),
            "trials": trials,
        }


def efficiency(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import engine.synthetic as synthetic
    from jobs.migrations import upgrade

    env = service_environment(workdir)
    # The demo set's noise lets almost any setting reach 99 %: a harder set spreads them out.
    synthetic.NOISE_STD = args.noise
    synthetic.generate_cifar(
        Path(env["DATA_DIR"]),
        classes=args.classes,
        train_per_class=args.train_per_class,
        test_per_class=args.test_per_class,
        seed=0,
    )
    with this_process_uses(env):
        upgrade()
        _progress(f"full run: {len(args.learning_rates) * len(args.weight_decays)} configurations")
        full = _run_search(_search_body(args, {"type": "none"}))
        _progress("asha search on the same grid")
        asha = _run_search(_search_body(args, ASHA))
    finals = [
        t["final_test_accuracy"] for t in full["trials"] if t["final_test_accuracy"] is not None
    ]
    return {
        "full": full,
        "asha": asha,
        "full_spread_points": round(100 * (max(finals) - min(finals)), 1) if finals else None,
        "asha_gap_points": None
        if full["best"] is None or asha["best"] is None
        else round(100 * (full["best"] - asha["best"]), 2),
        "asha_epoch_share": round(asha["epochs_spent"] / full["epochs_spent"], 3),
    }


def _seed_trials(experiment_id: int, trials: int, epochs: int, rungs: list[int]) -> None:
    """`trials` ended trials of the experiment, written directly: params, rung attributes,
    metrics at each rung and at the last epoch (what a decision reads)."""
    from sqlalchemy import insert

    from jobs.db import session_scope
    from jobs.tables import EpochMetric, Job, JobStatus, utcnow

    rng = random.Random(0)
    now = utcnow()
    with session_scope() as session:
        jobs: list[dict[str, Any]] = []
        for number in range(trials):
            reached = rng.randint(1, len(rungs))
            done = epochs if reached == len(rungs) and rng.random() < 0.5 else rungs[reached - 1]
            status = JobStatus.SUCCEEDED if done == epochs else JobStatus.PRUNED
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
                    "trial_params": {
                        "learning_rate": 10 ** rng.uniform(-3, -0.5),
                        "weight_decay": rng.choice([0.0, 0.0005, 0.005]),
                    },
                    "trial_attrs": {
                        f"completed_rung_{index}": rng.random() for index in range(reached)
                    },
                    "rung": reached - 1,
                    "prune_requested": status == JobStatus.PRUNED,
                }
            )
        ids = session.execute(insert(Job).returning(Job.id), jobs).scalars().all()
        rows = []
        for job_id, job in zip(ids, jobs, strict=True):
            for epoch in sorted({*rungs[: job["rung"] + 1], job["epochs_done"]}):
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
                        "recorded_at": now,
                    }
                )
        session.execute(insert(EpochMetric), rows)


def decision_cost(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from sqlalchemy import select, update

    from jobs import wiring
    from jobs.db import session_scope
    from jobs.experiments import create_experiment
    from jobs.lifecycle import claim_job, finish_job, record_epoch
    from jobs.migrations import upgrade
    from jobs.search.pruners import pruner_for
    from jobs.settings import get_settings
    from jobs.specs import ExperimentCreate
    from jobs.tables import Experiment, Job, JobStatus

    wiring.connect()
    env = service_environment(workdir / "decision")
    epochs = 100
    body = {
        "name": "decision cost",
        "blocks": ["mobile"],
        "hyperparameters": {"epochs": epochs},
        "search": {
            "space": {
                "learning_rate": {"loguniform": [0.001, 0.3]},
                "weight_decay": {"choice": [0.0, 0.0005, 0.005]},
            },
            "sampler": args.sampler,
            "max_trials": args.decision_trials,
            "max_concurrent": 1,
            "pruner": ASHA,
        },
    }
    results: dict[str, Any] = {"trials": args.decision_trials, "sampler": args.sampler}
    with this_process_uses(env):
        upgrade()
        with session_scope() as session:
            experiment_id = create_experiment(
                session, ExperimentCreate.model_validate(body), settings=get_settings()
            ).experiment.id
        rungs = pruner_for(ASHA).rungs(epochs)
        # The search's last two trials: one running (decided after its epoch), one made when it
        # ends; the others ended already.
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
                .values(trials_created=ended + 1)
            )
            session.execute(update(Job).where(Job.id == running).values(trial_number=ended))
            claim = claim_job(session, running, worker="bench", lease_seconds=600)
        assert claim is not None
        # Epochs 1 .. 8 recorded; epoch 9 is a rung (1, 3, 9, 27, 81): the costliest decision.
        # Its accuracy of 1.0 beats every seeded value, so it is promoted at each rung.
        for epoch in range(1, 9):
            with session_scope() as session:
                record_epoch(session, claim, _figures(epoch), lease_seconds=600)

        def timed(work: Any) -> tuple[list[float], list[float]]:
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
            return wall, cpu

        def after_epoch(session: Any) -> None:
            record_epoch(session, claim, _figures(9), lease_seconds=600)

        def after_trial(session: Any) -> None:
            # The trial ends: the next one is made in this transaction (jobs.lifecycle._move).
            assert finish_job(session, claim, JobStatus.SUCCEEDED)

        for name, work in (("after_epoch_ms", after_epoch), ("trial_ended_ms", after_trial)):
            wall, cpu = timed(work)
            results[name] = {
                "wall_median": round(statistics.median(wall), 2),
                "wall_p95": round(sorted(wall)[int(0.95 * (len(wall) - 1))], 2),
                "cpu_median": round(statistics.median(cpu), 2),
            }
    return results


def _figures(epoch: int) -> dict[str, float]:
    return {
        "epoch": epoch,
        "train_loss": 1.0 / epoch,
        "train_accuracy": 0.5,
        "test_loss": 1.0,
        "test_accuracy": 1.0,
        "learning_rate": 0.01,
        "seconds": 1.0,
        "images_per_second": 1.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--noise", type=float, default=90.0)
    parser.add_argument("--train-per-class", type=int, default=40)
    parser.add_argument("--test-per-class", type=int, default=20)
    parser.add_argument("--search-seed", type=int, default=0)
    parser.add_argument(
        "--learning-rates",
        type=lambda text: [float(part) for part in text.split(",")],
        default=list(LEARNING_RATES),
        help="comma-separated (default: 5 values; the grid should have at least 9 points)",
    )
    parser.add_argument(
        "--weight-decays",
        type=lambda text: [float(part) for part in text.split(",")],
        default=list(WEIGHT_DECAYS),
    )
    parser.add_argument("--decision-trials", type=int, default=1000, help="3 to 1000")
    parser.add_argument("--sampler", choices=("random", "tpe"), default="random")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
        "arguments": {k: str(v) for k, v in vars(args).items()},
    }
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        if not args.skip_training:
            result["efficiency"] = efficiency(args, workdir)
        _progress(f"decision cost at {args.decision_trials} trials")
        result["decision"] = decision_cost(args, workdir)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
