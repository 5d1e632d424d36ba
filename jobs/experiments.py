"""Experiments: a request planned into jobs (blocks x grid x seeds, or a preset) or checked as a
search (whose trials jobs.search makes), then made in one transaction; the labels that tell its
jobs apart, its summary, and cancelling it."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from engine.config import Hyperparameters
from jobs import accounts, audit
from jobs.accounts import Identity, ensure_may_change
from jobs.dispatch import head_fair_share_key
from jobs.errors import (
    ExperimentNotCancellable,
    ExperimentNotResumable,
    InvalidFields,
    JobNotCancellable,
    TooManyJobs,
)
from jobs.events import last_experiment_event
from jobs.lifecycle import cancel_job
from jobs.listing import EXPERIMENT_JOBS_PAGE, get_experiment, list_experiment_jobs
from jobs.search import study
from jobs.search.space import grid_size, validate_space
from jobs.settings import Settings
from jobs.signals import EndCause
from jobs.specs import (
    GRID_KEYS,
    JOB_NAME_MAX_CHARS,
    MAX_EXPERIMENT_JOBS,
    MAX_SEARCH_TRIALS,
    OBJECTIVE_MODES,
    REPORT_BLOCKS,
    REPORT_DATASET,
    REPORT_FREE_HYPERPARAMETERS,
    REPORT_HYPERPARAMETERS,
    REPORT_PRESET,
    ExperimentCreate,
    JobCreate,
    canonical_sha256,
)
from jobs.status_counts import experiment_counts
from jobs.submission import add_jobs, ensure_queue_room, find_by_key
from jobs.tables import Experiment, Job, JobStatus, experiment_status, utcnow


@dataclass(frozen=True)
class ExperimentPlan:
    """A request resolved: the spec as stored (preset and defaults filled in) and its jobs."""

    spec: dict[str, Any]
    jobs: list[JobCreate]

    def fingerprint(self) -> str:
        """sha256 of the canonical resolved spec, for idempotent submission."""
        return canonical_sha256(self.spec)


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
    job count against MAX_EXPERIMENT_JOBS (TooManyJobs). A search plans no jobs: its trials
    are made as it goes (jobs.search.study.fill)."""
    if spec.search is not None:
        return _plan_search(spec)
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
                priority=spec.priority,
            )
        )
    return ExperimentPlan(stored, jobs)


def _plan_search(spec: ExperimentCreate) -> ExperimentPlan:
    """Check the search section against the hyperparameters and blocks it searches (InvalidFields
    names each bad field) and resolve its defaults: the objective's mode, max_trials of a grid,
    several blocks as a `block` dimension."""
    search = spec.search
    assert search is not None
    problems: list[tuple[str, str]] = []
    if spec.preset is not None:
        problems.append(("preset", "a search takes no preset; give blocks"))
    if spec.grid:
        problems.append(("grid", "a search samples search.space; give a grid or a search"))
    if spec.seeds is not None:
        problems.append(("seeds", "a search trains with hyperparameters.seed"))
    if spec.blocks is None:
        problems.append(("blocks", "give the blocks searched (1 to 3 distinct)"))
    blocks: list[str] = list(spec.blocks or [])
    base = spec.hyperparameters.model_dump()
    space, found = validate_space(search.space, base, blocks, field="search.space")
    problems += found
    if "block" not in space and len(blocks) > 1:
        space = {"block": {"choice": blocks}, **space}
    if not space and not problems:
        problems.append(("search.space", "give at least one hyperparameter to search"))
    max_trials = search.max_trials
    size = grid_size(space)
    if search.sampler == "grid":
        if found:
            pass  # the space's own problems come first; its size is unknown
        elif size is None:
            continuous = next(name for name, item in space.items() if "choice" not in item)
            problems.append(
                (
                    "search.sampler",
                    f"grid takes choice dimensions only; search.space.{continuous} is "
                    f"{next(iter(space[continuous]))}",
                )
            )
        elif max_trials is None:
            max_trials = min(size, MAX_SEARCH_TRIALS)
        elif max_trials > size:
            problems.append(
                ("search.max_trials", f"the grid has {size} points; give at most {size}")
            )
    elif max_trials is None:
        problems.append(("search.max_trials", "give the number of trials"))
    if search.startup_trials is not None and search.sampler != "tpe":
        problems.append(
            (
                "search.startup_trials",
                f"only the tpe sampler has start-up trials, not {search.sampler}",
            )
        )
    epochs = spec.hyperparameters.epochs
    if search.pruner.type != "none" and search.pruner.min_epochs >= epochs:
        problems.append(
            (
                "search.pruner.min_epochs",
                f"must be below hyperparameters.epochs ({epochs}), or no trial can be stopped",
            )
        )
    if problems:
        raise InvalidFields(problems)
    resolved = search.model_dump(mode="json")
    resolved["space"] = space
    resolved["max_trials"] = max_trials
    resolved["objective"]["mode"] = (
        search.objective.mode or OBJECTIVE_MODES[search.objective.metric]
    )
    stored = {
        **spec.model_dump(mode="json"),
        "blocks": blocks,
        "grid": {},
        "seeds": None,
        "search": resolved,
    }
    return ExperimentPlan(stored, [])


@dataclass(frozen=True)
class ExperimentSubmission:
    experiment: Experiment
    created: bool


def create_experiment(
    session: Session,
    spec: ExperimentCreate,
    *,
    settings: Settings,
    idempotency_key: str | None = None,
    owner: str | None = None,
) -> ExperimentSubmission:
    """Add the experiment, owned by `owner` with all its jobs, and all its queued jobs to the
    caller's transaction (all or none); the job ids are sent to the queue once it commits. The
    same Idempotency-Key and body give back the experiment made first."""
    plan = plan_experiment(spec)
    search = plan.spec.get("search")
    fingerprint = plan.fingerprint()
    if idempotency_key is not None:
        existing = find_by_key(session, Experiment, idempotency_key, fingerprint)
        if existing is not None:
            return ExperimentSubmission(existing, created=False)
    first_trials = 0 if search is None else min(search["max_concurrent"], search["max_trials"])
    quota = accounts.take_queued_quota(session, owner, settings)
    ensure_queue_room(session, settings=settings, adding=len(plan.jobs) + first_trials)
    experiment = Experiment(
        name=spec.name,
        preset=spec.preset,
        tags=list(spec.tags),
        spec=plan.spec,
        idempotency_key=idempotency_key,
        request_sha256=fingerprint,
        created_at=utcnow(),
        priority=spec.priority,
        trials_created=0,
        cancel_requested=False,
        owner=owner,
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
    # The experiment's jobs take turns with the jobs queued before them (jobs.dispatch).
    if plan.jobs:
        add_jobs(
            session,
            plan.jobs,
            settings=settings,
            experiment_id=experiment.id,
            first_fair_share_key=head_fair_share_key(session, spec.priority),
            owner=owner,
        )
    if search is not None:
        study.fill(session, experiment.id)
        session.refresh(experiment)
    # Its jobs, and a search's first trials, count against the owner's queued-jobs quota.
    accounts.check_queued_quota(session, quota)
    audit.record(session, owner, "experiment_submitted", experiment_id=experiment.id)
    return ExperimentSubmission(experiment, created=True)


def _job_name(experiment_name: str, description: str) -> str:
    """'<experiment name> / <block> <varying values>', the experiment's name shortened to fit."""
    suffix = f" / {description}"
    room = JOB_NAME_MAX_CHARS - len(suffix)
    if len(experiment_name) > room:
        experiment_name = experiment_name[: max(room - 1, 0)] + "…"
    return (experiment_name + suffix)[:JOB_NAME_MAX_CHARS]


def varying_fields(spec: dict[str, Any]) -> list[str]:
    """The fields whose value differs between an experiment's jobs: block, each grid
    hyperparameter with several values, seed; in a search, each searched one."""
    search = study.search_of(spec)
    if search is not None:
        return list(search["space"])
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


def counts_status(counts: dict[JobStatus, int]) -> JobStatus:
    """The experiment's status from its jobs' status counts."""
    return experiment_status(status for status, n in counts.items() if n)


def experiment_jobs(session: Session, experiment_id: int) -> list[Job]:
    return list(
        session.execute(
            select(Job).where(Job.experiment_id == experiment_id).order_by(Job.id)
        ).scalars()
    )


def experiment_job_ids(session: Session, experiment_id: int) -> list[int]:
    """The ids of the experiment's jobs so far (a search adds trials as it goes)."""
    return list(
        session.execute(
            select(Job.id).where(Job.experiment_id == experiment_id).order_by(Job.id)
        ).scalars()
    )


@dataclass(frozen=True)
class ExperimentSummary:
    """An experiment with a page of its jobs (sorted as asked), the cursor of the next page,
    and the figures its summary shows: every one kept as jobs change, so a summary costs its
    page, whatever the number of jobs and epochs."""

    experiment: Experiment
    jobs: list[Job]
    counts: dict[JobStatus, int]
    varying: list[str]
    next_cursor: str | None = None
    search: study.SearchSummary | None = None
    # The experiment's newest event number when it was read (read first: following its events
    # from there misses nothing the rest shows).
    last_event_id: int = 0

    @property
    def status(self) -> JobStatus:
        return counts_status(self.counts)


def summarize(
    session: Session,
    experiment: Experiment,
    *,
    sort: str = "job_id",
    order: str = "asc",
    limit: int = EXPERIMENT_JOBS_PAGE,
    cursor: str | None = None,
) -> ExperimentSummary:
    """The experiment with a page of its jobs (jobs.listing.list_experiment_jobs), its kept
    status counts and, for a search, where it stands."""
    last_event_id = last_experiment_event(session, experiment.id)
    jobs, next_cursor = list_experiment_jobs(
        session, experiment.id, sort=sort, order=order, limit=limit, cursor=cursor
    )
    search = study.search_of(experiment.spec)
    return ExperimentSummary(
        experiment=experiment,
        jobs=jobs,
        counts=experiment_counts(session, [experiment.id])[experiment.id],
        varying=varying_fields(experiment.spec),
        next_cursor=next_cursor,
        search=None if search is None else study.summarize_search(session, experiment, search),
        last_event_id=last_event_id,
    )


def _cancel_unended(session: Session, experiment_id: int, by: str | None) -> list[int]:
    """Cancel each job of the experiment that has not ended; their ids."""
    cancelled = []
    for job in experiment_jobs(session, experiment_id):
        if JobStatus(job.status).ended:
            continue
        try:
            cancel_job(session, job.id, cause=EndCause.EXPERIMENT_CANCEL, by=by)
        except JobNotCancellable:  # it ended meanwhile
            continue
        cancelled.append(job.id)
    return cancelled


def cancel_experiment(
    session: Session, experiment_id: int, *, actor: Identity | None = None
) -> Experiment:
    """Cancel every job that has not ended, as cancelling each job would; not cancellable
    when every job had already ended. A search makes no trial after this: the jobs end with
    cause `experiment_cancel` (the search makes no successor for those), its flag is set once
    they are cancelled (rows are locked job first, experiment second, as a worker ending a
    trial does), and the jobs are read again under that lock, so a trial made meanwhile is
    cancelled too. The trials it cancels leave the search: resuming it makes their places
    again. `actor`: the caller, who must be its owner or an admin (jobs.accounts), audited."""
    experiment = get_experiment(session, experiment_id)
    if actor is not None:
        ensure_may_change(actor, experiment.owner, f"Experiment {experiment_id}")
    by = None if actor is None else actor.name
    cancelled = _cancel_unended(session, experiment_id, by)
    if study.search_of(experiment.spec) is not None:
        session.execute(
            update(Experiment)
            .where(Experiment.id == experiment_id)
            .values(cancel_requested=True)
            .execution_options(synchronize_session=False)
        )
        cancelled += _cancel_unended(session, experiment_id, by)
        study.withdraw(session, experiment_id, cancelled)
        session.refresh(experiment)
    if not cancelled:
        raise ExperimentNotCancellable(
            f"Every job of experiment {experiment_id} has already ended; there is nothing to "
            "cancel."
        )
    if actor is not None:
        audit.record(
            session,
            actor.name,
            "experiment_cancelled",
            experiment_id=experiment_id,
            detail={"job_ids": sorted(cancelled)},
        )
    return experiment


def _search_or_refuse(experiment: Any, field_name: str) -> dict[str, Any]:
    search = study.search_of(experiment.spec)
    if search is None:
        raise InvalidFields(
            [
                (
                    field_name,
                    f"experiment {experiment.id} is a grid, not a search: it has no trials to add",
                )
            ]  # fmt: skip
        )
    return search


def extend_search(
    session: Session, experiment_id: int, max_trials: int, *, actor: Identity, settings: Settings
) -> list[int]:
    """Set a search's number of trials (raised: more trials, while it runs or after it ended);
    the new trials are made at once as far as max_concurrent allows. Returns their job ids.
    InvalidFields naming `max_trials` below the trials made, above a grid's points, or for an
    experiment that is no search. Only its owner or an admin may; the trials it makes count
    against the owner's queued-jobs quota."""
    owner = get_experiment(session, experiment_id).owner
    ensure_may_change(actor, owner, f"Experiment {experiment_id}")
    quota = accounts.take_queued_quota(session, owner, settings)
    experiment = study.lock_experiment(session, experiment_id)
    search = _search_or_refuse(experiment, "max_trials")
    made = study.counted_trials(experiment)
    if max_trials < made:
        raise InvalidFields(
            [("max_trials", f"the search has made {made} trials; give at least {made}")]
        )
    size = grid_size(search["space"])
    if search["sampler"] == "grid" and size is not None and max_trials > size:
        raise InvalidFields([("max_trials", f"the grid has {size} points; give at most {size}")])
    spec = {**experiment.spec, "search": {**search, "max_trials": max_trials}}
    session.execute(
        update(Experiment)
        .where(Experiment.id == experiment_id)
        .values(spec=spec)
        .execution_options(synchronize_session=False)
    )
    return _fill_within_quota(
        session, experiment_id, quota, actor, "experiment_extended", max_trials=max_trials
    )


def _fill_within_quota(
    session: Session,
    experiment_id: int,
    quota: accounts.QueuedQuota | None,
    actor: Identity,
    action: str,
    **detail: Any,
) -> list[int]:
    """The search's next trials, asked for by `actor` (audited as `action`): QuotaExceeded if
    they leave the owner over their queued-jobs limit."""
    made_now = study.fill(session, experiment_id)
    accounts.check_queued_quota(session, quota)
    audit.record(
        session,
        actor.name,
        action,
        experiment_id=experiment_id,
        detail={**detail, "job_ids": made_now},
    )
    return made_now


def resume_search(
    session: Session, experiment_id: int, *, actor: Identity, settings: Settings
) -> list[int]:
    """A cancelled search goes on: the trials its cancel stopped are made again (each in its
    place: a grid's point, a random draw), up to max_trials. Returns the new trials' job ids.
    ExperimentNotResumable for a search that was not cancelled; InvalidFields for a grid
    experiment. Only its owner or an admin may; the trials it makes count against the owner's
    queued-jobs quota."""
    owner = get_experiment(session, experiment_id).owner
    ensure_may_change(actor, owner, f"Experiment {experiment_id}")
    quota = accounts.take_queued_quota(session, owner, settings)
    experiment = study.lock_experiment(session, experiment_id)
    _search_or_refuse(experiment, "experiment")
    if not experiment.cancel_requested:
        raise ExperimentNotResumable(
            f"Experiment {experiment_id} was not cancelled; only a cancelled search resumes "
            "(raise max_trials to extend one)."
        )
    session.execute(
        update(Experiment)
        .where(Experiment.id == experiment_id)
        .values(cancel_requested=False)
        .execution_options(synchronize_session=False)
    )
    return _fill_within_quota(session, experiment_id, quota, actor, "experiment_resumed")
