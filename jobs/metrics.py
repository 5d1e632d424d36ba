"""The per-epoch metrics: their columns, stated once, and the curves read per job and per
experiment."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Row, func, or_, select
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
# How much an epoch's figures are measurements (EpochMetric.evaluation): the images each pass
# counted and the standard errors of the mean losses, as the engine reports them.
EVALUATION_NAMES = (
    "train_images",
    "test_images",
    "train_loss_standard_error",
    "test_loss_standard_error",
)


def evaluation_of(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The evaluation figures an epoch's report holds (None when it holds none)."""
    found = {name: metrics[name] for name in EVALUATION_NAMES if metrics.get(name) is not None}
    return found or None


# Read as plain rows rather than ORM objects, which cost several times as much CPU to build
# (the metrics route is the most polled route with the most rows).
METRIC_COLUMNS = tuple(getattr(EpochMetric, name) for name in METRIC_NAMES)

# A result row with (at least) the attributes of METRIC_NAMES.
MetricRow = Row[*tuple[Any, ...]]


# No response carries more epoch rows than these, whatever is asked: one job's curve, and the
# curves of every job of an experiment together (1,000 jobs of 100 points each).
MAX_JOB_POINTS = 1000
MAX_EXPERIMENT_POINTS = 100_000
MIN_POINTS = 3  # the first, the best and the last epoch


def points_per_job(jobs: int, max_points: int | None = None) -> int:
    """How many points each of an experiment's `jobs` curves may have."""
    share = MAX_EXPERIMENT_POINTS // max(jobs, 1)
    return max(MIN_POINTS, min(max_points or MAX_JOB_POINTS, MAX_JOB_POINTS, share))


def _kept(rank: Any, count: Any, best_rank: Any, points: int) -> ColumnElement[bool]:
    """Which of a job's rows a curve of at most `points` points keeps: all when they fit;
    else the first, the last, the best (highest test accuracy, the earliest of equals) and
    every `stride`-th, the stride chosen so that the total fits. Plain SQL arithmetic, the
    same on SQLite and PostgreSQL (`//` is integer division on both)."""
    stride = (count + (points - MIN_POINTS)) // (points - MIN_POINTS + 1)
    return or_(
        count <= points,
        rank == 1,
        rank == count,
        best_rank == 1,
        (rank - 1) % stride == 0,
    )


def _ranked(where: Sequence[ColumnElement[bool]], *, with_job: bool) -> Any:
    """The rows with their rank by epoch, their count and their rank by accuracy, per job."""
    by_job = EpochMetric.job_id
    return (
        select(
            *([EpochMetric.job_id] if with_job else []),
            *METRIC_COLUMNS,
            func.row_number().over(partition_by=by_job, order_by=EpochMetric.epoch).label("rank"),
            func.count().over(partition_by=by_job).label("count"),
            func.row_number()
            .over(
                partition_by=by_job,
                order_by=(EpochMetric.test_accuracy.desc(), EpochMetric.epoch),
            )
            .label("best_rank"),
        )
        .where(*where)
        .subquery()
    )


def epoch_metrics(
    session: Session, job_id: int, *, since_epoch: int = 0, max_points: int | None = None
) -> list[MetricRow]:
    """The job's epochs after `since_epoch` in order, as rows with the attributes of
    METRIC_NAMES; at most `max_points` (and MAX_JOB_POINTS) of them, downsampled in SQL."""
    points = max(MIN_POINTS, min(max_points or MAX_JOB_POINTS, MAX_JOB_POINTS))
    ranked = _ranked(
        [EpochMetric.job_id == job_id, EpochMetric.epoch > since_epoch], with_job=False
    )
    return list(
        session.execute(
            select(*(ranked.c[name] for name in METRIC_NAMES))
            .where(_kept(ranked.c.rank, ranked.c.count, ranked.c.best_rank, points))
            .order_by(ranked.c.epoch)
        )
    )


def epoch_metrics_by_job(
    session: Session, experiment_id: int, *, max_points: int | None = None
) -> dict[int, list[MetricRow]]:
    """The curves of every job of the experiment, by job, in one query: each downsampled to
    points_per_job(), so that the whole answer stays within MAX_EXPERIMENT_POINTS."""
    jobs = session.execute(
        select(func.count()).select_from(Job).where(Job.experiment_id == experiment_id)
    ).scalar_one()
    points = points_per_job(jobs, max_points)
    in_experiment = select(Job.id).where(Job.experiment_id == experiment_id)
    ranked = _ranked([EpochMetric.job_id.in_(in_experiment)], with_job=True)
    by_job: dict[int, list[MetricRow]] = defaultdict(list)
    rows = session.execute(
        select(ranked.c.job_id, *(ranked.c[name] for name in METRIC_NAMES))
        .where(_kept(ranked.c.rank, ranked.c.count, ranked.c.best_rank, points))
        .order_by(ranked.c.job_id, ranked.c.epoch)
    )
    for row in rows:
        by_job[row.job_id].append(row)
    return by_job


# One epoch of a curve: its values in METRIC_NAMES order.
Point = tuple[Any, ...]


def job_curves(session: Session, job_ids: Sequence[int], points: int) -> dict[int, list[Point]]:
    """The curves of these jobs (a page of an experiment's), by job, each downsampled to
    `points` in SQL; reads only these jobs' epoch rows. The jobs whose kept epoch count fits
    are read as they are, in the order of the (job, epoch) key, without ranking their rows."""
    if not job_ids:
        return {}
    recorded = session.execute(
        select(Job.id, Job.epochs_recorded).where(Job.id.in_(sorted(set(job_ids))))
    ).all()
    whole = [job_id for job_id, epochs in recorded if epochs <= points]
    downsampled = [job_id for job_id, epochs in recorded if epochs > points]
    by_job: dict[int, list[Point]] = defaultdict(list)
    queries = []
    if whole:
        queries.append(
            select(EpochMetric.job_id, *METRIC_COLUMNS)
            .where(EpochMetric.job_id.in_(whole))
            .order_by(EpochMetric.job_id, EpochMetric.epoch)
        )
    if downsampled:
        ranked = _ranked([EpochMetric.job_id.in_(downsampled)], with_job=True)
        queries.append(
            select(ranked.c.job_id, *(ranked.c[name] for name in METRIC_NAMES))
            .where(_kept(ranked.c.rank, ranked.c.count, ranked.c.best_rank, points))
            .order_by(ranked.c.job_id, ranked.c.epoch)
        )
    for query in queries:
        for job_id, *values in session.execute(query).tuples():
            by_job[job_id].append(tuple(values))
    return by_job


def epoch_time_values(epochs: int, seconds: float) -> dict[str, Any]:
    """The job columns that `epochs` more stored epoch rows taking `seconds` in all change: the
    sum and number of its epoch times and their mean (Job.seconds_per_epoch), so that a summary
    reads one column instead of averaging the epoch rows."""
    total = Job.epoch_seconds + seconds
    recorded = Job.epochs_recorded + epochs
    return {
        "epoch_seconds": total,
        "epochs_recorded": recorded,
        "seconds_per_epoch": total / recorded,
    }
