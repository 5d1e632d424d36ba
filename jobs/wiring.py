"""Who reacts to each domain event (jobs.signals), in order: the one place they are listed.

JobEnded:
  1. the search (jobs.search.study.on_job_ended): a trial's end notes a new best, makes the
     search's next trials and, when it was the last of its bracket still to reach a rung,
     decides the trials waiting there; in the transaction that ended it.
JobPaused:
  1. the search (jobs.search.study.on_job_paused): the last trial of a bracket to reach a rung
     decides the bracket there (the lifecycle resumes or stops the waiting trials).
EpochStored:
  1. the search (jobs.search.study.on_epoch_stored): the trial's pruner decides whether it goes
     on, stops or pauses; the lifecycle writes the decision.

Notifications are not here: they read the job event log after the commit
(jobs.notifications.outbox). The API, the worker and every script that changes jobs call
`connect()` once at start-up; tests/test_core.py pins this order.
"""

from __future__ import annotations

from jobs import signals
from jobs.search import study

RECEIVERS = signals.Receivers(
    job_ended=(study.on_job_ended,),
    job_paused=(study.on_job_paused,),
    epoch_stored=(study.on_epoch_stored,),
)


def connect() -> None:
    """Install the receivers (idempotent)."""
    signals.install(RECEIVERS)
