"""The audit trail: who submitted, cancelled, re-prioritised and deleted which job or
experiment, and who made, changed and disabled users and their tokens.

Each action is an `audit_events` row written in the transaction that makes the change (so the
trail never names a change that was rolled back, nor misses one that committed), and one JSON
log line (logger `jobs.audit`, with `actor`, `action` and `target`) once that transaction has
committed. The rows have no foreign key: they outlive the jobs, experiments and tokens they
name."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from jobs.tables import AuditEvent, utcnow

logger = logging.getLogger("jobs.audit")
_PENDING = "audit_log_lines"


def _target(job_id: int | None, experiment_id: int | None, detail: dict[str, Any]) -> str:
    if job_id is not None:
        return f"job {job_id}"
    if experiment_id is not None:
        return f"experiment {experiment_id}"
    if "user" in detail:
        return f"user {detail['user']}"
    return "service"


def record(
    session: Session,
    actor: str | None,
    action: str,
    *,
    job_id: int | None = None,
    experiment_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """An audit row for `action` by `actor` (None: no accounts) in the caller's transaction;
    its log line is written once that transaction commits."""
    detail = detail or {}
    session.add(
        AuditEvent(
            at=utcnow(),
            actor=actor,
            action=action,
            job_id=job_id,
            experiment_id=experiment_id,
            detail=detail or None,
        )
    )
    line = {
        "actor": actor,
        "action": action,
        "target": _target(job_id, experiment_id, detail),
        **({"job_id": job_id} if job_id is not None else {}),
        **({"experiment_id": experiment_id} if experiment_id is not None else {}),
    }
    session.info.setdefault(_PENDING, []).append(line)


@event.listens_for(Session, "after_commit")
def _log_committed(session: Session) -> None:
    # A released SAVEPOINT is no commit of the change (as jobs.queue's sends).
    if session.in_nested_transaction():
        return
    for line in session.info.pop(_PENDING, []):
        logger.info("%s %s by %s", line["action"], line["target"], line["actor"], extra=line)


@event.listens_for(Session, "after_rollback")
def _forget(session: Session) -> None:
    if not session.in_nested_transaction():
        session.info.pop(_PENDING, None)
