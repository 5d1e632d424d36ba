"""Experiment operations behind the API routes: expanding a request into jobs (blocks x grid x
seeds), reading an experiment's jobs as one summary, cancelling them together."""

from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast, get_args

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.errors import (
    ExperimentNotCancellable,
    ExperimentNotFound,
    InvalidFields,
    JobNotCancellable,
    TooManyJobs,
)
from app.schemas import (
    GRID_KEYS,
    MAX_EXPERIMENT_JOBS,
    REPORT_BLOCKS,
    REPORT_DATASET,
    REPORT_FREE_HYPERPARAMETERS,
    REPORT_HYPERPARAMETERS,
    REPORT_PRESET,
    ExperimentCreate,
    JobCreate,
    StatusName,
    canonical_sha256,
)
from app.services import jobs as job_service
from app.services.idempotency import find_by_key
from engine.config import Hyperparameters
from jobs.events import experiment_status
from jobs.settings import Settings
from jobs.tables import TERMINAL_STATUSES, EpochMetric, Experiment, Job, utcnow

STATUS_NAMES: tuple[StatusName, ...] = get_args(StatusName)
JOB_NAME_MAX_CHARS = 200


@dataclass(frozen=True)
class ExperimentPlan:
    """A request resolved: the spec as stored (preset and defaults filled in) and its jobs."""

    spec: dict[str, Any]
    jobs: list[JobCreate]

    def fingerprint(self) -> str:
        """sha256 of the canonical resolved spec, for idempotent submission."""
        return canonical_sha256(self.spec)


@dataclass(frozen=True)
class ExperimentSubmission:
    experiment: Experiment
    created: bool


def format_value(value: Any) -> str:
    """A varied value as JSON writes it (0.01, true, adam), for job names, labels and CSV."""
    return value if isinstance(value, str) else json.dumps(value)


def describe(block: str, varied: dict[str, Any]) -> str:
    """'plain learning_rate=0.01 seed=1': the block, then each other varied field."""
    others = [f"{name}={format_value(value)}" for name, value in varied.items() if name != "block"]
    return " ".join([block, *others])


def _validated_values(
    base: dict[str, Any], name: str, values: Sequence[Any], field: str
) -> tuple[list[Any], list[tuple[str, str]]]:
    """Each value as the job's Hyperparameters reads it, or the problems, named `field[i]`."""
    validated: list[Any] = []
    problems: list[tuple[str, str]] = []
    for index, value in enumerate(values):
        try:
            parsed = Hyperparameters.model_validate({**base, name: value})
        except ValidationError as error:
            problems += [(f"{field}[{index}]", item["msg"]) for item in error.errors()]
            continue
        value = getattr(parsed, name)
        if value in validated:
            first = validated.index(value)
            problems.append((f"{field}[{index}]", f"the same value as {field}[{first}]"))
        validated.append(value)
    return validated, problems


def _preset_problems(spec: ExperimentCreate) -> list[tuple[str, str]]:
    """The fields that would change the report's settings."""
    problems = []
    if spec.blocks is not None and set(spec.blocks) != set(REPORT_BLOCKS):
        problems.append(("blocks", f"preset report compares {', '.join(REPORT_BLOCKS)}"))
    if spec.dataset != REPORT_DATASET:
        problems.append(("dataset", f"preset report trains on {REPORT_DATASET}"))
    for name in spec.grid:
        problems.append((f"grid.{name}", "preset report varies only the block (and seeds)"))
    for name, value in REPORT_HYPERPARAMETERS.model_dump().items():
        if name not in REPORT_FREE_HYPERPARAMETERS and getattr(spec.hyperparameters, name) != value:
            problems.append(
                (
                    f"hyperparameters.{name}",
                    f"preset report trains with {name} {format_value(value)} (of the "
                    f"hyperparameters only {', '.join(REPORT_FREE_HYPERPARAMETERS)} can be set)",
                )
            )
    return problems


def plan_experiment(spec: ExperimentCreate) -> ExperimentPlan:
    """Resolve the preset and expand blocks x grid x seeds into job specs, validating every
    grid value and seed as the job's Hyperparameters (InvalidFields names each bad one) and the
    job count against MAX_EXPERIMENT_JOBS (TooManyJobs)."""
    if spec.preset == REPORT_PRESET:
        problems = _preset_problems(spec)
        if problems:
            raise InvalidFields(problems)
        blocks = list(spec.blocks or REPORT_BLOCKS)
    elif spec.blocks is None:
        raise InvalidFields([("blocks", "give 1 to 3 distinct blocks, or preset report")])
    else:
        blocks = list(spec.blocks)

    base = spec.hyperparameters.model_dump()
    problems = [
        (
            f"grid.{name}",
            "vary the seed with seeds"
            if name == "seed"
            else f"not a hyperparameter; one of {', '.join(GRID_KEYS)}",
        )
        for name in spec.grid
        if name not in GRID_KEYS
    ]
    grid: dict[str, list[Any]] = {}
    for name in GRID_KEYS:  # in the hyperparameters' order, whatever the request's
        if name in spec.grid:
            grid[name], found = _validated_values(base, name, spec.grid[name], f"grid.{name}")
            problems += found
    seeds: list[Any] | None = None
    if spec.seeds is not None:
        seeds, found = _validated_values(base, "seed", spec.seeds, "seeds")
        problems += found
    if problems:
        raise InvalidFields(problems)

    factors = {
        "blocks": len(blocks),
        "grid": math.prod(len(values) for values in grid.values()),
        "seeds": len(seeds or [None]),
    }
    count = math.prod(factors.values())
    if count > MAX_EXPERIMENT_JOBS:
        detail = f"experiment would create {count} jobs; the limit is {MAX_EXPERIMENT_JOBS}"
        raise TooManyJobs(
            detail + ".",
            fields=[{"field": name, "message": detail} for name, n in factors.items() if n > 1],
        )

    stored = {
        **spec.model_dump(mode="json"),
        "blocks": blocks,
        "grid": grid,
        "seeds": seeds,
    }
    varying = varying_fields(stored)
    jobs = []
    for block, values, seed in itertools.product(
        blocks, itertools.product(*grid.values()), seeds or [base["seed"]]
    ):
        hyperparameters = Hyperparameters.model_validate(
            {**base, **dict(zip(grid, values, strict=True)), "seed": seed}
        )
        fields = {"block": block, **hyperparameters.model_dump()}
        varied = {name: fields[name] for name in varying}
        jobs.append(
            JobCreate(
                block=block,
                dataset=spec.dataset,
                hyperparameters=hyperparameters,
                train_samples=spec.train_samples,
                test_samples=spec.test_samples,
                name=_job_name(spec.name, describe(block, varied)),
                tags=spec.tags,
            )
        )
    return ExperimentPlan(stored, jobs)


def _job_name(experiment_name: str, description: str) -> str:
    """'<experiment name> / <block> <varying values>', the experiment's name shortened to fit."""
    suffix = f" / {description}"
    room = JOB_NAME_MAX_CHARS - len(suffix)
    if len(experiment_name) > room:
        experiment_name = experiment_name[: max(room - 1, 0)] + "…"
    return (experiment_name + suffix)[:JOB_NAME_MAX_CHARS]


def varying_fields(spec: dict[str, Any]) -> list[str]:
    """The fields whose value differs between an experiment's jobs: block, each grid
    hyperparameter with several values, seed."""
    fields = ["block"] if len(spec["blocks"]) > 1 else []
    fields += [name for name, values in spec["grid"].items() if len(values) > 1]
    if spec["seeds"] is not None and len(spec["seeds"]) > 1:
        fields.append("seed")
    return fields


def varied_values(job: Job, varying: list[str]) -> dict[str, Any]:
    """The job's value of each varying field, read from its stored spec."""
    values = {"block": job.block, **job.spec["hyperparameters"]}
    return {name: values[name] for name in varying}


def job_labels(experiment: Experiment, jobs: list[Job]) -> dict[int, str]:
    """'plain learning_rate=0.01' by job id: what tells the experiment's jobs apart."""
    varying = varying_fields(experiment.spec)
    return {job.id: describe(job.block, varied_values(job, varying)) for job in jobs}


def create_experiment(
    session: Session,
    spec: ExperimentCreate,
    *,
    settings: Settings,
    idempotency_key: str | None = None,
) -> ExperimentSubmission:
    """Add the experiment and all its queued jobs to the caller's transaction (all or none);
    the job ids are sent to the queue once it commits. The same Idempotency-Key and body give
    back the experiment made first."""
    plan = plan_experiment(spec)
    fingerprint = plan.fingerprint()
    if idempotency_key is not None:
        existing = find_by_key(session, Experiment, idempotency_key, fingerprint)
        if existing is not None:
            return ExperimentSubmission(existing, created=False)
    job_service.ensure_queue_room(session, settings=settings, adding=len(plan.jobs))
    experiment = Experiment(
        name=spec.name,
        preset=spec.preset,
        tags=list(spec.tags),
        spec=plan.spec,
        idempotency_key=idempotency_key,
        request_sha256=fingerprint,
        created_at=utcnow(),
    )
    try:
        with session.begin_nested():
            session.add(experiment)
            session.flush()
    except IntegrityError:
        # Another request with the same Idempotency-Key committed first.
        if idempotency_key is None:
            raise
        existing = find_by_key(session, Experiment, idempotency_key, fingerprint)
        if existing is None:
            raise
        return ExperimentSubmission(existing, created=False)
    for job_spec in plan.jobs:
        job_service.add_job(session, job_spec, settings=settings, experiment_id=experiment.id)
    return ExperimentSubmission(experiment, created=True)


def get_experiment(session: Session, experiment_id: int) -> Experiment:
    experiment = session.get(Experiment, experiment_id)
    if experiment is None:
        raise ExperimentNotFound(experiment_id)
    return experiment


def list_experiments(
    session: Session, *, limit: int = 50, offset: int = 0
) -> tuple[list[Experiment], int]:
    total = session.execute(select(func.count()).select_from(Experiment)).scalar_one()
    experiments = session.execute(
        select(Experiment)
        .order_by(Experiment.created_at.desc(), Experiment.id.desc())
        .limit(limit)
        .offset(offset)
    ).scalars()
    return list(experiments), total


def experiment_jobs(session: Session, experiment_id: int) -> list[Job]:
    return list(
        session.execute(
            select(Job).where(Job.experiment_id == experiment_id).order_by(Job.id)
        ).scalars()
    )


def status_counts(session: Session, experiment_ids: list[int]) -> dict[int, dict[str, int]]:
    """Each experiment's job count per status (every status present), in one query."""
    counts: dict[int, dict[str, int]] = {
        experiment_id: dict.fromkeys(STATUS_NAMES, 0) for experiment_id in experiment_ids
    }
    rows = session.execute(
        select(Job.experiment_id, Job.status, func.count())
        .where(Job.experiment_id.in_(experiment_ids))
        .group_by(Job.experiment_id, Job.status)
    )
    for experiment_id, status, count in rows:
        counts[cast(int, experiment_id)][status] = count
    return counts


def overall_status(counts: dict[str, int]) -> StatusName:
    """The experiment's status from its jobs' status counts (jobs.events.experiment_status)."""
    return cast(StatusName, experiment_status(status for status, n in counts.items() if n))


def seconds_per_epoch(session: Session, experiment_id: int) -> dict[int, float]:
    """Each job's mean recorded epoch time, for all the experiment's jobs in one query."""
    rows = session.execute(
        select(EpochMetric.job_id, func.avg(EpochMetric.seconds))
        .join(Job, Job.id == EpochMetric.job_id)
        .where(Job.experiment_id == experiment_id)
        .group_by(EpochMetric.job_id)
    )
    return {job_id: float(mean) for job_id, mean in rows}


def epoch_metrics_by_job(
    session: Session, experiment_id: int
) -> dict[int, list[job_service.MetricRow]]:
    """Every recorded epoch of the experiment's jobs, by job, in one query (rows with the
    attributes of `METRIC_COLUMNS`)."""
    by_job: dict[int, list[job_service.MetricRow]] = defaultdict(list)
    rows = session.execute(
        select(EpochMetric.job_id, *job_service.METRIC_COLUMNS)
        .join(Job, Job.id == EpochMetric.job_id)
        .where(Job.experiment_id == experiment_id)
        .order_by(EpochMetric.job_id, EpochMetric.epoch)
    )
    for row in rows:
        by_job[row.job_id].append(row)
    return by_job


def cancel_experiment(session: Session, experiment_id: int) -> Experiment:
    """Cancel every job that has not ended, as POST /jobs/{id}/cancel would; not cancellable
    when every job had already ended."""
    experiment = get_experiment(session, experiment_id)
    cancelled = 0
    for job in experiment_jobs(session, experiment_id):
        if job.status in TERMINAL_STATUSES:
            continue
        try:
            job_service.cancel_job(session, job.id)
        except JobNotCancellable:  # it ended meanwhile
            continue
        cancelled += 1
    if not cancelled:
        raise ExperimentNotCancellable(
            f"Every job of experiment {experiment_id} has already ended; there is nothing to "
            "cancel."
        )
    return experiment
