"""The per-epoch metrics: their columns, stated once, and the curves read per job and per
experiment."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import Row, func, select
from sqlalchemy.orm import Session

from jobs.tables import EpochMetric, Job

# What an epoch records, in the order the API shows it.
METRIC_NAMES = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "learning_rate",
    "seconds",
    "images_per_second",
)
# Read as plain rows rather than ORM objects, which cost several times as much CPU to build
# (the metrics route is the most polled route with the most rows).
METRIC_COLUMNS = tuple(getattr(EpochMetric, name) for name in METRIC_NAMES)

# A result row with (at least) the attributes of METRIC_NAMES.
MetricRow = Row[*tuple[Any, ...]]


def epoch_metrics(session: Session, job_id: int, *, since_epoch: int = 0) -> list[MetricRow]:
    """The job's epochs in order, as rows with the attributes of METRIC_NAMES."""
    return list(
        session.execute(
            select(*METRIC_COLUMNS)
            .where(EpochMetric.job_id == job_id, EpochMetric.epoch > since_epoch)
            .order_by(EpochMetric.epoch)
        )
    )


def epoch_metrics_by_job(session: Session, experiment_id: int) -> dict[int, list[MetricRow]]:
    """Every recorded epoch of the experiment's jobs, by job, in one query."""
    by_job: dict[int, list[MetricRow]] = defaultdict(list)
    rows = session.execute(
        select(EpochMetric.job_id, *METRIC_COLUMNS)
        .join(Job, Job.id == EpochMetric.job_id)
        .where(Job.experiment_id == experiment_id)
        .order_by(EpochMetric.job_id, EpochMetric.epoch)
    )
    for row in rows:
        by_job[row.job_id].append(row)
    return by_job


def seconds_per_epoch(session: Session, experiment_id: int) -> dict[int, float]:
    """Each job's mean recorded epoch time, for all the experiment's jobs in one query."""
    rows = session.execute(
        select(EpochMetric.job_id, func.avg(EpochMetric.seconds))
        .join(Job, Job.id == EpochMetric.job_id)
        .where(Job.experiment_id == experiment_id)
        .group_by(EpochMetric.job_id)
    )
    return {job_id: float(mean) for job_id, mean in rows}
