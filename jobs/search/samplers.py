"""The samplers a search may name: one class each, building the Optuna sampler for one trial,
and a registry by name (the request model takes its choices from it).

The study is rebuilt from the job rows for every trial asked (jobs.search.study), so a sampler
lives for one ask only. Seeded with the search's seed alone, each rebuilt sampler would start its
random stream at the same point and propose the same first values again; so each trial's sampler
is seeded from (search seed, trial number): the same seed gives the same trials, and trials of
one search draw different values. The grid sampler is the exception: its seed shuffles the grid
once and trial n takes point n, so it takes the search's seed unchanged."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from optuna.samplers import BaseSampler, GridSampler, RandomSampler, TPESampler

# name -> {distribution: values}, as a stored search's `space`.
Space = Mapping[str, Mapping[str, list[Any]]]


def trial_seed(search_seed: int, trial_number: int) -> int:
    """A seed for one trial's sampler, a function of the search's seed and the trial number."""
    return int(np.random.SeedSequence([search_seed, trial_number]).generate_state(1)[0])


def grid_values(space: Space) -> dict[str, list[Any]]:
    """The grid of a space whose every dimension is a choice."""
    return {name: list(dimension["choice"]) for name, dimension in space.items()}


class Sampler(ABC):
    """A sampler built from a stored search section."""

    name: ClassVar[str]

    def __init__(self, search: Mapping[str, Any]) -> None:
        self.search = search

    @abstractmethod
    def optuna(self, trial_number: int) -> BaseSampler:
        """The Optuna sampler that proposes trial `trial_number`."""


class Random(Sampler):
    name = "random"

    def optuna(self, trial_number: int) -> BaseSampler:
        return RandomSampler(seed=trial_seed(self.search["seed"], trial_number))


class Tpe(Sampler):
    """Tree-structured Parzen estimator; constant_liar: trials still running count as bad
    results, so concurrent trials spread out instead of all proposing the same point."""

    name = "tpe"

    def optuna(self, trial_number: int) -> BaseSampler:
        return TPESampler(seed=trial_seed(self.search["seed"], trial_number), constant_liar=True)


class Grid(Sampler):
    """Every point of a space of choices, in an order shuffled by the search's seed."""

    name = "grid"

    def optuna(self, trial_number: int) -> BaseSampler:
        return GridSampler(grid_values(self.search["space"]), seed=self.search["seed"])


SAMPLER_CLASSES: tuple[type[Sampler], ...] = (Random, Tpe, Grid)
SAMPLERS: dict[str, type[Sampler]] = {cls.name: cls for cls in SAMPLER_CLASSES}
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)


def sampler_for(search: Mapping[str, Any]) -> Sampler:
    return SAMPLERS[search["sampler"]](search)
