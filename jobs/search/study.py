"""A search's trials as Optuna's ask-and-tell sees them: asking for the next trials (each made an
ordinary queued job), telling it that one ended, and its pruner's decision after each epoch.

State. Optuna's study is rebuilt in memory from the job rows at each decision, never kept: each
trial's number, params and Optuna system attributes (a grid point, the value recorded at each
rung it passed) are columns of its job, its objective values are its epoch rows. The job rows
stay the one source of truth (no second store to keep in step with them, nothing to lose when
an API or worker process dies at any instant), and each decision reads the state as committed
in its own transaction. Optuna's RDB storage would have been a second set of tables written
outside the job's transaction and much slower to read back. A rebuild reads only what the rule
deciding needs (each trial's last value; the median pruner also the values at the epoch
decided), and loads the trials into Optuna's in-memory storage without its per-trial deep copy
and validation (RowStorage): at 1,000 trials a decision costs a few milliseconds (see
docs/benchmarks.md).

Locking. Every decision takes the experiment's row lock first (SELECT ... FOR NO KEY UPDATE on
PostgreSQL, which serialises the deciders as well; a plain FOR UPDATE also conflicts with the
KEY SHARE locks that foreign-key checks take on the row, and two trials ending at once were
seen to deadlock on it; SQLite write transactions begin IMMEDIATE, which serialises them), so
two workers
never decide on stale rungs or make the same trial; the trial counter `trials_created` is also
compared-and-set. The next trial is made in the transaction that ends one (jobs.lifecycle calls
`trial_ended` from every final status change), so a trial ending and its successor commit
together or not at all. A pruning decision is stored on the job (`prune_requested`) in the
transaction that records the epoch: a worker killed after it still ends the trial pruned (the
reaper and release_job read it), and an epoch recorded twice is decided once.
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
from sqlalchemy.orm import Session

from engine.config import Hyperparameters
from jobs.events import record_event
from jobs.search.pruners import make_pruner, rung_epochs
from jobs.search.samplers import make_sampler
from jobs.search.space import distributions
from jobs.settings import get_settings
from jobs.specs import JOB_NAME_MAX_CHARS, JobCreate
from jobs.tables import EpochMetric, Experiment, Job, JobStatus

optuna.logging.set_verbosity(optuna.logging.WARNING)

TRIAL_CREATED_EVENT = "trial_created"
TRIAL_PRUNED_EVENT = "trial_pruned"
BEST_CHANGED_EVENT = "best_changed"
RUNG_KEY = "completed_rung_"  # Optuna's SuccessiveHalvingPruner's system attribute prefix
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
    sampler = make_sampler(search["sampler"], search["seed"], number, search["space"])
    return Study(STUDY_NAME, storage, sampler=sampler, pruner=make_pruner(search["pruner"]))


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
    # Imported here: submission plans experiments, which reach the lifecycle, which calls this.
    from jobs.submission import add_job

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
    if moved.rowcount != 1:  # type: ignore[attr-defined]  # a CursorResult for UPDATE
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
        )
        job.trial_number = number
        job.trial_params = params
        job.trial_attrs = attrs
        session.flush()
        record_event(
            session,
            job.id,
            TRIAL_CREATED_EVENT,
            {"job_id": job.id, "trial": number, "params": params},
        )
        created.append(job.id)
    return created


# -- telling: a trial ended ------------------------------------------------------------------


def trial_ended(session: Session, job_id: int) -> list[int]:
    """In the transaction that gave the job its final status: if it was a search's trial, note
    a new best and make the next trials. Returns the new trials' job ids."""
    job = session.execute(
        select(Job.experiment_id, Job.trial_number, Job.status).where(Job.id == job_id)
    ).one()
    if job.trial_number is None or job.experiment_id is None:
        return []
    if session.info.get(CANCELLING_KEY) == job.experiment_id:
        return []  # the experiment is being cancelled: no successor
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


CANCELLING_KEY = "cancelling_experiment"


def cancelling(session: Session, experiment_id: int) -> None:
    """Mark this transaction as cancelling the experiment: the trials it ends get no successor
    (the experiment's own flag is set after its jobs, to lock rows in the order workers do)."""
    session.info[CANCELLING_KEY] = experiment_id


# -- pruning: after each recorded epoch ------------------------------------------------------


@dataclass(frozen=True)
class PruneDecision:
    pruned: bool
    rung: int | None


def _rungs_passed(attrs: dict[str, Any]) -> int | None:
    passed = [int(key[len(RUNG_KEY) :]) for key in attrs if key.startswith(RUNG_KEY)]
    return max(passed) if passed else None


def _first_epoch_decided(pruner: dict[str, Any], attrs: dict[str, Any]) -> int:
    """The first epoch at which the pruner may stop the trial: asha's next rung for it
    (min_epochs x reduction_factor^rungs passed), median's end of warm-up."""
    if pruner["type"] == "asha":
        passed = sum(1 for key in attrs if key.startswith(RUNG_KEY))
        return int(pruner["min_epochs"] * pruner["reduction_factor"] ** passed)
    return int(pruner["min_epochs"])


def decide(session: Session, job_id: int, epoch: int) -> PruneDecision | None:
    """The pruner's decision after the trial's newly recorded `epoch`, stored on the job in the
    caller's transaction (its rung, its attributes, prune_requested). None when the job is no
    search trial, its search prunes nothing, or the epoch is its last."""
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
        return PruneDecision(pruned=True, rung=None)
    experiment = lock_experiment(session, job.experiment_id)
    search = search_of(experiment.spec)
    if search is None or search["pruner"]["type"] == "none":
        return None
    if epoch < _first_epoch_decided(search["pruner"], job.trial_attrs or {}):
        # Both pruners answer "go on" here before reading any other trial (asha below the
        # trial's next rung, median in its warm-up): no study to rebuild.
        return PruneDecision(pruned=False, rung=_rungs_passed(job.trial_attrs or {}))
    metric = search["objective"]["metric"]
    trials = load_trials(session, job.experiment_id)
    last = metric_values(session, job.experiment_id, metric)
    step_values = (
        metric_values(session, job.experiment_id, metric, epoch=epoch)
        if search["pruner"]["type"] == "median"
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
    frozen = storage.get_trial(trial_ids[job_id])
    pruned = bool(study.pruner.prune(study, frozen))
    attrs = dict(storage.get_trial(trial_ids[job_id]).system_attrs)
    rung = _rungs_passed(attrs)
    values: dict[str, Any] = {}
    if attrs != trial.attrs:
        values.update(trial_attrs=attrs, rung=rung)
    if pruned:
        values["prune_requested"] = True
    if values:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(values)
            .execution_options(synchronize_session=False)
        )
    if pruned:
        record_event(
            session,
            job_id,
            TRIAL_PRUNED_EVENT,
            {
                "job_id": job_id,
                "trial": trial.number,
                "epoch": epoch,
                "rung": rung,
                "value": _finite(curve.get(epoch)),
            },
        )
    return PruneDecision(pruned=pruned, rung=rung)


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
    """For each asha rung: its epochs, the trials that reached it, those it promoted (reached
    and not pruned there), and the value a trial reaching it now must match to go on."""
    reduction = search["pruner"]["reduction_factor"]
    maximize = search["objective"]["mode"] == "max"
    table = []
    for index, rung_epoch in enumerate(rung_epochs(search["pruner"], epochs)):
        key = f"{RUNG_KEY}{index}"
        reached = [t for t in trials if key in t.attrs]
        stopped = [
            t for t in reached if t.state == TrialState.PRUNED and t.epochs_done == rung_epoch
        ]
        values = sorted(
            (v for v in (_finite(t.attrs[key]) for t in reached) if v is not None),
            reverse=maximize,
        )
        cutoff = values[max(len(values) // reduction - 1, 0)] if values else None
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
