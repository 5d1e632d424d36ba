"""The samplers a search may name, each an Optuna sampler.

The study is rebuilt from the job rows for every trial asked (jobs.search.study), so a sampler
lives for one ask only. Seeded with the search's seed alone, each rebuilt sampler would start its
random stream at the same point and propose the same first values again; so each trial's sampler
is seeded from (search seed, trial number): the same seed gives the same trials, and trials of
one search draw different values. The grid sampler is the exception: its seed shuffles the grid
once and trial n takes point n, so it takes the search's seed unchanged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from optuna.samplers import BaseSampler, GridSampler, RandomSampler, TPESampler

from jobs.search.space import grid_values

Space = dict[str, dict[str, list[Any]]]
SamplerFactory = Callable[[int, int, Space], BaseSampler]


def _random(search_seed: int, number: int, space: Space) -> BaseSampler:
    return RandomSampler(seed=trial_seed(search_seed, number))


def _tpe(search_seed: int, number: int, space: Space) -> BaseSampler:
    # constant_liar: trials still running count as bad results, so concurrent trials spread
    # out instead of all proposing the same promising point.
    return TPESampler(seed=trial_seed(search_seed, number), constant_liar=True)


def _grid(search_seed: int, number: int, space: Space) -> BaseSampler:
    return GridSampler(grid_values(space), seed=search_seed)


SAMPLERS: dict[str, SamplerFactory] = {"random": _random, "tpe": _tpe, "grid": _grid}


def trial_seed(search_seed: int, trial_number: int) -> int:
    """A seed for one trial's sampler, a function of the search's seed and the trial number."""
    return int(np.random.SeedSequence([search_seed, trial_number]).generate_state(1)[0])


def make_sampler(name: str, search_seed: int, trial_number: int, space: Space) -> BaseSampler:
    return SAMPLERS[name](search_seed, trial_number, space)
