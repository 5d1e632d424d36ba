"""Counts that only grow (epochs recorded, leases reaped, messages re-sent), kept in the
`service_counters` table and added to in the transaction of what they count: exact whichever
process did it, and kept across restarts. /metrics reads them (jobs.telemetry)."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from jobs.db import insert_ignoring_duplicates
from jobs.tables import ServiceCounter

EPOCHS_RECORDED = "epochs_recorded"
MESSAGES_RESENT = "reconciler_messages_resent"
# What the reaper did with a running job whose worker went silent: back to the queue, failed
# (attempts spent), cancelled (a cancel was asked meanwhile), pruned or paused (its pruner had
# stopped or paused it before the worker could).
LEASES_REAPED = "reconciler_leases_reaped"
REAP_OUTCOMES = ("requeued", "failed", "cancelled", "pruned", "paused")


def leases_reaped_counter(outcome: str) -> str:
    return f"{LEASES_REAPED}:{outcome}"


def _bump(session: Session, name: str, amount: int) -> bool:
    result = session.execute(
        update(ServiceCounter)
        .where(ServiceCounter.name == name)
        .values(value=ServiceCounter.value + amount)
        .execution_options(synchronize_session=False)
    )
    assert isinstance(result, CursorResult)
    return result.rowcount == 1


def add_to_counter(session: Session, name: str, amount: int = 1) -> None:
    """Add to a counter in the caller's transaction (made at 0 if it does not exist yet)."""
    if amount <= 0 or _bump(session, name, amount):
        return
    insert_ignoring_duplicates(session, ServiceCounter, [{"name": name, "value": 0}])
    _bump(session, name, amount)
