"""The data of each event the event streams send (JSON text in the event's `data` field)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.jobs import ENDED_DESCRIPTION
from jobs.tables import FailureReason, JobStatus


# The data of each event the event streams send (JSON text in the event's `data` field). Every
# field is always present; a float that is not finite (a diverged run's loss) is null.
class StatusEventData(BaseModel):
    """`status`: the job's status fields just after a change (queued, started, a retry, a
    cancel request, the end)."""

    model_config = ConfigDict(extra="forbid")

    job_id: int
    status: JobStatus
    ended: bool = Field(description=ENDED_DESCRIPTION)
    epochs_done: int
    epochs_total: int
    attempt: int
    cancel_requested: bool
    error_reason: FailureReason | None
    error: str | None
    best_test_accuracy: float | None
    final_test_accuracy: float | None
    final_train_loss: float | None
    by: str | None = Field(
        None,
        description="Who asked for this change (`admin`: the API key), in a cancel's event "
        "with accounts; absent otherwise.",
    )


class EpochEventData(BaseModel):
    """`epoch`: one epoch's metrics as stored, the row /jobs/{id}/metrics shows."""

    model_config = ConfigDict(extra="forbid")

    job_id: int
    epoch: int
    train_loss: float | None
    train_accuracy: float | None = Field(description="Fraction in [0, 1].")
    test_loss: float | None
    test_accuracy: float | None = Field(description="Fraction in [0, 1].")
    learning_rate: float | None
    seconds: float | None
    images_per_second: float | None


class TrialCreatedEventData(BaseModel):
    """`trial_created`: the job is a new trial of a search (after its first `status`)."""

    model_config = ConfigDict(extra="forbid")

    job_id: int
    trial: int
    params: dict[str, Any] = Field(description="The sampled value of each searched field.")
    bracket: int | None = Field(None, description="hyperband: the trial's bracket.")


class TrialDecisionEventData(BaseModel):
    """A pruner's decision about a trial, as it is kept on the trial (`trial.decisions`)."""

    model_config = ConfigDict(extra="forbid")

    job_id: int
    trial: int
    outcome: Literal["went_on", "stopped", "paused", "promoted"]
    epoch: int = Field(description="The epoch decided at.")
    rung: int | None = Field(description="The rung (0, 1, ...); null for median.")
    value: float | None = Field(description="The trial's objective at that epoch.")
    cutoff: float | None = Field(
        description="The value it was compared with (null when nothing was compared yet)."
    )
    margin: float | None = Field(
        description="The noise margin: it stops only when worse than the cutoff by more."
    )
    compared_with: int = Field(description="Trials the cutoff came from.")
    bracket: int | None = Field(description="hyperband: the trial's bracket.")


class TrialPrunedEventData(TrialDecisionEventData):
    """`trial_pruned`: the pruner stopped the trial (after this epoch, or at its bracket's rung
    while it waited); it ends `pruned` (its `status` event follows)."""


class TrialPausedEventData(TrialDecisionEventData):
    """`trial_paused`: the trial reached its bracket's rung and waits there, holding no worker,
    until every trial of the bracket has reached it (its `status` event, `paused`, follows)."""


class TrialResumedEventData(TrialDecisionEventData):
    """`trial_resumed`: the trial was promoted at its bracket's rung; it goes back to the queue
    and resumes from its checkpoint (its `status` event, `queued`, follows)."""


class BestChangedEventData(BaseModel):
    """`best_changed`: the trial that just succeeded is the search's best so far."""

    model_config = ConfigDict(extra="forbid")

    job_id: int
    trial: int
    params: dict[str, Any]
    value: float | None
    previous_job_id: int | None
    previous_value: float | None


class JobEndEventData(BaseModel):
    """`end` of a job's stream: the job has ended; the server closes the stream."""

    model_config = ConfigDict(extra="forbid")

    job_id: int
    status: JobStatus = Field(description="The job's final status.")


class ExperimentEndEventData(BaseModel):
    """`end` of an experiment's stream: every job has ended; the server closes the stream."""

    model_config = ConfigDict(extra="forbid")

    experiment_id: int
    status: JobStatus = Field(
        description="succeeded if every job succeeded or was pruned, else failed if any failed, "
        "else cancelled."
    )


EVENT_DATA_MODELS: tuple[type[BaseModel], ...] = (
    StatusEventData,
    EpochEventData,
    TrialCreatedEventData,
    TrialPausedEventData,
    TrialResumedEventData,
    TrialPrunedEventData,
    BestChangedEventData,
    JobEndEventData,
    ExperimentEndEventData,
)
