"""The samplers a search may name: one class each, proposing a trial's params, and a registry by
name (the request model takes its choices from it).

A sampler sees the search's history as plain observations (jobs.search.study reads them from the
job rows), so nothing is kept between asks. `random` and `grid` need no history: trial n of a
grid takes point n of the grid shuffled once by the search's seed (as Optuna's GridSampler
orders it), and a random trial draws from a generator seeded by (search seed, trial number), so
the same seed gives the same trials however the trials interleave. `tpe` rebuilds an Optuna
study from the observations and asks Optuna's TPESampler; its first `startup_trials` trials are
random (Optuna's n_startup_trials).
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import TPESampler
from optuna.storages import InMemoryStorage
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

optuna.logging.set_verbosity(optuna.logging.WARNING)

# name -> {distribution: values}, as a stored search's `space`.
Space = Mapping[str, Mapping[str, list[Any]]]
DEFAULT_TPE_STARTUP_TRIALS = 10  # Optuna's default
_STUDY_NAME = "search"
# Optuna requires a start time on each trial; no rule used here reads it.
_STARTED = datetime(2000, 1, 1, tzinfo=UTC)


def trial_seed(search_seed: int, trial_number: int) -> int:
    """A seed for one trial's draws, a function of the search's seed and the trial number."""
    return int(np.random.SeedSequence([search_seed, trial_number]).generate_state(1)[0])


def distribution(dimension: Mapping[str, list[Any]]) -> BaseDistribution:
    """The Optuna distribution of a checked dimension."""
    kind, values = next(iter(dimension.items()))
    if kind == "choice":
        return CategoricalDistribution(values)
    if kind == "int":
        return IntDistribution(int(values[0]), int(values[1]))
    return FloatDistribution(float(values[0]), float(values[1]), log=kind == "loguniform")


def distributions(space: Space) -> dict[str, BaseDistribution]:
    return {name: distribution(dimension) for name, dimension in space.items()}


def grid_values(space: Space) -> dict[str, list[Any]]:
    """The grid of a space whose every dimension is a choice."""
    return {name: list(dimension["choice"]) for name, dimension in space.items()}


@dataclass(frozen=True)
class Observation:
    """One trial as a sampler sees it: its params, and its objective value once it succeeded
    (None while it runs; `pruned` and `failed` trials have no value)."""

    number: int
    params: dict[str, Any]
    state: TrialState
    value: float | None = None


class Sampler(ABC):
    """A sampler built from a stored search section."""

    name: ClassVar[str]
    # Whether it reads the other trials (the caller reads them from the rows only then).
    reads_history: ClassVar[bool] = False

    def __init__(self, search: Mapping[str, Any]) -> None:
        self.search = search

    @abstractmethod
    def ask(self, number: int, history: Sequence[Observation]) -> dict[str, Any]:
        """The params of trial `number`, in the space's order."""

    def describe(self) -> dict[str, Any]:
        """The settings shown with the experiment."""
        return {"sampler": self.name, "seed": self.search["seed"]}


class Random(Sampler):
    """Each dimension drawn independently: uniform, log-uniform, an integer, or a choice."""

    name = "random"

    def ask(self, number: int, history: Sequence[Observation]) -> dict[str, Any]:
        rng = np.random.default_rng(trial_seed(self.search["seed"], number))
        params: dict[str, Any] = {}
        for name, dimension in self.search["space"].items():
            kind, values = next(iter(dimension.items()))
            if kind == "choice":
                params[name] = values[int(rng.integers(len(values)))]
            elif kind == "int":
                params[name] = int(rng.integers(int(values[0]), int(values[1]) + 1))
            elif kind == "loguniform":
                low, high = math.log(values[0]), math.log(values[1])
                params[name] = float(math.exp(rng.uniform(low, high)))
            else:
                params[name] = float(rng.uniform(values[0], values[1]))
        return params


class Grid(Sampler):
    """Every point of a space of choices, in an order shuffled once by the search's seed (the
    order Optuna's GridSampler gives); trial n takes point n."""

    name = "grid"

    def points(self) -> tuple[list[str], list[tuple[Any, ...]]]:
        grid = grid_values(self.search["space"])
        names = sorted(grid)
        points = list(itertools.product(*(grid[name] for name in names)))
        np.random.RandomState(self.search["seed"] or 0).shuffle(points)
        return names, points

    def ask(self, number: int, history: Sequence[Observation]) -> dict[str, Any]:
        names, points = self.points()
        point = dict(zip(names, points[number % len(points)], strict=True))
        return {name: point[name] for name in self.search["space"]}


class _Storage(InMemoryStorage):
    """Optuna's in-memory storage, filled with the observations in one step: `add_trials`
    deep-copies and validates each trial, which at 1,000 trials costs more than an ask may."""

    def load(self, study_id: int, trials: list[FrozenTrial]) -> None:
        with self._lock:
            study = self._studies[study_id]
            for trial in trials:
                self._max_trial_id += 1
                trial._trial_id = self._max_trial_id
                trial.number = len(study.trials)
                self._trial_id_to_study_id_and_number[trial._trial_id] = (study_id, trial.number)
                study.trials.append(trial)
                self._update_cache(trial._trial_id, study_id)


class Tpe(Sampler):
    """Tree-structured Parzen estimator (Optuna's TPESampler); its first `startup_trials`
    trials are random. constant_liar: trials still running count as bad results, so concurrent
    trials spread out instead of all proposing the same point."""

    name = "tpe"
    reads_history = True

    @property
    def startup_trials(self) -> int:
        return int(self.search.get("startup_trials") or DEFAULT_TPE_STARTUP_TRIALS)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "startup_trials": self.startup_trials}

    def ask(self, number: int, history: Sequence[Observation]) -> dict[str, Any]:
        maximize = self.search["objective"]["mode"] == "max"
        storage = _Storage()
        direction = StudyDirection.MAXIMIZE if maximize else StudyDirection.MINIMIZE
        study_id = storage.create_new_study([direction], _STUDY_NAME)
        dists = distributions(self.search["space"])
        storage.load(study_id, [_frozen(item, dists) for item in history])
        sampler = TPESampler(
            seed=trial_seed(self.search["seed"], number),
            constant_liar=True,
            n_startup_trials=self.startup_trials,
        )
        study = Study(_STUDY_NAME, storage, sampler=sampler)
        asked = study.ask(dists)
        return {name: asked.params[name] for name in self.search["space"]}


def _frozen(observation: Observation, dists: dict[str, BaseDistribution]) -> FrozenTrial:
    state = observation.state
    if state == TrialState.COMPLETE and observation.value is None:
        state = TrialState.FAIL  # ended without a recorded epoch: nothing to compare
    return FrozenTrial(
        number=observation.number,
        trial_id=observation.number,
        state=state,
        value=observation.value if state == TrialState.COMPLETE else None,
        values=None,
        datetime_start=_STARTED,
        datetime_complete=None if state == TrialState.RUNNING else _STARTED,
        params=observation.params,
        distributions=dists,
        user_attrs={},
        system_attrs={},
        intermediate_values={},
    )


SAMPLER_CLASSES: tuple[type[Sampler], ...] = (Random, Tpe, Grid)
SAMPLERS: dict[str, type[Sampler]] = {cls.name: cls for cls in SAMPLER_CLASSES}
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)


def sampler_for(search: Mapping[str, Any]) -> Sampler:
    return SAMPLERS[search["sampler"]](search)
