"""Idempotent submission: an Idempotency-Key names one stored request, whatever its kind."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import IdempotencyConflict
from jobs.tables import Experiment, Job

Submitted = TypeVar("Submitted", Job, Experiment)


def find_by_key(
    session: Session, kind: type[Submitted], key: str, fingerprint: str
) -> Submitted | None:
    """The row submitted with this key, if any; 409 when it was submitted with another body."""
    row = session.execute(select(kind).where(kind.idempotency_key == key)).scalar_one_or_none()
    if row is not None and row.request_sha256 != fingerprint:
        noun = "job" if kind is Job else "experiment"
        raise IdempotencyConflict(
            f"Idempotency-Key {key!r} was already used for {noun} {row.id} with a different body."
        )
    return row
