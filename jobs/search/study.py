"""A search's trials as Optuna's ask-and-tell sees them: asking for the next trials (each made an
ordinary queued job), telling it that one ended, and its pruner's decision after each epoch.
It reacts to the lifecycle's domain events (jobs.wiring installs `on_job_ended` and
`on_epoch_stored`), inside the transaction that ended the trial or stored its epoch.

State. Optuna's study is rebuilt in memory from the job rows at each decision, never kept (see
docs/design/search-state.md): each trial's number, params and Optuna system attributes are
columns of its job, its objective values are its epoch rows, so a process killed at any instant
loses nothing. A rebuild reads only what the rule deciding needs and loads the trials into
Optuna's in-memory storage without its per-trial deep copy and validation (RowStorage).

Locking. Every decision takes the experiment's row lock first (SELECT ... FOR NO KEY UPDATE on
PostgreSQL, which serialises the deciders; a plain FOR UPDATE also conflicts with the KEY SHARE
locks that foreign-key checks take on the row, and two trials ending at once were seen to
deadlock on it; SQLite's write transactions begin IMMEDIATE), so two workers never decide on
stale rungs or make the same trial; the trial counter `trials_created` is also compared-and-set.
A trial's successor is made in the transaction that ends it, and a pruning decision is written
by the lifecycle (fenced by the lease) in the transaction that stores the epoch: an epoch
recorded twice is decided once, and a worker killed after the decision still ends the trial
pruned (the reaper and release_job read `prune_requested`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, cast

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import InMemoryStorage
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import Text, func, select, type_coerce, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from engine.config import Hyperparameters
from jobs.events import record_event
from jobs.search.pruners import RUNG_KEY, highest_rung, pruner_for
from jobs.search.samplers import sampler_for
from jobs.search.space import distributions
from jobs.settings import get_settings
from jobs.signals import EndCause, EpochStored, JobEnded, TrialDecision
from jobs.specs import JOB_NAME_MAX_CHARS, JobCreate
from jobs.submission import TrialColumns, add_job
from jobs.tables import EpochMetric, Experiment, Job, JobStatus

optuna.logging.set_verbosity(optuna.logging.WARNING)

TRIAL_CREATED_EVENT = "trial_created"
TRIAL_PRUNED_EVENT = "trial_pruned"
BEST_CHANGED_EVENT = "best_changed"
STUDY_NAME = "search"
ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
# Optuna requires a start time on each trial; no rule used here reads it.
_STARTED = datetime(2000, 1, 1, tzinfo=UTC)


class SearchConflict(Exception):
    """The trial counter moved under this transaction: roll back and decide again."""


class RowStorage(InMemoryStorage):
    """Optuna's in-memory storage, filled with trials rebuilt from the job rows in one step:
    `Study.add_trials` deep-copies and validates each trial, which at 1,000 trials costs more
    than the whole decision may."""

    def load_frozen(self, study_id: int, trials: list[FrozenTrial]) -> None:
        with self._lock:
            study = self._studies[study_id]
            for trial in trials:
                self._max_trial_id += 1
                trial._trial_id = self._max_trial_id
                trial.number = len(study.trials)
                self._trial_id_to_study_id_and_number[trial._trial_id] = (study_id, trial.number)
                study.trials.append(trial)
                self._update_cache(trial._trial_id, study_id)


class Trial(NamedTuple):
    """A trial's job row, as far as a decision reads it. (A named tuple: a decision builds one
    per trial, and at 1,000 trials a frozen dataclass's slower construction shows.)"""

    job_id: int
    number: int
    status: str  # a JobStatus value
    params: dict[str, Any]
    attrs: dict[str, Any]
    epochs_done: int
    prune_requested: bool

    @property
    def state(self) -> TrialState:
        if self.prune_requested or self.status == JobStatus.PRUNED:
            return TrialState.PRUNED
        if self.status == JobStatus.SUCCEEDED:
            return TrialState.COMPLETE
        if self.status in ACTIVE:
            return TrialState.RUNNING
        return TrialState.FAIL


def search_of(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The experiment's stored search section, or None for a grid experiment."""
    return spec.get("search")


def direction(search: dict[str, Any]) -> StudyDirection:
    maximize = search["objective"]["mode"] == "max"
    return StudyDirection.MAXIMIZE if maximize else StudyDirection.MINIMIZE


def better(search: dict[str, Any], value: float, than: float | None) -> bool:
    if than is None:
        return True
    return value > than if search["objective"]["mode"] == "max" else value < than


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def lock_experiment(session: Session, experiment_id: int) -> Any:
    """The experiment's search fields, under its row lock until the transaction ends."""
    return session.execute(
        select(
            Experiment.id,
            Experiment.name,
            Experiment.spec,
            Experiment.trials_created,
            Experiment.cancel_requested,
        )
        .where(Experiment.id == experiment_id)
        .with_for_update(key_share=True)
    ).one()


def _json_values(values: list[Any]) -> list[Any]:
    """JSON columns read as text, parsed in one call (SQLAlchemy's per-value JSON processing is
    most of a 1,000-trial read on SQLite); psycopg hands PostgreSQL's json already parsed."""
    texts = [value for value in values if isinstance(value, str)]
    if not texts:
        return [{} if value is None else value for value in values]
    parsed = iter(json.loads("[" + ",".join(texts) + "]"))
    return [
        next(parsed) if isinstance(value, str) else ({} if value is None else value)
        for value in values
    ]


def load_trials(session: Session, experiment_id: int) -> list[Trial]:
    rows = session.execute(
        select(
            Job.id,
            Job.trial_number,
            Job.status,
            type_coerce(Job.trial_params, Text),
            type_coerce(Job.trial_attrs, Text),
            Job.epochs_done,
            Job.prune_requested,
        )
        .where(Job.experiment_id == experiment_id, Job.trial_number.is_not(None))
        .order_by(Job.trial_number)
    ).all()
    params = _json_values([row[3] for row in rows])
    attrs = _json_values([row[4] for row in rows])
    return [
        Trial(row[0], cast(int, row[1]), row[2], params[index], attrs[index], row[5], row[6])
        for index, row in enumerate(rows)
    ]


def metric_values(
    session: Session, experiment_id: int, metric: str, *, epoch: int | None = None
) -> dict[int, tuple[int, float]]:
    """(epoch, value) of the metric for each trial: at its last recorded epoch, or at `epoch`."""
    column = getattr(EpochMetric, metric)
    at = Job.epochs_done if epoch is None else epoch
    rows = session.execute(
        select(EpochMetric.job_id, EpochMetric.epoch, column)
        .join(Job, Job.id == EpochMetric.job_id)
        .where(
            Job.experiment_id == experiment_id,
            Job.trial_number.is_not(None),
            EpochMetric.epoch == at,
        )
    )
    return {row[0]: (int(row[1]), float(row[2])) for row in rows}


def _frozen(
    trial: Trial,
    dists: dict[str, BaseDistribution],
    intermediate: dict[int, float],
    last: tuple[int, float] | None,
) -> FrozenTrial:
    state = trial.state
    value = last[1] if last is not None else None
    if state == TrialState.COMPLETE and value is None:
        state = TrialState.FAIL  # ended without a recorded epoch: nothing to compare
    return FrozenTrial(
        number=trial.number,
        trial_id=trial.number,
        state=state,
        value=value if state == TrialState.COMPLETE else None,
        values=None,
        datetime_start=_STARTED,
        datetime_complete=None if state == TrialState.RUNNING else _STARTED,
        params=trial.params,
        distributions=dists,
        user_attrs={},
        system_attrs=trial.attrs,
        intermediate_values=intermediate,
    )


def build_study(
    search: dict[str, Any],
    trials: list[Trial],
    last_values: dict[int, tuple[int, float]],
    *,
    step_values: dict[int, tuple[int, float]] | None = None,
    curves: dict[int, dict[int, float]] | None = None,
) -> tuple[RowStorage, dict[int, int]]:
    """Optuna's storage holding the search's trials; and each job's Optuna trial id."""
    storage = RowStorage()
    study_id = storage.create_new_study([direction(search)], STUDY_NAME)
    dists = distributions(search["space"])
    frozen = []
    for trial in trials:
        last = last_values.get(trial.job_id)
        intermediate: dict[int, float] = {}
        if curves is not None and trial.job_id in curves:
            intermediate = dict(curves[trial.job_id])
        else:
            if last is not None:
                intermediate[last[0]] = last[1]
            if step_values is not None and trial.job_id in step_values:
                step, value = step_values[trial.job_id]
                intermediate[step] = value
        frozen.append(_frozen(trial, dists, intermediate, last))
    storage.load_frozen(study_id, frozen)
    return storage, {
        trial.job_id: item._trial_id for trial, item in zip(trials, frozen, strict=True)
    }


def _study(storage: RowStorage, search: dict[str, Any], number: int) -> Study:
    return Study(
        STUDY_NAME,
        storage,
        sampler=sampler_for(search).optuna(number),
        pruner=pruner_for(search["pruner"]).optuna(),
    )


# -- asking: the next trials -----------------------------------------------------------------


def _label(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else str(value).lower()


def trial_job_spec(
    spec: dict[str, Any], experiment_name: str, number: int, params: dict[str, Any]
) -> JobCreate:
    """The job of trial `number`: the shared settings with the trial's params in their place."""
    blocks = spec["blocks"]
    block = params.get("block", blocks[0])
    hyperparameters = Hyperparameters.model_validate(
        {**spec["hyperparameters"], **{k: v for k, v in params.items() if k != "block"}}
    )
    shown = " ".join(f"{name}={_label(value)}" for name, value in params.items() if name != "block")
    suffix = f" / trial {number} {block}" + (f" {shown}" if shown else "")
    room = JOB_NAME_MAX_CHARS - len(suffix)
    name = experiment_name if len(experiment_name) <= room else experiment_name[: room - 1] + "…"
    return JobCreate(
        block=block,
        dataset=spec["dataset"],
        hyperparameters=hyperparameters,
        train_samples=spec["train_samples"],
        test_samples=spec["test_samples"],
        name=(name + suffix)[:JOB_NAME_MAX_CHARS],
        tags=spec["tags"],
    )


def fill(
    session: Session,
    experiment_id: int,
    *,
    loaded: tuple[list[Trial], dict[int, tuple[int, float]]] | None = None,
) -> list[int]:
    """Make trials until max_concurrent are queued or running, or max_trials were made (none
    once the experiment is cancelled). Takes the experiment's row lock; returns the new job ids,
    which are sent to the queue when the caller's transaction commits. `loaded`: the trials and
    their last values, when the caller read them in this transaction under the lock."""
    experiment = lock_experiment(session, experiment_id)
    search = search_of(experiment.spec)
    if search is None or experiment.cancel_requested:
        return []
    active = session.execute(
        select(func.count())
        .select_from(Job)
        .where(Job.experiment_id == experiment_id, Job.status.in_(ACTIVE))
    ).scalar_one()
    made = int(experiment.trials_created)
    room = min(search["max_concurrent"] - active, search["max_trials"] - made)
    if room <= 0:
        return []
    moved = session.execute(
        update(Experiment)
        .where(Experiment.id == experiment_id, Experiment.trials_created == made)
        .values(trials_created=made + room)
        .execution_options(synchronize_session=False)
    )
    assert isinstance(moved, CursorResult)
    if moved.rowcount != 1:
        raise SearchConflict(f"experiment {experiment_id}: trials were made meanwhile")
    if loaded is None:
        trials = load_trials(session, experiment_id)
        last = metric_values(session, experiment_id, search["objective"]["metric"])
    else:
        trials, last = loaded
    storage, _ = build_study(search, trials, last)
    dists = distributions(search["space"])
    settings = get_settings()
    created = []
    for number in range(made, made + room):
        asked = _study(storage, search, number).ask(dists)
        params = dict(asked.params)
        attrs = dict(storage.get_trial(asked._trial_id).system_attrs)
        job = add_job(
            session,
            trial_job_spec(experiment.spec, experiment.name, number, params),
            settings=settings,
            experiment_id=experiment_id,
            trial=TrialColumns(number, params, attrs),
        )
        record_event(
            session,
            job.id,
            TRIAL_CREATED_EVENT,
            {"job_id": job.id, "trial": number, "params": params},
        )
        created.append(job.id)
    return created


# -- telling: a trial ended ------------------------------------------------------------------


def on_job_ended(session: Session, event: JobEnded) -> None:
    """A job ended (jobs.signals): if it was a search's trial, note a new best and make the next
    trials, in the transaction that ended it; none when its experiment is being cancelled."""
    if event.experiment_id is None or event.cause == EndCause.EXPERIMENT_CANCEL:
        return
    trial_ended(session, event.job_id)


def trial_ended(session: Session, job_id: int) -> list[int]:
    """Note a new best and make the next trials; returns the new trials' job ids."""
    job = session.execute(
        select(Job.experiment_id, Job.trial_number, Job.status).where(Job.id == job_id)
    ).one()
    if job.trial_number is None or job.experiment_id is None:
        return []
    experiment = lock_experiment(session, job.experiment_id)
    search = search_of(experiment.spec)
    if search is None:
        return []
    trials = load_trials(session, job.experiment_id)
    last = metric_values(session, job.experiment_id, search["objective"]["metric"])
    if job.status == JobStatus.SUCCEEDED:
        _note_best(session, search, trials, last, job_id)
    return fill(session, job.experiment_id, loaded=(trials, last))


def best_trial(
    search: dict[str, Any], trials: list[Trial], last: dict[int, tuple[int, float]]
) -> tuple[Trial, float] | None:
    """The succeeded trial with the best objective value (its last epoch's); ties: the first."""
    best: tuple[Trial, float] | None = None
    for trial in trials:
        value = _finite(last.get(trial.job_id, (0, None))[1])
        if trial.status != JobStatus.SUCCEEDED or value is None:
            continue
        if best is None or better(search, value, best[1]):
            best = (trial, value)
    return best


def _note_best(
    session: Session,
    search: dict[str, Any],
    trials: list[Trial],
    last: dict[int, tuple[int, float]],
    job_id: int,
) -> None:
    before = best_trial(search, [t for t in trials if t.job_id != job_id], last)
    now = best_trial(search, trials, last)
    if now is None or now[0].job_id != job_id:
        return
    record_event(
        session,
        job_id,
        BEST_CHANGED_EVENT,
        {
            "job_id": job_id,
            "trial": now[0].number,
            "params": now[0].params,
            "value": now[1],
            "previous_job_id": None if before is None else before[0].job_id,
            "previous_value": None if before is None else before[1],
        },
    )


# -- pruning: after each recorded epoch ------------------------------------------------------


def on_epoch_stored(session: Session, event: EpochStored) -> TrialDecision | None:
    """An epoch of a job was stored (jobs.signals): a search trial's pruner decides."""
    if event.experiment_id is None or event.epoch >= event.epochs_total:
        return None
    return decide(session, event.job_id, event.epoch)


def decide(session: Session, job_id: int, epoch: int) -> TrialDecision | None:
    """The pruner's decision after the trial's newly stored `epoch`, for the lifecycle to write
    (its rung, its attributes, whether it stops, the `trial_pruned` event). None when the job
    is no search trial, its search prunes nothing, or it was decided already."""
    job = session.execute(
        select(
            Job.experiment_id,
            Job.trial_number,
            Job.epochs_total,
            Job.prune_requested,
            Job.trial_attrs,
        ).where(Job.id == job_id)
    ).one()
    if job.trial_number is None or job.experiment_id is None or epoch >= job.epochs_total:
        return None
    if job.prune_requested:  # decided already (an epoch recorded on the way to stopping)
        return None
    experiment = lock_experiment(session, job.experiment_id)
    search = search_of(experiment.spec)
    if search is None:
        return None
    pruner = pruner_for(search["pruner"])
    attrs_before = job.trial_attrs or {}
    if not pruner.prunes or epoch < pruner.first_decided_epoch(attrs_before):
        # Nothing to compare yet (asha below the trial's next rung, median in its warm-up):
        # no study to rebuild.
        return None
    metric = search["objective"]["metric"]
    trials = load_trials(session, job.experiment_id)
    last = metric_values(session, job.experiment_id, metric)
    step_values = (
        metric_values(session, job.experiment_id, metric, epoch=epoch)
        if pruner.reads_values_at_epoch
        else None
    )
    curve = {
        int(row[0]): float(row[1])
        for row in session.execute(
            select(EpochMetric.epoch, getattr(EpochMetric, metric)).where(
                EpochMetric.job_id == job_id
            )
        )
    }
    storage, trial_ids = build_study(
        search, trials, last, step_values=step_values, curves={job_id: curve}
    )
    trial = next(t for t in trials if t.job_id == job_id)
    study = _study(storage, search, trial.number)
    pruned = bool(study.pruner.prune(study, storage.get_trial(trial_ids[job_id])))
    attrs = dict(storage.get_trial(trial_ids[job_id]).system_attrs)
    rung = highest_rung(attrs)
    changed = attrs != trial.attrs
    if not changed and not pruned:
        return None
    explained = None
    if pruned:
        explained = (
            TRIAL_PRUNED_EVENT,
            {
                "job_id": job_id,
                "trial": trial.number,
                "epoch": epoch,
                "rung": rung,
                "value": _finite(curve.get(epoch)),
            },
        )
    return TrialDecision(attrs=attrs if changed else None, rung=rung, prune=pruned, event=explained)


# -- reading: the search object of an experiment ---------------------------------------------


@dataclass(frozen=True)
class Rung:
    epochs: int
    reached: int
    promoted: int
    cutoff: float | None


@dataclass(frozen=True)
class BestTrial:
    job_id: int
    trial: int
    params: dict[str, Any]
    value: float


@dataclass(frozen=True)
class SearchSummary:
    max_trials: int
    trials_created: int
    best: BestTrial | None
    rungs: list[Rung]
    epochs_spent: int
    epochs_full: int


def rung_table(search: dict[str, Any], trials: list[Trial], epochs: int) -> list[Rung]:
    """For each rung of the pruner: its epochs, the trials that reached it, those it promoted
    (reached and not pruned there), and the value a trial reaching it now must match to go
    on."""
    pruner = pruner_for(search["pruner"])
    maximize = search["objective"]["mode"] == "max"
    table = []
    for index, rung_epoch in enumerate(pruner.rungs(epochs)):
        key = f"{RUNG_KEY}{index}"
        reached = [t for t in trials if key in t.attrs]
        stopped = [
            t for t in reached if t.state == TrialState.PRUNED and t.epochs_done == rung_epoch
        ]
        values = [v for v in (_finite(t.attrs[key]) for t in reached) if v is not None]
        cutoff = pruner.cutoff(values, maximize=maximize)
        table.append(Rung(rung_epoch, len(reached), len(reached) - len(stopped), cutoff))
    return table


def summarize_search(
    session: Session, experiment: Experiment, search: dict[str, Any]
) -> SearchSummary:
    trials = load_trials(session, experiment.id)
    last = metric_values(session, experiment.id, search["objective"]["metric"])
    best = best_trial(search, trials, last)
    epochs = int(experiment.spec["hyperparameters"]["epochs"])
    return SearchSummary(
        max_trials=search["max_trials"],
        trials_created=experiment.trials_created,
        best=None
        if best is None
        else BestTrial(best[0].job_id, best[0].number, best[0].params, best[1]),
        rungs=rung_table(search, trials, epochs),
        epochs_spent=sum(t.epochs_done for t in trials),
        epochs_full=search["max_trials"] * epochs,
    )
