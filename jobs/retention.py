"""Deleting finished jobs and experiments: their rows and their checkpoint files.

The rows go in one transaction, which also records each job in artifact_deletions; the files
are removed after it commits, and each job's record only once its files are gone. So a process
killed at any point leaves either the job whole (before the commit) or no rows but that
record, which the next sweep (`sweep_artifact_deletions`, run by every delete and by the
workers' reconciler) finishes. Nothing is ever half-deleted in a way a reader can see.

Bulk pruning, for operators (documented in README.md):

    python -m jobs.retention --finished-before 2026-01-01T00:00:00Z [--dry-run]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import delete, exists, func, insert, select
from sqlalchemy.orm import Session

from jobs import audit, status_counts
from jobs.accounts import Identity, ensure_may_change
from jobs.artifacts import artifact_store, store_at
from jobs.db import session_scope
from jobs.errors import NotFinished
from jobs.listing import get_experiment, get_job
from jobs.notifications import outbox
from jobs.settings import Settings, get_settings
from jobs.tables import (
    TERMINAL_STATUSES,
    ArtifactDeletion,
    Checkpoint,
    Experiment,
    Job,
    JobStatus,
    utcnow,
)

logger = logging.getLogger(__name__)

# Jobs deleted per transaction when pruning: short transactions, so workers and the API are
# never held up for long on SQLite's single writer.
PRUNE_BATCH = 200
SWEEP_BATCH = 500
ENDED = sorted(str(status) for status in TERMINAL_STATUSES)


def _delete_rows(session: Session, job_ids: Sequence[int]) -> None:
    """The jobs' rows (metrics, checkpoints, events and tags go with them, ON DELETE CASCADE),
    taken off the kept status counts, and a record of each whose files are to be removed, with
    the stores they were recorded in, in the caller's transaction. The notifications their ends
    owe are made first: their events go with them."""
    if not job_ids:
        return
    outbox.settle(session, job_ids)
    stores: dict[int, set[str]] = {}
    for job_id, locator in session.execute(
        select(Checkpoint.job_id, Checkpoint.store_url)
        .where(Checkpoint.job_id.in_(job_ids))
        .distinct()
    ):
        stores.setdefault(job_id, set()).add(locator)
    now = utcnow()
    session.execute(
        insert(ArtifactDeletion),
        [
            {
                "job_id": job_id,
                "requested_at": now,
                "store_urls": sorted(stores[job_id]) if job_id in stores else None,
            }
            for job_id in job_ids
        ],
    )
    deleted = session.execute(
        delete(Job)
        .where(Job.id.in_(job_ids))
        .returning(Job.experiment_id, Job.status)
        .execution_options(synchronize_session=False)
    ).all()
    removed = Counter((row.experiment_id, str(row.status)) for row in deleted)
    for (experiment_id, status), jobs in removed.items():
        status_counts.note(session, experiment_id, status, -jobs)


def delete_job(session: Session, job_id: int, *, actor: Identity | None = None) -> None:
    """Delete a job that has ended (NotFinished otherwise: cancel it first) in the caller's
    transaction; its files are removed by the sweep once that commits. `actor`: the caller,
    who must be its owner or an admin (jobs.accounts), audited; None for the service's own
    deletions (pruning)."""
    job = get_job(session, job_id)
    if actor is not None:
        ensure_may_change(actor, job.owner, f"Job {job_id}")
    if not JobStatus(job.status).ended:
        raise NotFinished(
            f"Job {job_id} is {job.status}; only a job that has ended can be deleted "
            "(cancel it first)."
        )
    _delete_rows(session, [job_id])
    if actor is not None:
        audit.record(
            session, actor.name, "job_deleted", job_id=job_id, experiment_id=job.experiment_id
        )


def delete_experiment(
    session: Session, experiment_id: int, *, actor: Identity | None = None
) -> list[int]:
    """Delete an experiment whose jobs have all ended, with its jobs; returns their ids.
    `actor` as for delete_job."""
    experiment = get_experiment(session, experiment_id)
    if actor is not None:
        ensure_may_change(actor, experiment.owner, f"Experiment {experiment_id}")
    rows = session.execute(
        select(Job.id, Job.status).where(Job.experiment_id == experiment_id)
    ).all()
    running = [job_id for job_id, status in rows if not JobStatus(status).ended]
    if running:
        raise NotFinished(
            f"Experiment {experiment_id} has {len(running)} jobs that have not ended; cancel "
            "it first."
        )
    job_ids = sorted(job_id for job_id, _ in rows)
    _delete_rows(session, job_ids)
    session.execute(delete(Experiment).where(Experiment.id == experiment_id))
    status_counts.forget_experiment(session, experiment_id)
    if actor is not None:
        audit.record(
            session,
            actor.name,
            "experiment_deleted",
            experiment_id=experiment_id,
            detail={"job_ids": job_ids},
        )
    return job_ids


def sweep_artifact_deletions(settings: Settings, *, limit: int = SWEEP_BATCH) -> int:
    """Remove the files of deleted jobs (from the configured store and every store their
    checkpoints were recorded in), then their records; returns how many were done. A job whose
    store cannot be opened here keeps its record (logged), for a process that can."""
    configured = artifact_store(settings)
    with session_scope(write=False) as session:
        rows = session.execute(
            select(ArtifactDeletion.job_id, ArtifactDeletion.store_urls)
            .order_by(ArtifactDeletion.job_id)
            .limit(limit)
        ).all()
    pending = []
    for job_id, locators in rows:
        try:
            stores = [configured, *(store_at(url, settings) for url in locators or ())]
        except ValueError as error:
            logger.warning("job %s: its files stay in a store not usable here: %s", job_id, error)
            continue
        for store in {id(store): store for store in stores}.values():
            store.delete_job(job_id)  # removing files already gone is harmless
        pending.append(job_id)
    if pending:
        with session_scope() as session:
            session.execute(delete(ArtifactDeletion).where(ArtifactDeletion.job_id.in_(pending)))
    return len(pending)


def delete_job_now(settings: Settings, job_id: int, *, actor: Identity) -> None:
    """Delete the job's rows (committed), then its files."""
    with session_scope() as session:
        delete_job(session, job_id, actor=actor)
    sweep_artifact_deletions(settings)


def delete_experiment_now(settings: Settings, experiment_id: int, *, actor: Identity) -> list[int]:
    with session_scope() as session:
        job_ids = delete_experiment(session, experiment_id, actor=actor)
    sweep_artifact_deletions(settings)
    return job_ids


def prune_finished(
    settings: Settings, *, finished_before: datetime, dry_run: bool = False
) -> tuple[int, int]:
    """Delete every job that ended before `finished_before`, a batch per transaction, then the
    experiments left without jobs that were made before it. Returns (jobs, experiments)."""
    old = (Job.status.in_(ENDED), Job.finished_at < finished_before)
    if dry_run:
        with session_scope(write=False) as session:
            jobs = session.execute(select(func.count()).select_from(Job).where(*old)).scalar_one()
        return int(jobs), 0
    jobs = 0
    while True:
        with session_scope() as session:
            batch = list(
                session.execute(
                    select(Job.id).where(*old).order_by(Job.id).limit(PRUNE_BATCH)
                ).scalars()
            )
            _delete_rows(session, batch)
        sweep_artifact_deletions(settings, limit=len(batch) or 1)
        jobs += len(batch)
        if len(batch) < PRUNE_BATCH:
            break
    with session_scope() as session:
        emptied = list(
            session.execute(
                delete(Experiment)
                .where(
                    Experiment.created_at < finished_before,
                    ~exists().where(Job.experiment_id == Experiment.id),
                )
                .returning(Experiment.id)
                .execution_options(synchronize_session=False)
            ).scalars()
        )
        for experiment_id in emptied:
            status_counts.forget_experiment(session, experiment_id)
        experiments = len(emptied)
    sweep_artifact_deletions(settings)
    return jobs, experiments


def _timestamp(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError("give a time zone, e.g. 2026-01-01T00:00:00Z")
    return value.astimezone(UTC)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.retention",
        description="Delete the jobs that ended before a time (rows and checkpoint files), and "
        "the experiments made before it that are left without jobs.",
    )
    parser.add_argument("--finished-before", type=_timestamp, required=True, metavar="TIME")
    parser.add_argument("--dry-run", action="store_true", help="only count the jobs")
    args = parser.parse_args(argv)
    jobs, experiments = prune_finished(
        get_settings(), finished_before=args.finished_before, dry_run=args.dry_run
    )
    if args.dry_run:
        print(f"would delete {jobs} jobs")
    else:
        print(f"deleted {jobs} jobs and {experiments} experiments left without jobs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
