"""The pruners a search may name, each an Optuna pruner, built from the search's `pruner`
section. Epochs are Optuna's steps (1, 2, ...)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from optuna.pruners import BasePruner, MedianPruner, NopPruner, SuccessiveHalvingPruner

PrunerFactory = Callable[[dict[str, Any]], BasePruner]


def _asha(spec: dict[str, Any]) -> BasePruner:
    # Rungs at min_epochs x reduction_factor^k; bootstrap_count 0: the first trial to reach a
    # rung goes on (asynchronous: no trial waits for others to catch up).
    return SuccessiveHalvingPruner(
        min_resource=spec["min_epochs"],
        reduction_factor=spec["reduction_factor"],
        min_early_stopping_rate=0,
        bootstrap_count=0,
    )


def _median(spec: dict[str, Any]) -> BasePruner:
    return MedianPruner(
        n_startup_trials=spec["startup_trials"],
        n_warmup_steps=spec["min_epochs"],
        interval_steps=1,
    )


def _none(spec: dict[str, Any]) -> BasePruner:
    return NopPruner()


PRUNERS: dict[str, PrunerFactory] = {"asha": _asha, "median": _median, "none": _none}


def make_pruner(spec: dict[str, Any]) -> BasePruner:
    return PRUNERS[spec["type"]](spec)


def rung_epochs(spec: dict[str, Any], epochs: int) -> list[int]:
    """asha: the epochs at which a trial is compared with the others (below its full budget)."""
    if spec["type"] != "asha":
        return []
    rungs = []
    step = spec["min_epochs"]
    while step < epochs:
        rungs.append(step)
        step *= spec["reduction_factor"]
    return rungs
