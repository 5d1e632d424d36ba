"""Who reacts to each domain event (jobs.signals), in order: the one place they are listed.

JobEnded:
  1. the search (jobs.search.study.on_job_ended): a trial's end notes a new best and makes the
     search's next trials, in the transaction that ended it.
EpochStored:
  1. the search (jobs.search.study.on_epoch_stored): the trial's pruner decides whether it goes
     on; the lifecycle writes the decision.

Notifications are not here: they read the job event log after the commit
(jobs.notifications.outbox). The API, the worker and every script that changes jobs call
`connect()` once at start-up; tests/test_core.py pins this order.
"""

from __future__ import annotations

from jobs import signals
from jobs.search import study

RECEIVERS = signals.Receivers(
    job_ended=(study.on_job_ended,),
    epoch_stored=(study.on_epoch_stored,),
)


def connect() -> None:
    """Install the receivers (idempotent)."""
    signals.install(RECEIVERS)
