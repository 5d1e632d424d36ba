"""Domain events: what the lifecycle announces, and the receivers that react to it inside the
same transaction.

The lifecycle emits `JobEnded` after every change to a final status and `EpochStored` after
each epoch an attempt trained is stored. Every receiver of the event's type runs in the emitting
transaction, in the order jobs.wiring installs them, so what a receiver writes commits with the
change or not at all. A receiver of `EpochStored` may answer with a `TrialDecision`, which the
lifecycle writes itself, fenced by the attempt's lease: receivers never change a job's state.
Reactions that can wait for the commit (notifications) read the job event log instead.

Nothing is emitted until jobs.wiring.connect() has installed the receivers: a process that
forgot would silently skip reactions, so `emit` refuses instead (NotWired).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


@dataclass(frozen=True)
class JobEnded:
    job_id: int
    status: JobStatus
    experiment_id: int | None
    cause: EndCause


@dataclass(frozen=True)
class EpochStored:
    """An epoch an attempt trained, stored for the first time (an epoch recorded again, or one
    restored from a checkpoint after a resume, emits nothing)."""

    job_id: int
    experiment_id: int | None
    epoch: int
    epochs_total: int
    values: Mapping[str, float]


@dataclass(frozen=True)
class TrialDecision:
    """What a search decided after a trial's epoch, for the lifecycle to write: the trial's
    search attributes when they changed (and the rung they reached), whether it stops, and an
    entry for the job's event log that explains the decision."""

    attrs: dict[str, Any] | None = None
    rung: int | None = None
    prune: bool = False
    event: tuple[str, dict[str, Any]] | None = None


JobEndedReceiver = Callable[[Session, JobEnded], None]
EpochStoredReceiver = Callable[[Session, EpochStored], TrialDecision | None]


@dataclass(frozen=True)
class Receivers:
    """The receivers of each event, in the order they run."""

    job_ended: tuple[JobEndedReceiver, ...] = field(default_factory=tuple)
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


def job_ended(session: Session, event: JobEnded) -> None:
    for receiver in installed().job_ended:
        receiver(session, event)


def epoch_stored(session: Session, event: EpochStored) -> list[TrialDecision]:
    """The decisions the receivers returned, in their order."""
    decisions = []
    for receiver in installed().epoch_stored:
        decision = receiver(session, event)
        if decision is not None:
            decisions.append(decision)
    return decisions
