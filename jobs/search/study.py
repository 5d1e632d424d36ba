"""A search's trials: asking for the next trials (each made an ordinary queued job of the
experiment), telling that one ended, and its pruner's decisions. It reacts to the lifecycle's
domain events (jobs.wiring installs `on_job_ended`, `on_job_paused` and `on_epoch_stored`),
inside the transaction that ended, paused or stored an epoch of the trial, and answers with
decisions that the lifecycle writes.

State. Nothing is kept between decisions (docs/design/search-state.md): each trial's number,
params, bracket and every decision made about it are columns of its job, its objective values
are its epoch rows (with how noisy each is, `evaluation`), so a process killed at any instant
loses nothing. A decision reads only what its rule needs.

Locking. Every decision takes the experiment's row lock first (SELECT ... FOR NO KEY UPDATE on
PostgreSQL, which serialises the deciders; a plain FOR UPDATE also conflicts with the KEY SHARE
locks that foreign-key checks take on the row, and two trials ending at once were seen to
deadlock on it; SQLite's write transactions begin IMMEDIATE), so two workers never decide on
stale rungs or make the same trial; the trial counter `trials_created` is also compared-and-set.
A trial's successor is made in the transaction that ends it; a pruning or pausing decision is
written by the lifecycle (fenced by the lease) in the transaction that stores the epoch, so an
epoch recorded twice is decided once and a worker killed after the decision still carries it
out (the reaper and release_job read `prune_requested` and `pause_requested`).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

from optuna.trial import TrialState
from sqlalchemy import Text, func, or_, select, type_coerce, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from engine.config import Hyperparameters
from engine.datasets import DATASETS
from jobs.dispatch import head_fair_share_key
from jobs.events import record_event
from jobs.search.noise import ACCURACY_METRICS, Measured, measured, worse_beyond_noise
from jobs.search.pruners import (
    AshaPruner,
    Decision,
    Entry,
    HyperbandPruner,
    MedianPruner,
    Member,
    Objective,
    Outcome,
    Pruner,
    cutoff_of,
    keep_count,
    pruner_for,
)
from jobs.search.samplers import Observation, sampler_for
from jobs.settings import get_settings
from jobs.signals import (
    EndCause,
    EpochStored,
    JobEnded,
    JobPaused,
    LogEntry,
    ResumeTrial,
    StopTrial,
    TrialDecision,
    TrialMove,
)
from jobs.specs import JOB_NAME_MAX_CHARS, JobCreate
from jobs.submission import TrialColumns, add_job
from jobs.tables import EpochMetric, Experiment, Job, JobStatus

TRIAL_CREATED_EVENT = "trial_created"
TRIAL_PRUNED_EVENT = "trial_pruned"
TRIAL_PAUSED_EVENT = "trial_paused"
TRIAL_RESUMED_EVENT = "trial_resumed"
BEST_CHANGED_EVENT = "best_changed"
SEARCH_EVENTS = (
    TRIAL_CREATED_EVENT,
    TRIAL_PAUSED_EVENT,
    TRIAL_RESUMED_EVENT,
    TRIAL_PRUNED_EVENT,
    BEST_CHANGED_EVENT,
)
ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
# A rung where at least this share of the trials tie with its cutoff (within the noise margin)
# separated nothing: the experiment warns that its first rung probably comes too early.
TIE_WARNING_SHARE = 0.5


class SearchConflict(Exception):
    """The trial counter moved under this transaction: roll back and decide again."""


class Trial(NamedTuple):
    """A trial's job row, as far as a decision reads it. (A named tuple: a decision builds one
    per trial, and at 1,000 trials a frozen dataclass's slower construction shows.)"""

    job_id: int
    number: int
    status: str  # a JobStatus value
    params: dict[str, Any]
    state: dict[str, Any]  # {"bracket": ..., "decisions": [...]}
    epochs_done: int
    prune_requested: bool
    pause_requested: bool

    @property
    def bracket(self) -> int | None:
        bracket = self.state.get("bracket")
        return None if bracket is None else int(bracket)

    @property
    def decisions(self) -> list[Decision]:
        return [Decision.from_record(item) for item in self.state.get("decisions", ())]

    @property
    def observed_state(self) -> TrialState:
        return observed_state(self.status, self.prune_requested)


def observed_state(status: str, prune_requested: bool) -> TrialState:
    """A trial's state as a sampler sees it."""
    if prune_requested or status == JobStatus.PRUNED:
        return TrialState.PRUNED
    if status == JobStatus.SUCCEEDED:
        return TrialState.COMPLETE
    if status in (*ACTIVE, JobStatus.PAUSED):
        return TrialState.RUNNING
    return TrialState.FAIL


def search_of(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The experiment's stored search section, or None for a grid experiment."""
    return spec.get("search")


def maximizing(search: dict[str, Any]) -> bool:
    return bool(search["objective"]["mode"] == "max")


def better(search: dict[str, Any], value: float, than: float | None) -> bool:
    if than is None:
        return True
    return value > than if maximizing(search) else value < than


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def lock_experiment(session: Session, experiment_id: int) -> Any:
    """The experiment's search fields, under its row lock until the transaction ends."""
    return session.execute(
        select(
            Experiment.id,
            Experiment.name,
            Experiment.spec,
            Experiment.priority,
            Experiment.trials_created,
            Experiment.trials_withdrawn,
            Experiment.free_places,
            Experiment.next_place,
            Experiment.cancel_requested,
            Experiment.owner,
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


def load_trials(
    session: Session, experiment_id: int, *, numbers: range | None = None
) -> list[Trial]:
    """The experiment's trials (those numbered in `numbers`, when given), by number."""
    query = select(
        Job.id,
        Job.trial_number,
        Job.status,
        type_coerce(Job.trial_params, Text),
        type_coerce(Job.trial_state, Text),
        Job.epochs_done,
        Job.prune_requested,
        Job.pause_requested,
    ).where(Job.experiment_id == experiment_id, Job.trial_number.is_not(None))
    if numbers is not None:
        query = query.where(Job.trial_number >= numbers.start, Job.trial_number < numbers.stop)
    rows = session.execute(query.order_by(Job.trial_number)).all()
    params = _json_values([row[3] for row in rows])
    states = _json_values([row[4] for row in rows])
    return [
        Trial(
            row[0],
            cast(int, row[1]),
            row[2],
            params[index],
            states[index],
            row[5],
            row[6],
            row[7],
        )  # fmt: skip
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


# -- what a decision compares -----------------------------------------------------------------


def _images(metric: str, evaluation: dict[str, Any] | None, spec: dict[str, Any]) -> int:
    """The images an evaluation of the metric counted: as the epoch recorded it, else as the
    experiment asked (its samples, or the dataset's whole split)."""
    split = "train" if metric.startswith("train") else "test"
    recorded = (evaluation or {}).get(f"{split}_images")
    if recorded:
        return int(recorded)
    asked = spec.get(f"{split}_samples")
    if asked:
        return int(asked)
    return 50_000 if split == "train" else DATASETS[spec["dataset"]].test_images


def _measured(
    metric: str, value: float, evaluation: dict[str, Any] | None, spec: dict[str, Any]
) -> Measured:
    loss_error = (evaluation or {}).get(f"{metric}_standard_error")
    return measured(
        metric, value, images=_images(metric, evaluation, spec), loss_standard_error=loss_error
    )


def objective_of(
    search: dict[str, Any], spec: dict[str, Any], evaluation: dict[str, Any] | None
) -> Objective:
    metric = search["objective"]["metric"]
    return Objective(metric, maximizing(search), _images(metric, evaluation, spec))


def measured_at(
    session: Session,
    experiment_id: int,
    metric: str,
    epoch: int,
    spec: dict[str, Any],
    *,
    job_ids: Iterable[int] | None = None,
    succeeded: bool = False,
) -> dict[int, Measured]:
    """Each trial's objective at `epoch` (of the trials that reached it, only those that
    succeeded, or of `job_ids`), with its standard error."""
    columns = (
        EpochMetric.job_id,
        getattr(EpochMetric, metric),
        type_coerce(EpochMetric.evaluation, Text),
    )
    if job_ids is not None:  # by the metrics' key alone
        query = select(*columns).where(
            EpochMetric.job_id.in_(sorted(set(job_ids))), EpochMetric.epoch == epoch
        )
    else:
        query = (
            select(*columns)
            .join(Job, Job.id == EpochMetric.job_id)
            .where(
                Job.experiment_id == experiment_id,
                Job.trial_number.is_not(None),
                EpochMetric.epoch == epoch,
            )
        )
        if succeeded:
            query = query.where(Job.status == JobStatus.SUCCEEDED)
    rows = session.execute(query).all()
    evaluations = _json_values([row[2] for row in rows])
    return {
        int(row[0]): _measured(metric, float(row[1]), evaluations[index] or None, spec)
        for index, row in enumerate(rows)
        if _finite(row[1]) is not None
    }


def _curve(
    session: Session, job_id: int, metric: str, upto: int, spec: dict[str, Any]
) -> list[Measured]:
    """The trial's finite objective at each epoch up to `upto`."""
    rows = session.execute(
        select(getattr(EpochMetric, metric), type_coerce(EpochMetric.evaluation, Text)).where(
            EpochMetric.job_id == job_id, EpochMetric.epoch <= upto
        )
    ).all()
    evaluations = _json_values([row[1] for row in rows])
    return [
        _measured(metric, float(row[0]), evaluations[index] or None, spec)
        for index, row in enumerate(rows)
        if _finite(row[0]) is not None
    ]


# -- asking: the next trials -------------------------------------------------------------------


def _label(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else str(value).lower()


def trial_job_spec(
    spec: dict[str, Any],
    experiment_name: str,
    number: int,
    params: dict[str, Any],
    *,
    priority: int = 0,
) -> JobCreate:
    """The job of trial `number`: the shared settings with the trial's params in their place,
    the experiment's tags and its priority at the time the trial is made."""
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
        priority=priority,
    )


def observations(session: Session, experiment_id: int, search: dict[str, Any]) -> list[Observation]:
    """The trials as a sampler sees them, by number, each with its objective at its last
    recorded epoch; withdrawn trials (cancelled with their search) are left out, so a resumed
    search proposes their points again. One query, reading no decision record."""
    value = getattr(EpochMetric, search["objective"]["metric"])
    rows = session.execute(
        select(
            Job.trial_number,
            Job.status,
            Job.prune_requested,
            type_coerce(Job.trial_params, Text),
            value,
        )
        .outerjoin(
            EpochMetric, (EpochMetric.job_id == Job.id) & (EpochMetric.epoch == Job.epochs_done)
        )
        .where(
            Job.experiment_id == experiment_id,
            Job.trial_number.is_not(None),
            # Only a cancelled trial can have been withdrawn: the others' state is not parsed.
            or_(
                Job.status != JobStatus.CANCELLED,
                func.coalesce(Job.trial_state["withdrawn"].as_boolean(), False).is_(False),
            ),
        )
        .order_by(Job.trial_number)
    ).all()
    params = _json_values([row[3] for row in rows])
    return [
        Observation(
            int(row[0]),
            params[index],
            observed_state(row[1], row[2]),
            None if row[4] is None else _finite(float(row[4])),
        )
        for index, row in enumerate(rows)
    ]


def fill(session: Session, experiment_id: int) -> list[int]:
    """Make trials until max_concurrent are queued or running (paused trials hold no worker),
    or max_trials were made (none once the experiment is cancelled). Takes the experiment's row
    lock; returns the new job ids, which are sent to the queue when the caller's transaction
    commits. A trial takes the experiment's current priority and tags, and its turn in the
    queue as a lone job submitted now would."""
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
    room = min(search["max_concurrent"] - active, search["max_trials"] - counted_trials(experiment))
    if room <= 0:
        return []
    # A withdrawn trial's place is given first: a resumed grid search proposes its point again.
    free = list(experiment.free_places or [])
    fresh = int(experiment.next_place)
    places = [*free[:room], *range(fresh, fresh + room - len(free[:room]))]
    moved = session.execute(
        update(Experiment)
        .where(Experiment.id == experiment_id, Experiment.trials_created == made)
        .values(
            trials_created=made + room,
            free_places=free[room:],
            next_place=fresh + room - len(free[:room]),
        )
        .execution_options(synchronize_session=False)
    )
    assert isinstance(moved, CursorResult)
    if moved.rowcount != 1:
        raise SearchConflict(f"experiment {experiment_id}: trials were made meanwhile")
    sampler = sampler_for(search)
    history: list[Observation] = []
    if sampler.reads_history:
        history = observations(session, experiment_id, search)
    pruner = pruner_for(search["pruner"])
    epochs = int(experiment.spec["hyperparameters"]["epochs"])
    settings = get_settings()
    priority = int(experiment.priority)
    created = []
    for offset, place in enumerate(places):
        number = made + offset
        params = sampler.ask(place, history)
        state = {"bracket": pruner.bracket_of(number, epochs), "place": place, "decisions": []}
        job = add_job(
            session,
            trial_job_spec(experiment.spec, experiment.name, number, params, priority=priority),
            settings=settings,
            experiment_id=experiment_id,
            fair_share_key=head_fair_share_key(session, priority),
            owner=experiment.owner,
            trial=TrialColumns(number, params, state),
        )
        record_event(
            session,
            job.id,
            TRIAL_CREATED_EVENT,
            {"job_id": job.id, "trial": number, "params": params, "bracket": state["bracket"]},
        )
        if sampler.reads_history:
            history.append(Observation(number, params, TrialState.RUNNING))
        created.append(job.id)
    return created


def counted_trials(experiment: Any) -> int:
    """The trials that count against max_trials: those made, less those withdrawn (the
    experiment's row as lock_experiment reads it)."""
    return int(experiment.trials_created) - int(experiment.trials_withdrawn)


# -- telling: a trial ended or paused ---------------------------------------------------------


def on_job_ended(session: Session, event: JobEnded) -> list[TrialMove]:
    """A job ended (jobs.signals): if it was a search's trial, note a new best, make the next
    trials and decide its bracket's rung if it was the last one pending there; in the
    transaction that ended it. Nothing when its experiment is being cancelled."""
    if event.experiment_id is None or event.cause == EndCause.EXPERIMENT_CANCEL:
        return []
    trial_ended(session, event.job_id)
    return bracket_moves(session, event.job_id)


def on_job_paused(session: Session, event: JobPaused) -> list[TrialMove]:
    """A trial started waiting at a rung: it holds no worker now, so the search makes its next
    trial; and if it was the last of its bracket to get there, the bracket is decided."""
    if event.experiment_id is None:
        return []
    fill(session, event.experiment_id)
    return bracket_moves(session, event.job_id)


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
    if job.status == JobStatus.SUCCEEDED:
        _note_best(session, job.experiment_id, search, job_id)
    return fill(session, job.experiment_id)


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


def _best_succeeded(
    session: Session,
    experiment_id: int,
    search: dict[str, Any],
    *,
    job_id: int | None = None,
    excluding: int | None = None,
) -> tuple[int, int, float] | None:
    """(job id, trial number, value) of the succeeded trial with the best finite objective at
    its last epoch (ties: the lower number), of one job's or leaving one out; in SQL, so a
    trial's end reads no other trial."""
    column = getattr(EpochMetric, search["objective"]["metric"])
    query = (
        select(Job.id, Job.trial_number, column)
        .join(EpochMetric, (EpochMetric.job_id == Job.id) & (EpochMetric.epoch == Job.epochs_done))
        .where(
            Job.experiment_id == experiment_id,
            Job.trial_number.is_not(None),
            Job.status == JobStatus.SUCCEEDED,
            # Neither NULL, NaN (above every number on PostgreSQL) nor infinite.
            column.between(-sys.float_info.max, sys.float_info.max),
        )
        .order_by(column.desc() if maximizing(search) else column.asc(), Job.trial_number)
        .limit(1)
    )
    if job_id is not None:
        query = query.where(Job.id == job_id)
    if excluding is not None:
        query = query.where(Job.id != excluding)
    row = session.execute(query).first()
    return None if row is None else (int(row[0]), int(row[1]), float(row[2]))


def _note_best(session: Session, experiment_id: int, search: dict[str, Any], job_id: int) -> None:
    """Record `best_changed` when the trial that just succeeded is the search's best now."""
    now = _best_succeeded(session, experiment_id, search, job_id=job_id)
    if now is None:
        return
    before = _best_succeeded(session, experiment_id, search, excluding=job_id)
    if before is not None and not (
        better(search, now[2], before[2]) or (now[2] == before[2] and now[1] < before[1])
    ):
        return
    params = session.execute(
        select(type_coerce(Job.trial_params, Text)).where(Job.id == job_id)
    ).scalar_one()
    record_event(
        session,
        job_id,
        BEST_CHANGED_EVENT,
        {
            "job_id": job_id,
            "trial": now[1],
            "params": _json_values([params])[0],
            "value": now[2],
            "previous_job_id": None if before is None else before[0],
            "previous_value": None if before is None else before[2],
        },
    )


def withdraw(session: Session, experiment_id: int, job_ids: Iterable[int]) -> None:
    """Trials cancelled with their search leave it: they no longer count against max_trials,
    and a resumed search gives their sampler places again. The caller holds the experiment's
    row lock."""
    ids = sorted(set(job_ids))
    if not ids:
        return
    rows = session.execute(
        select(Job.id, Job.trial_number, type_coerce(Job.trial_state, Text)).where(
            Job.experiment_id == experiment_id,
            Job.trial_number.is_not(None),
            Job.id.in_(ids),
        )
    ).all()
    places = []
    for (job_id, number, _), state in zip(rows, _json_values([r[2] for r in rows]), strict=True):
        if state.get("withdrawn"):
            continue
        places.append(int(state.get("place", number)))
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(trial_state={**state, "withdrawn": True})
            .execution_options(synchronize_session=False)
        )
    if not places:
        return
    experiment = lock_experiment(session, experiment_id)
    session.execute(
        update(Experiment)
        .where(Experiment.id == experiment_id)
        .values(
            trials_withdrawn=int(experiment.trials_withdrawn) + len(places),
            free_places=sorted([*(experiment.free_places or []), *places]),
        )
        .execution_options(synchronize_session=False)
    )


# -- pruning: after each recorded epoch, and at a bracket's rung ------------------------------


def _explained(kind: str, trial: int, job_id: int, decision: Decision) -> LogEntry:
    return (kind, {"job_id": job_id, "trial": trial, **decision.record()})


def _with_decision(state: dict[str, Any], decision: Decision) -> dict[str, Any]:
    return {**state, "decisions": [*state.get("decisions", ()), decision.record()]}


def on_epoch_stored(session: Session, event: EpochStored) -> TrialDecision | None:
    """An epoch of a job was stored (jobs.signals): a search trial's pruner decides."""
    if event.experiment_id is None or event.epoch >= event.epochs_total:
        return None
    return decide(session, event.job_id, event.epoch, dict(event.evaluation or {}))


def decide(
    session: Session, job_id: int, epoch: int, evaluation: dict[str, Any] | None = None
) -> TrialDecision | None:
    """The pruner's decision after the trial's newly stored `epoch`, for the lifecycle to write
    (its state with the decision, its rung, whether it stops or pauses, the event that
    explains it). None when the job is no search trial, the epoch is no decision epoch of its
    pruner, or the trial was decided already."""
    job = session.execute(
        select(
            Job.experiment_id,
            Job.trial_number,
            Job.epochs_total,
            Job.prune_requested,
            Job.pause_requested,
            type_coerce(Job.trial_state, Text),
        ).where(Job.id == job_id)
    ).one()
    if job.trial_number is None or job.experiment_id is None or epoch >= job.epochs_total:
        return None
    if job.prune_requested or job.pause_requested:  # decided already (an epoch recorded again)
        return None
    state: dict[str, Any] = _json_values([job[5]])[0]
    experiment = lock_experiment(session, job.experiment_id)
    search = search_of(experiment.spec)
    if search is None:
        return None
    pruner = pruner_for(search["pruner"])
    bracket = state.get("bracket")
    epochs = int(job.epochs_total)
    if not pruner.prunes or not pruner.decides_at(epoch, epochs, bracket):
        return None
    spec = experiment.spec
    metric = search["objective"]["metric"]
    objective = objective_of(search, spec, evaluation)
    own = measured_at(session, job.experiment_id, metric, epoch, spec, job_ids=[job_id])
    if job_id not in own:
        return None  # a diverged epoch (NaN): nothing to compare
    entry = Entry(job_id, own[job_id])
    decision = _decision(
        session, pruner, entry, epoch, epochs, bracket, objective, job.experiment_id, search, spec
    )
    if decision is None:
        return None
    trial = int(job.trial_number)
    kind = {
        Outcome.STOPPED: TRIAL_PRUNED_EVENT,
        Outcome.PAUSED: TRIAL_PAUSED_EVENT,
    }.get(decision.outcome)
    return TrialDecision(
        state=_with_decision(state, decision),
        rung=decision.rung,
        prune=decision.outcome == Outcome.STOPPED,
        pause=decision.outcome == Outcome.PAUSED,
        event=None if kind is None else _explained(kind, trial, job_id, decision),
    )


def _decision(
    session: Session,
    pruner: Pruner,
    entry: Entry,
    epoch: int,
    epochs: int,
    bracket: int | None,
    objective: Objective,
    experiment_id: int,
    search: dict[str, Any],
    spec: dict[str, Any],
) -> Decision | None:
    metric = objective.metric
    if isinstance(pruner, AshaPruner):
        at_rung = measured_at(session, experiment_id, metric, epoch, spec)
        entries = [Entry(job_id, value) for job_id, value in at_rung.items()]
        return pruner.on_arrival(entry, epoch, entries, epochs=epochs, objective=objective)
    if isinstance(pruner, MedianPruner):
        peers = measured_at(session, experiment_id, metric, epoch, spec, succeeded=True)
        own = _curve(session, entry.job_id, metric, epoch, spec)
        best = max(own, key=lambda m: m.value if objective.maximize else -m.value)
        return pruner.on_epoch(
            Entry(entry.job_id, best),
            epoch,
            [Entry(job_id, value) for job_id, value in peers.items() if job_id != entry.job_id],
            objective=objective,
        )
    if isinstance(pruner, HyperbandPruner):
        assert bracket is not None
        rung = pruner.rungs(epochs, bracket).index(epoch)
        members = load_trials(
            session,
            experiment_id,
            numbers=pruner.bracket_members(bracket, epochs, search["max_trials"]),
        )
        decided = _rung_decision(members, rung)
        if decided is not None and decided.cutoff is not None:
            cutoff = measured(
                metric, decided.cutoff, images=objective.images, loss_standard_error=None
            )
            return pruner.against_decided(
                entry, epoch, cutoff, decided.compared_with,
                epochs=epochs, bracket=bracket, objective=objective,
            )  # fmt: skip
        return Decision(Outcome.PAUSED, epoch, rung, entry.value.value, bracket=bracket)
    return None


def _rung_decision(members: Sequence[Trial], rung: int) -> Decision | None:
    """The decision a bracket made at a rung (any of its promotions or stops there), if made."""
    for trial in members:
        for decision in trial.decisions:
            chosen = decision.outcome in (Outcome.PROMOTED, Outcome.STOPPED)
            if chosen and decision.rung == rung and decision.cutoff is not None:
                return decision
    return None


def bracket_moves(session: Session, job_id: int) -> list[TrialMove]:
    """When the trial's bracket (Hyperband) has every trial at its next rung or ended before it,
    the decision there: each waiting trial resumed or stopped. Otherwise nothing."""
    job = session.execute(
        select(Job.experiment_id, Job.trial_number, type_coerce(Job.trial_state, Text)).where(
            Job.id == job_id
        )
    ).one()
    if job.trial_number is None or job.experiment_id is None:
        return []
    bracket = _json_values([job[2]])[0].get("bracket")
    if bracket is None:
        return []
    experiment = lock_experiment(session, job.experiment_id)
    search = search_of(experiment.spec)
    if search is None or experiment.cancel_requested:
        return []
    pruner = pruner_for(search["pruner"])
    if not isinstance(pruner, HyperbandPruner):
        return []
    spec = experiment.spec
    epochs = int(spec["hyperparameters"]["epochs"])
    numbers = pruner.bracket_members(int(bracket), epochs, search["max_trials"])
    members = load_trials(session, job.experiment_id, numbers=numbers)
    if len(members) < len(numbers):
        return []  # not every trial of the bracket is made yet
    for rung, epoch in enumerate(pruner.rungs(epochs, int(bracket))):
        if _rung_decision(members, rung) is not None:
            continue
        ready = pruner.waiting_at(
            [Member(m.job_id, str(m.status), m.epochs_done) for m in members], epoch
        )
        if ready is None:
            return []
        waiting = [m for m in members if m.job_id in ready]
        return _choose(session, pruner, waiting, epoch, epochs, int(bracket), search, spec)
    return []


def _choose(
    session: Session,
    pruner: HyperbandPruner,
    waiting: list[Trial],
    epoch: int,
    epochs: int,
    bracket: int,
    search: dict[str, Any],
    spec: dict[str, Any],
) -> list[TrialMove]:
    metric = search["objective"]["metric"]
    experiment_id = session.execute(
        select(Job.experiment_id).where(Job.id == waiting[0].job_id)
    ).scalar_one()
    assert experiment_id is not None
    values = measured_at(
        session, experiment_id, metric, epoch, spec, job_ids=[t.job_id for t in waiting]
    )
    evaluation = session.execute(
        select(type_coerce(EpochMetric.evaluation, Text)).where(
            EpochMetric.job_id == waiting[0].job_id, EpochMetric.epoch == epoch
        )
    ).scalar()
    objective = objective_of(search, spec, _json_values([evaluation])[0] or None)
    # A waiting trial whose value is not finite (diverged) is compared as the worst.
    worst = -math.inf if objective.maximize else math.inf
    entries = [Entry(t.job_id, values.get(t.job_id, Measured(worst, 0.0))) for t in waiting]
    by_job = {t.job_id: t for t in waiting}
    moves: list[TrialMove] = []
    for job_id, decision in pruner.choose(
        entries, epoch, epochs=epochs, bracket=bracket, objective=objective
    ):
        trial = by_job[job_id]
        state = _with_decision(trial.state, decision)
        if decision.outcome == Outcome.PROMOTED:
            event = _explained(TRIAL_RESUMED_EVENT, trial.number, job_id, decision)
            moves.append(ResumeTrial(job_id, state, decision.rung, event))
        else:
            event = _explained(TRIAL_PRUNED_EVENT, trial.number, job_id, decision)
            moves.append(StopTrial(job_id, state, decision.rung, event))
    return moves


# -- reading: the search object of an experiment ----------------------------------------------


@dataclass(frozen=True)
class Rung:
    """One rung (of one bracket, for Hyperband): the trials that reached it, how many went on,
    stopped or wait there, and the cutoff with the noise margin of its last decision."""

    epochs: int
    bracket: int | None
    reached: int
    promoted: int
    stopped: int
    waiting: int
    cutoff: float | None
    margin: float | None
    decided: bool


@dataclass(frozen=True)
class BestTrial:
    job_id: int
    trial: int
    params: dict[str, Any]
    value: float


@dataclass(frozen=True)
class SearchWarning:
    """Something the search's decisions suggest about its settings."""

    code: str
    rung_epochs: int | None
    message: str


@dataclass(frozen=True)
class SearchSummary:
    max_trials: int
    trials_created: int
    best: BestTrial | None
    rungs: list[Rung]
    epochs_spent: int
    epochs_full: int
    settings: dict[str, Any] = field(default_factory=dict)
    warnings: list[SearchWarning] = field(default_factory=list)
    paused: int = 0


def rung_table(search: dict[str, Any], trials: list[Trial], epochs: int) -> list[Rung]:
    """Every rung of the pruner with what its decisions did (brackets in order for
    Hyperband); empty for a pruner without rungs."""
    pruner = pruner_for(search["pruner"])
    if isinstance(pruner, HyperbandPruner):
        brackets = sorted({t.bracket for t in trials if t.bracket is not None})
        return [
            _rung_row(
                pruner, search, [t for t in trials if t.bracket == b], epochs, b, index, epoch
            )
            for b in brackets
            for index, epoch in enumerate(pruner.rungs(epochs, b))
        ]
    return [
        _rung_row(pruner, search, trials, epochs, None, index, epoch)
        for index, epoch in enumerate(pruner.rungs(epochs))
    ]


def _rung_row(
    pruner: Pruner,
    search: dict[str, Any],
    trials: list[Trial],
    epochs: int,
    bracket: int | None,
    rung: int,
    epoch: int,
) -> Rung:
    at_rung = [
        (trial, decision)
        for trial in trials
        for decision in trial.decisions
        if decision.rung == rung and decision.epoch == epoch
    ]
    reached = {trial.job_id for trial, _ in at_rung}
    final = {
        trial.job_id: decision for trial, decision in at_rung if decision.outcome != Outcome.PAUSED
    }
    promoted = sum(d.outcome in (Outcome.PROMOTED, Outcome.WENT_ON) for d in final.values())
    stopped = sum(d.outcome == Outcome.STOPPED for d in final.values())
    waiting = sum(
        trial.status == JobStatus.PAUSED and trial.epochs_done == epoch for trial in trials
    )
    judged = [d for d in final.values() if d.cutoff is not None]
    cutoff = margin = None
    if isinstance(pruner, AshaPruner):
        values = [
            Entry(trial.job_id, Measured(d.value, 0.0))
            for trial, d in at_rung
            if d.value is not None
        ]
        if len(values) >= 2:
            keep = keep_count(len(values), pruner.reduction_factor)
            cutoff = cutoff_of(values, keep, maximize=maximizing(search)).value.value
        margin = judged[-1].margin if judged else None
    elif judged:
        cutoff, margin = judged[-1].cutoff, judged[-1].margin
    return Rung(
        epoch, bracket, len(reached), promoted, stopped, waiting, cutoff, margin, bool(judged)
    )


def search_warnings(
    search: dict[str, Any], spec: dict[str, Any], trials: list[Trial], rungs: list[Rung]
) -> list[SearchWarning]:
    """Rungs whose decisions could not have separated the trials: a cutoff within the noise of
    chance (an accuracy no better than guessing), or most trials tied with the cutoff."""
    metric = search["objective"]["metric"]
    found: list[SearchWarning] = []
    chance = 1.0 / DATASETS[spec["dataset"]].num_classes
    for rung in rungs:
        if not rung.decided or rung.cutoff is None:
            continue
        where = f"at {rung.epochs} epochs" + (
            "" if rung.bracket is None else f" (bracket {rung.bracket})"
        )
        if metric in ACCURACY_METRICS:
            images = _images(metric, None, spec)
            cutoff = measured(metric, rung.cutoff, images=images, loss_standard_error=None)
            at_chance = measured(metric, chance, images=images, loss_standard_error=None)
            above, allowed = worse_beyond_noise(
                at_chance, cutoff, maximize=True, metric=metric, images=images
            )
            if not above:
                found.append(
                    SearchWarning(
                        "cutoff_at_chance",
                        rung.epochs,
                        f"The cutoff {where}, {rung.cutoff:.1%}, is within the noise "
                        f"(±{allowed:.1%}) of chance ({chance:.1%}): the curves had probably "
                        "not separated yet. A later first rung (pruner.min_epochs) or the "
                        "hyperband pruner hedges against that.",
                    )
                )
                continue
        decisions = [
            d
            for t in trials
            for d in t.decisions
            if d.epoch == rung.epochs and d.margin is not None and d.value is not None
            and (rung.bracket is None or t.bracket == rung.bracket)
        ]  # fmt: skip
        tied = sum(
            abs(d.value - rung.cutoff) <= d.margin
            for d in decisions
            if d.value is not None and d.margin is not None
        )
        if decisions and tied / len(decisions) >= TIE_WARNING_SHARE and len(decisions) >= 3:
            found.append(
                SearchWarning(
                    "trials_tie",
                    rung.epochs,
                    f"{tied} of {len(decisions)} trials tie with the cutoff {where} (within "
                    "the noise margin): that rung separated few trials, so they went on. A "
                    "later first rung, or more test images, would decide sooner.",
                )
            )
    return found


def search_settings(search: dict[str, Any], epochs: int) -> dict[str, Any]:
    """The sampler's and the pruner's settings as they act (defaults filled in)."""
    pruner = pruner_for(search["pruner"])
    shown: dict[str, Any] = {
        **sampler_for(search).describe(),
        "pruner": pruner.describe(),
        "objective": search["objective"],
        "max_trials": search["max_trials"],
        "max_concurrent": search["max_concurrent"],
    }
    if isinstance(pruner, HyperbandPruner):
        shown["brackets"] = [
            {"first_rung_epochs": pruner.first_rung(epochs, position), "trials": bracket.size}
            for position, bracket in enumerate(pruner.layout(epochs))
        ]
    elif pruner.rungs(epochs):
        shown["rungs_epochs"] = pruner.rungs(epochs)
    return shown


def summarize_search(
    session: Session, experiment: Experiment, search: dict[str, Any]
) -> SearchSummary:
    trials = load_trials(session, experiment.id)
    last = metric_values(session, experiment.id, search["objective"]["metric"])
    best = best_trial(search, trials, last)
    epochs = int(experiment.spec["hyperparameters"]["epochs"])
    rungs = rung_table(search, trials, epochs)
    return SearchSummary(
        max_trials=search["max_trials"],
        trials_created=experiment.trials_created,
        best=None
        if best is None
        else BestTrial(best[0].job_id, best[0].number, best[0].params, best[1]),
        rungs=rungs,
        epochs_spent=sum(t.epochs_done for t in trials),
        epochs_full=search["max_trials"] * epochs,
        settings=search_settings(search, epochs),
        warnings=search_warnings(search, experiment.spec, trials, rungs),
        paused=sum(t.status == JobStatus.PAUSED for t in trials),
    )
