"""Domain events: what the lifecycle announces, and the receivers that react to it inside the
same transaction.

The lifecycle emits `JobEnded` after every change to a final status, `JobPaused` when a search
trial starts waiting at a rung, and `EpochStored` after each epoch an attempt trained is stored.
Every receiver of the event's type runs in the emitting transaction, in the order jobs.wiring
installs them, so what a receiver writes commits with the change or not at all. Receivers never
change a job's state: a receiver of `EpochStored` may answer with a `TrialDecision` about that
trial, which the lifecycle writes fenced by the attempt's lease, and a receiver of `JobEnded` or
`JobPaused` with moves of paused trials (`ResumeTrial`, `StopTrial`), which the lifecycle makes
as compare-and-set transitions. Reactions that can wait for the commit (notifications) read the
job event log instead.

Nothing is emitted until jobs.wiring.connect() has installed the receivers: a process that
forgot would silently skip reactions, so `emit` refuses instead (NotWired).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session

from jobs.tables import JobStatus


class EndCause(StrEnum):
    """What ended a job."""

    ATTEMPT = "attempt"  # its attempt: trained to the end, failed, or stopped as asked
    CANCEL = "cancel"  # a user cancelled the job while it was queued
    EXPERIMENT_CANCEL = "experiment_cancel"  # its experiment was cancelled
    LEASE_EXPIRED = "lease_expired"  # its worker went silent and its attempts ran out, or it
    # had been asked to stop
    PRUNER = "pruner"  # a trial waiting at a rung that its pruner did not promote


@dataclass(frozen=True)
class JobEnded:
    job_id: int
    status: JobStatus
    experiment_id: int | None
    cause: EndCause


@dataclass(frozen=True)
class JobPaused:
    """A search trial stopped at a rung to wait for the other trials of its bracket."""

    job_id: int
    experiment_id: int | None
    epoch: int


@dataclass(frozen=True)
class EpochStored:
    """An epoch an attempt trained, stored for the first time (an epoch recorded again, or one
    restored from a checkpoint after a resume, emits nothing)."""

    job_id: int
    experiment_id: int | None
    epoch: int
    epochs_total: int
    values: Mapping[str, float]
    evaluation: Mapping[str, Any] | None = None  # images counted, standard errors


# An entry for a job's event log that explains a decision: (kind, data).
LogEntry = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class TrialDecision:
    """What a search decided after a trial's epoch, for the lifecycle to write: the trial's
    search state (its decisions so far) and the rung it reached, whether it stops or pauses
    there, and an entry for the job's event log that explains the decision."""

    state: dict[str, Any] | None = None
    rung: int | None = None
    prune: bool = False
    pause: bool = False
    event: LogEntry | None = None


@dataclass(frozen=True)
class ResumeTrial:
    """A paused trial its pruner promoted: back to the queue, to resume from its checkpoint."""

    job_id: int
    state: dict[str, Any]
    rung: int | None = None
    event: LogEntry | None = None


@dataclass(frozen=True)
class StopTrial:
    """A paused trial its pruner did not promote: it ends `pruned`."""

    job_id: int
    state: dict[str, Any]
    rung: int | None = None
    event: LogEntry | None = None


TrialMove = ResumeTrial | StopTrial
JobEndedReceiver = Callable[[Session, JobEnded], Sequence[TrialMove]]
JobPausedReceiver = Callable[[Session, JobPaused], Sequence[TrialMove]]
EpochStoredReceiver = Callable[[Session, EpochStored], TrialDecision | None]


@dataclass(frozen=True)
class Receivers:
    """The receivers of each event, in the order they run."""

    job_ended: tuple[JobEndedReceiver, ...] = field(default_factory=tuple)
    job_paused: tuple[JobPausedReceiver, ...] = field(default_factory=tuple)
    epoch_stored: tuple[EpochStoredReceiver, ...] = field(default_factory=tuple)


class NotWired(RuntimeError):
    """An event was emitted before jobs.wiring.connect() installed the receivers."""


_installed: Receivers | None = None


def install(receivers: Receivers) -> None:
    """Make these the receivers of every event emitted from now on (jobs.wiring)."""
    global _installed
    _installed = receivers


def installed() -> Receivers:
    if _installed is None:
        raise NotWired(
            "a domain event was emitted before jobs.wiring.connect() installed its receivers; "
            "every process that changes jobs calls it at start-up"
        )
    return _installed


def job_ended(session: Session, event: JobEnded) -> list[TrialMove]:
    """The moves of paused trials the receivers asked for, in their order."""
    return [move for receiver in installed().job_ended for move in receiver(session, event)]


def job_paused(session: Session, event: JobPaused) -> list[TrialMove]:
    return [move for receiver in installed().job_paused for move in receiver(session, event)]


def epoch_stored(session: Session, event: EpochStored) -> list[TrialDecision]:
    """The decisions the receivers returned, in their order."""
    decisions = []
    for receiver in installed().epoch_stored:
        decision = receiver(session, event)
        if decision is not None:
            decisions.append(decision)
    return decisions
