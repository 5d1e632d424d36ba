"""Replaying learning curves through the search's decision code, without training.

A search of `len(curves)` trials runs on `workers` workers: trials are made in `order`, at most
`workers` queued or running at once (a paused trial holds none, as in the service), one epoch
takes one step for every running trial, and after each epoch the pruner decides with the
service's own classes (jobs.search.pruners: the same rungs, brackets, noise margins and rung
readiness). What comes out is what a researcher would get: the best final value among the
trials that trained to the end, and the epochs spent.

The curves are of the objective after epoch 1, 2, ... of each configuration (measured values:
noise and all); the objective is maximised.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

from jobs.search.noise import Measured, measured
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
)

Curve = Sequence[float]


@dataclass
class Replayed:
    best: float | None  # the best final value among the trials that trained every epoch
    epochs: int  # epochs trained, all trials together
    stopped: int  # trials stopped early
    decisions: list[tuple[int, Decision]] = field(default_factory=list)


@dataclass
class _Trial:
    number: int
    curve: Curve
    bracket: int | None
    done: int = 0
    state: str = "new"  # new, queued, running, paused, succeeded, pruned
    values: dict[int, Measured] = field(default_factory=dict)


class _Search:
    def __init__(
        self, pruner: Pruner, curves: Sequence[Curve], order: Sequence[int], objective: Objective
    ) -> None:
        self.pruner = pruner
        self.objective = objective
        self.epochs = len(curves[0])
        self.trials = [
            _Trial(number, curves[config], pruner.bracket_of(number, self.epochs))
            for number, config in enumerate(order)
        ]
        self.decisions: list[tuple[int, Decision]] = []
        self.decided: dict[tuple[int, int], Decision] = {}  # (bracket, rung) -> a decision
        self.queue: list[int] = []  # lowest number first: the dispatch order within a search
        self.made = 0

    def fill(self, workers: int) -> None:
        active = sum(trial.state in ("queued", "running") for trial in self.trials)
        while self.made < len(self.trials) and active < workers:
            self.trials[self.made].state = "queued"
            heapq.heappush(self.queue, self.made)
            self.made += 1
            active += 1

    def after_epoch(self, trial: _Trial) -> None:
        epoch = trial.done
        trial.values[epoch] = measured(
            self.objective.metric,
            trial.curve[epoch - 1],
            images=self.objective.images,
            loss_standard_error=None,
        )
        decision = self._decide(trial, epoch) if epoch < self.epochs else None
        if decision is not None:
            self.decisions.append((trial.number, decision))
            if decision.rung is not None and trial.bracket is not None and decision.cutoff:
                self.decided.setdefault((trial.bracket, decision.rung), decision)
            if decision.outcome == Outcome.STOPPED:
                trial.state = "pruned"
            elif decision.outcome == Outcome.PAUSED:
                trial.state = "paused"
        if trial.state == "running" and epoch >= self.epochs:
            trial.state = "succeeded"

    def _decide(self, trial: _Trial, epoch: int) -> Decision | None:
        pruner = self.pruner
        if not pruner.prunes or not pruner.decides_at(epoch, self.epochs, trial.bracket):
            return None
        entry = Entry(trial.number, trial.values[epoch])
        objective = self.objective
        if isinstance(pruner, AshaPruner):
            at_rung = [Entry(t.number, t.values[epoch]) for t in self.trials if epoch in t.values]
            return pruner.on_arrival(entry, epoch, at_rung, epochs=self.epochs, objective=objective)
        if isinstance(pruner, MedianPruner):
            ended = [
                Entry(t.number, t.values[epoch])
                for t in self.trials
                if t.state == "succeeded" and epoch in t.values
            ]
            best = max(trial.values.values(), key=lambda value: value.value)
            return pruner.on_epoch(Entry(trial.number, best), epoch, ended, objective=objective)
        if isinstance(pruner, HyperbandPruner):
            assert trial.bracket is not None
            rung = pruner.rungs(self.epochs, trial.bracket).index(epoch)
            decided = self.decided.get((trial.bracket, rung))
            if decided is not None and decided.cutoff is not None:
                cutoff = measured(
                    objective.metric, decided.cutoff, images=objective.images,
                    loss_standard_error=None,
                )  # fmt: skip
                return pruner.against_decided(
                    entry, epoch, cutoff, decided.compared_with,
                    epochs=self.epochs, bracket=trial.bracket, objective=objective,
                )  # fmt: skip
            return Decision(Outcome.PAUSED, epoch, rung, entry.value.value, bracket=trial.bracket)
        return None

    def decide_brackets(self) -> None:
        pruner = self.pruner
        if not isinstance(pruner, HyperbandPruner):
            return
        for bracket in sorted({t.bracket for t in self.trials if t.bracket is not None}):
            numbers = pruner.bracket_members(bracket, self.epochs, len(self.trials))
            members = [self.trials[n] for n in numbers]
            if any(m.state == "new" for m in members):
                continue
            for rung, epoch in enumerate(pruner.rungs(self.epochs, bracket)):
                if (bracket, rung) in self.decided:
                    continue
                waiting = pruner.waiting_at(
                    [Member(m.number, m.state, m.done) for m in members], epoch
                )
                if waiting is None:
                    break
                chosen = pruner.choose(
                    [Entry(n, self.trials[n].values[epoch]) for n in waiting],
                    epoch, epochs=self.epochs, bracket=bracket, objective=self.objective,
                )  # fmt: skip
                for number, decision in chosen:
                    self.decisions.append((number, decision))
                    self.decided[(bracket, rung)] = decision
                    if decision.outcome == Outcome.PROMOTED:
                        self.trials[number].state = "queued"
                        heapq.heappush(self.queue, number)
                    else:
                        self.trials[number].state = "pruned"
                break


def replay(
    pruner: Pruner,
    curves: Sequence[Curve],
    order: Sequence[int],
    *,
    objective: Objective,
    workers: int = 2,
) -> Replayed:
    search = _Search(pruner, curves, order, objective)
    search.fill(workers)
    running: list[_Trial] = []
    spent = 0
    while search.queue or running:
        while search.queue and len(running) < workers:
            trial = search.trials[heapq.heappop(search.queue)]
            trial.state = "running"
            running.append(trial)
        for trial in sorted(running, key=lambda t: t.number):
            trial.done += 1
            spent += 1
            search.after_epoch(trial)
        running = [trial for trial in running if trial.state == "running"]
        search.decide_brackets()
        search.fill(workers)
    finals = [t.curve[-1] for t in search.trials if t.state == "succeeded"]
    return Replayed(
        max(finals) if finals else None,
        spent,
        sum(t.state == "pruned" for t in search.trials),
        search.decisions,
    )
