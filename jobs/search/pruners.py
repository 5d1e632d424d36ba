"""The pruners a search may name: one class each, holding all that pruner's knowledge (its
Optuna pruner, the first epoch at which it may stop a trial, whether it compares the other
trials' values at the epoch decided, its rungs), and a registry by name. The request model takes
its choices from the registry: a new pruner is one class and one line in PRUNER_CLASSES.
Epochs are Optuna's steps (1, 2, ...)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from optuna.pruners import BasePruner, NopPruner, SuccessiveHalvingPruner
from optuna.pruners import MedianPruner as OptunaMedianPruner

# Optuna's SuccessiveHalvingPruner marks each rung a trial passed with a system attribute
# `completed_rung_<k>` holding the trial's value there.
RUNG_KEY = "completed_rung_"


def rungs_passed(attrs: Mapping[str, Any]) -> list[int]:
    """The rungs (0, 1, ...) a trial's attributes say it passed."""
    return sorted(int(key[len(RUNG_KEY) :]) for key in attrs if key.startswith(RUNG_KEY))


def highest_rung(attrs: Mapping[str, Any]) -> int | None:
    passed = rungs_passed(attrs)
    return passed[-1] if passed else None


class Pruner(ABC):
    """A pruner built from a search's `pruner` section."""

    name: ClassVar[str]
    # Whether a decision at epoch e compares the other trials' values at e (not only their
    # last values): the study is then rebuilt with those values too.
    reads_values_at_epoch: ClassVar[bool] = False
    # Whether it ever stops a trial: a search without one makes no decision at all.
    prunes: ClassVar[bool] = True

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = spec

    @abstractmethod
    def optuna(self) -> BasePruner:
        """The Optuna pruner that decides."""

    def first_decided_epoch(self, attrs: Mapping[str, Any]) -> int:
        """The first epoch at which this trial (with these attributes) may be stopped: before
        it, the answer is "go on" without reading any other trial."""
        return int(self.spec["min_epochs"])

    def rungs(self, epochs: int) -> list[int]:
        """The epochs below the full budget at which trials are compared as a group (none for a
        pruner that compares at every epoch)."""
        return []

    def cutoff(self, values: Iterable[float], *, maximize: bool) -> float | None:
        """The value a trial reaching a rung must match to go on, given the values there."""
        return None


class AshaPruner(Pruner):
    """Asynchronous successive halving (Optuna's SuccessiveHalvingPruner): rungs at
    min_epochs x reduction_factor^k epochs, each keeping the best 1/reduction_factor of the
    trials that reached it; the first trial to reach a rung goes on (nothing waits)."""

    name = "asha"

    def optuna(self) -> BasePruner:
        return SuccessiveHalvingPruner(
            min_resource=self.spec["min_epochs"],
            reduction_factor=self.spec["reduction_factor"],
            min_early_stopping_rate=0,
            bootstrap_count=0,
        )

    def first_decided_epoch(self, attrs: Mapping[str, Any]) -> int:
        # The trial's next rung: min_epochs x reduction_factor^(rungs passed).
        passed = len(rungs_passed(attrs))
        return int(self.spec["min_epochs"] * self.spec["reduction_factor"] ** passed)

    def rungs(self, epochs: int) -> list[int]:
        rungs = []
        step = self.spec["min_epochs"]
        while step < epochs:
            rungs.append(step)
            step *= self.spec["reduction_factor"]
        return rungs

    def cutoff(self, values: Iterable[float], *, maximize: bool) -> float | None:
        ranked = sorted(values, reverse=maximize)
        if not ranked:
            return None
        keep = int(self.spec["reduction_factor"])
        return ranked[max(len(ranked) // keep - 1, 0)]


class MedianPruner(Pruner):
    """Stop a trial whose best value so far is worse than the median of the earlier trials'
    values at the same epoch (Optuna's MedianPruner), after startup_trials trials ended and
    min_epochs epochs of warm-up."""

    name = "median"
    reads_values_at_epoch = True

    def optuna(self) -> BasePruner:
        return OptunaMedianPruner(
            n_startup_trials=self.spec["startup_trials"],
            n_warmup_steps=self.spec["min_epochs"],
            interval_steps=1,
        )


class NoPruner(Pruner):
    """Every trial trains all its epochs."""

    name = "none"
    prunes = False

    def optuna(self) -> BasePruner:
        return NopPruner()


PRUNER_CLASSES: tuple[type[Pruner], ...] = (AshaPruner, MedianPruner, NoPruner)
PRUNERS: dict[str, type[Pruner]] = {cls.name: cls for cls in PRUNER_CLASSES}
PRUNER_NAMES: tuple[str, ...] = tuple(PRUNERS)


def pruner_for(spec: Mapping[str, Any]) -> Pruner:
    """The pruner a search's stored `pruner` section names."""
    return PRUNERS[spec["type"]](spec)
