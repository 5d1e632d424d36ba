"""Which checkpoint file each name points at, and which files may be pruned: `latest` is the
newest epoch, `best` the epoch with the highest test accuracy (the earliest of equals), `final`
the latest once it is the last epoch (docs/design/checkpoints.md)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.tables import CHECKPOINT_NAMES, Checkpoint, EpochMetric, Job


def checkpoint_pointers(session: Session, job: Job) -> dict[str, Checkpoint]:
    """{name: row} for the names that point at a recorded file, in CHECKPOINT_NAMES order."""
    rows = list(
        session.execute(
            select(Checkpoint).where(Checkpoint.job_id == job.id).order_by(Checkpoint.epoch)
        ).scalars()
    )
    if not rows:
        return {}
    scores = session.execute(
        select(EpochMetric.epoch, EpochMetric.test_accuracy).where(
            EpochMetric.job_id == job.id,
            EpochMetric.epoch.in_([row.epoch for row in rows]),
        )
    )
    accuracy = {epoch: test_accuracy for epoch, test_accuracy in scores}
    latest = rows[-1]
    pointers = {"latest": latest}
    scored = [row for row in rows if row.epoch in accuracy]
    if scored:
        pointers["best"] = max(scored, key=lambda row: (accuracy[row.epoch], -row.epoch))
    if latest.epoch >= job.epochs_total:
        pointers["final"] = latest
    return {name: pointers[name] for name in CHECKPOINT_NAMES if name in pointers}


def prunable_checkpoints(session: Session, job: Job) -> list[Checkpoint]:
    """Rows no name points at any more (older than latest, not the best)."""
    kept = {row.id for row in checkpoint_pointers(session, job).values()}
    return [
        row
        for row in session.execute(select(Checkpoint).where(Checkpoint.job_id == job.id)).scalars()
        if row.id not in kept
    ]
