"""Finding jobs and experiments: one by id, or a page of them, newest first."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jobs.errors import ExperimentNotFound, JobNotFound
from jobs.tables import Experiment, Job


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job


def get_experiment(session: Session, experiment_id: int) -> Experiment:
    experiment = session.get(Experiment, experiment_id)
    if experiment is None:
        raise ExperimentNotFound(experiment_id)
    return experiment


def list_jobs(
    session: Session,
    *,
    status: str | None = None,
    block: str | None = None,
    experiment_id: int | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Job], int]:
    """A page of jobs, newest first, and how many match."""
    query = select(Job)
    if experiment_id is not None:
        query = query.where(Job.experiment_id == experiment_id)
    if status is not None:
        query = query.where(Job.status == status)
    if block is not None:
        query = query.where(Job.block == block)
    total = session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    jobs = session.execute(
        query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit).offset(offset)
    ).scalars()
    return list(jobs), total


def list_experiments(
    session: Session, *, limit: int = 50, offset: int = 0
) -> tuple[list[Experiment], int]:
    """A page of experiments, newest first, and how many there are."""
    total = session.execute(select(func.count()).select_from(Experiment)).scalar_one()
    experiments = session.execute(
        select(Experiment)
        .order_by(Experiment.created_at.desc(), Experiment.id.desc())
        .limit(limit)
        .offset(offset)
    ).scalars()
    return list(experiments), total
