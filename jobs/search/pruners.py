"""The pruners a search may name: one class each, holding all that pruner's knowledge (its
rungs, the first epoch it may decide at, how it chooses at a rung, whether its trials pause),
and a registry by name. The request model takes its choices from the registry: a new pruner is
one class and one line in PRUNER_CLASSES. Epochs count from 1.

Every pruner is noise-aware (jobs.search.noise): a trial is never stopped on a difference that
its evaluation cannot resolve; one within the margin of the cutoff, or tied with it, goes on.
The rules are pure functions of the values they are given, so the service and the benchmark's
replay of recorded curves (bench/search_efficiency.py) run the same code.
"""

from __future__ import annotations

import math
import statistics
from abc import ABC
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, ClassVar, NamedTuple

from jobs.search.noise import Measured, worse_beyond_noise


class Outcome(StrEnum):
    """What a decision did to a trial."""

    WENT_ON = "went_on"  # compared and kept training
    STOPPED = "stopped"  # stopped: the trial ends pruned
    PAUSED = "paused"  # reached its bracket's rung; waits, holding no worker, for the others
    PROMOTED = "promoted"  # chosen at its bracket's rung; resumes from its checkpoint


@dataclass(frozen=True)
class Objective:
    """What a search compares: a metric, its direction, and the images one evaluation of it
    counts (the standard error of an accuracy depends on them)."""

    metric: str
    maximize: bool
    images: int


@dataclass(frozen=True)
class Entry:
    """One trial's objective at an epoch."""

    job_id: int
    value: Measured


@dataclass(frozen=True)
class Decision:
    """A pruner's decision about one trial, kept on the trial (its `trial_state`) and shown on
    the job, the experiment and in the CLI: at which rung and epoch, the trial's value, the
    cutoff it was compared with, the noise margin, and how many trials the cutoff came from."""

    outcome: Outcome
    epoch: int
    rung: int | None
    value: float | None
    cutoff: float | None = None
    margin: float | None = None
    compared_with: int = 0
    bracket: int | None = None

    def record(self) -> dict[str, Any]:
        return {
            key: (str(value) if key == "outcome" else value) for key, value in asdict(self).items()
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Decision:
        return cls(
            outcome=Outcome(record["outcome"]),
            epoch=int(record["epoch"]),
            rung=record.get("rung"),
            value=record.get("value"),
            cutoff=record.get("cutoff"),
            margin=record.get("margin"),
            compared_with=int(record.get("compared_with") or 0),
            bracket=record.get("bracket"),
        )


def keep_count(arrived: int, reduction_factor: int) -> int:
    """How many of the trials at a rung the successive-halving rule keeps: the best
    1/reduction_factor, at least one."""
    return max(1, arrived // reduction_factor)


def cutoff_of(entries: Sequence[Entry], keep: int, *, maximize: bool) -> Entry:
    """The entry a trial must match to be among the best `keep` (ties count as matching)."""
    ranked = sorted(entries, key=lambda entry: entry.value.value, reverse=maximize)
    return ranked[min(keep, len(ranked)) - 1]


def judge(
    entry: Entry,
    cutoff: Entry,
    *,
    objective: Objective,
    epoch: int,
    rung: int | None,
    compared_with: int,
    bracket: int | None = None,
    kept: Outcome = Outcome.WENT_ON,
) -> Decision:
    """Stop the trial only when it is worse than the cutoff beyond the noise margin."""
    worse, allowed = worse_beyond_noise(
        entry.value,
        cutoff.value,
        maximize=objective.maximize,
        metric=objective.metric,
        images=objective.images,
    )
    return Decision(
        Outcome.STOPPED if worse else kept,
        epoch,
        rung,
        entry.value.value,
        cutoff.value.value,
        allowed,
        compared_with,
        bracket,
    )


class Pruner(ABC):
    """A pruner built from a search's stored `pruner` section."""

    name: ClassVar[str]
    # Whether a trial reaching a rung pauses (holding no worker) until its bracket is decided,
    # instead of being decided on arrival.
    pauses: ClassVar[bool] = False
    # Whether it ever stops a trial: a search without one makes no decision at all.
    prunes: ClassVar[bool] = True

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = spec

    @property
    def reduction_factor(self) -> int:
        return int(self.spec.get("reduction_factor", 3))

    @property
    def min_epochs(self) -> int:
        return int(self.spec.get("min_epochs", 1))

    def bracket_of(self, trial_number: int, epochs: int) -> int | None:
        """The bracket a trial belongs to (None: the pruner has none)."""
        return None

    def rungs(self, epochs: int, bracket: int | None = None) -> list[int]:
        """The epochs below the full budget at which trials are compared as a group (none for
        a pruner that compares at every epoch)."""
        return []

    def decides_at(self, epoch: int, epochs: int, bracket: int | None) -> bool:
        """Whether the epoch is one this pruner decides at (before reading any other trial)."""
        return epoch in self.rungs(epochs, bracket)

    def describe(self) -> dict[str, Any]:
        """The settings shown with the experiment."""
        return dict(self.spec)


def successive_halving_rungs(first: int, reduction_factor: int, epochs: int) -> list[int]:
    """first, first x reduction_factor, ... below `epochs`."""
    rungs = []
    step = first
    while step < epochs:
        rungs.append(step)
        step *= reduction_factor
    return rungs


class AshaPruner(Pruner):
    """Asynchronous successive halving, noise-aware: rungs at min_epochs x reduction_factor^k;
    a trial reaching a rung is compared with every trial that reached it so far and goes on if
    it is among the best 1/reduction_factor of them (at least the best one), or within the noise
    margin of the last of those; the first trial to reach a rung goes on."""

    name = "asha"

    def rungs(self, epochs: int, bracket: int | None = None) -> list[int]:
        return successive_halving_rungs(self.min_epochs, self.reduction_factor, epochs)

    def on_arrival(
        self,
        entry: Entry,
        epoch: int,
        at_rung: Sequence[Entry],
        *,
        epochs: int,
        objective: Objective,
    ) -> Decision:
        """`at_rung`: every trial's value at this rung's epoch, this trial's included."""
        rung = self.rungs(epochs).index(epoch)
        if len(at_rung) < 2:
            return Decision(
                Outcome.WENT_ON, epoch, rung, entry.value.value, None, None, len(at_rung)
            )
        cutoff = cutoff_of(
            at_rung, keep_count(len(at_rung), self.reduction_factor), maximize=objective.maximize
        )
        return judge(
            entry, cutoff, objective=objective, epoch=epoch, rung=rung, compared_with=len(at_rung)
        )


class MedianPruner(Pruner):
    """Stop a trial whose best value so far is worse, beyond the noise margin, than the median
    of the values that ended trials had at the same epoch; only after `startup_trials` trials
    ended and `min_epochs` epochs of warm-up."""

    name = "median"

    def decides_at(self, epoch: int, epochs: int, bracket: int | None) -> bool:
        return self.min_epochs <= epoch < epochs

    def on_epoch(
        self,
        best_so_far: Entry,
        epoch: int,
        ended_at_epoch: Sequence[Entry],
        *,
        objective: Objective,
    ) -> Decision | None:
        """`ended_at_epoch`: the values ended trials had at this epoch."""
        if len(ended_at_epoch) < int(self.spec.get("startup_trials", 2)) or not ended_at_epoch:
            return None
        median_value = statistics.median(entry.value.value for entry in ended_at_epoch)
        nearest = min(ended_at_epoch, key=lambda entry: abs(entry.value.value - median_value))
        median = Entry(nearest.job_id, Measured(median_value, nearest.value.standard_error))
        return judge(
            best_so_far, median, objective=objective, epoch=epoch, rung=None,
            compared_with=len(ended_at_epoch),
        )  # fmt: skip


class Member(NamedTuple):
    """A trial of a bracket as far as its rung's readiness goes."""

    job_id: int
    status: str  # a job status: queued, running, paused, or one that has ended
    epochs_done: int


@dataclass(frozen=True)
class Bracket:
    """A Hyperband bracket: its number in the layout, its size (trials) and its first rung."""

    index: int  # s: the bracket's first rung is epochs / reduction_factor^s
    size: int


class HyperbandPruner(Pruner):
    """Hyperband (Li et al.): trials are dealt into brackets that start pruning at different
    first rungs (epochs / reduction_factor^s for s = s_max .. 0: the last bracket trains every
    trial to the end), so a bracket that starts late hedges against curves that separate late.
    Within a bracket, successive halving: a trial reaching its rung pauses, holding no worker
    and keeping its checkpoint; once every trial of the bracket has reached the rung (or ended
    before it), the best 1/reduction_factor, and any within the noise margin of the last of
    them, are promoted and resume from their checkpoints; the others stop. A trial reaching a
    rung its bracket has already decided (a search extended later) is judged against that
    rung's cutoff on arrival."""

    name = "hyperband"
    pauses = True

    def s_max(self, epochs: int) -> int:
        ratio = epochs / max(self.min_epochs, 1)
        if ratio <= 1:
            return 0
        return math.floor(math.log(ratio, self.reduction_factor) + 1e-9)

    def layout(self, epochs: int) -> list[Bracket]:
        """One Hyperband iteration's brackets, most aggressive first, with their sizes."""
        top = self.s_max(epochs)
        return [
            Bracket(s, math.ceil((top + 1) / (s + 1) * self.reduction_factor**s))
            for s in range(top, -1, -1)
        ]

    def _position(self, trial_number: int, epochs: int) -> tuple[int, int, int]:
        """(bracket id, the bracket's s, the trial number its bracket starts at). Trials are
        dealt in order: the first bracket's size of them, then the next's, iteration after
        iteration; a bracket id counts brackets from 0 across iterations."""
        layout = self.layout(epochs)
        per_iteration = sum(bracket.size for bracket in layout)
        iteration, offset = divmod(trial_number, per_iteration)
        start = iteration * per_iteration
        for position, bracket in enumerate(layout):
            if offset < bracket.size:
                return iteration * len(layout) + position, bracket.index, start
            offset -= bracket.size
            start += bracket.size
        raise AssertionError("unreachable")

    def bracket_of(self, trial_number: int, epochs: int) -> int:
        return self._position(trial_number, epochs)[0]

    def bracket_members(self, bracket: int, epochs: int, max_trials: int) -> range:
        """The trial numbers of a bracket, as far as `max_trials` reaches."""
        layout = self.layout(epochs)
        per_iteration = sum(item.size for item in layout)
        iteration, position = divmod(bracket, len(layout))
        start = iteration * per_iteration + sum(item.size for item in layout[:position])
        return range(start, min(start + layout[position].size, max_trials))

    def first_rung(self, epochs: int, bracket: int) -> int:
        layout = self.layout(epochs)
        s = layout[bracket % len(layout)].index
        return max(self.min_epochs, round(epochs / float(self.reduction_factor) ** s))

    def rungs(self, epochs: int, bracket: int | None = None) -> list[int]:
        if bracket is None:
            return []
        return successive_halving_rungs(
            self.first_rung(epochs, bracket), self.reduction_factor, epochs
        )

    @staticmethod
    def waiting_at(members: Sequence[Member], epoch: int) -> list[int] | None:
        """The trials waiting at a rung of `epoch` once every member of the bracket has reached
        it or ended before it; None while some are still on their way (or none waits)."""
        waiting = [m.job_id for m in members if m.status == "paused" and m.epochs_done == epoch]
        on_the_way = any(
            (m.status in ("queued", "running") and m.epochs_done <= epoch)
            or (m.status == "paused" and m.epochs_done < epoch)
            for m in members
        )
        return None if on_the_way or not waiting else waiting

    def choose(
        self,
        waiting: Sequence[Entry],
        epoch: int,
        *,
        epochs: int,
        bracket: int,
        objective: Objective,
    ) -> list[tuple[int, Decision]]:
        """The decision for each trial waiting at a rung once its bracket has all arrived:
        promoted (the best 1/reduction_factor and those within the noise margin) or stopped."""
        if not waiting:
            return []
        rung = self.rungs(epochs, bracket).index(epoch)
        cutoff = cutoff_of(
            waiting, keep_count(len(waiting), self.reduction_factor), maximize=objective.maximize
        )
        return [
            (
                entry.job_id,
                judge(
                    entry, cutoff, objective=objective, epoch=epoch, rung=rung,
                    compared_with=len(waiting), bracket=bracket, kept=Outcome.PROMOTED,
                ),
            )
            for entry in waiting
        ]  # fmt: skip

    def against_decided(
        self, entry: Entry, epoch: int, cutoff: Measured, compared_with: int, *,
        epochs: int, bracket: int, objective: Objective,
    ) -> Decision:  # fmt: skip
        """A late arrival at a rung already decided: judged against that rung's cutoff."""
        rung = self.rungs(epochs, bracket).index(epoch)
        return judge(
            entry, Entry(0, cutoff), objective=objective, epoch=epoch, rung=rung,
            compared_with=compared_with, bracket=bracket,
        )  # fmt: skip


class NoPruner(Pruner):
    """Every trial trains all its epochs."""

    name = "none"
    prunes = False


PRUNER_CLASSES: tuple[type[Pruner], ...] = (HyperbandPruner, AshaPruner, MedianPruner, NoPruner)
PRUNERS: dict[str, type[Pruner]] = {cls.name: cls for cls in PRUNER_CLASSES}
PRUNER_NAMES: tuple[str, ...] = tuple(PRUNERS)


def pruner_for(spec: Mapping[str, Any]) -> Pruner:
    """The pruner a search's stored `pruner` section names."""
    return PRUNERS[spec["type"]](spec)
