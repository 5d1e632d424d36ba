"""What /metrics reports about the service as a whole, read from the database at scrape time.

Every API process reads the same rows, so any of them answers the same: the jobs by status and
the queue's depth (the kept counts of jobs.status_counts), the age of the queue's oldest job
(one seek of ix_jobs_status_created), the running jobs of each worker and each worker's
heartbeat (the `workers` table), and the counters (`service_counters`: epochs recorded, leases
reaped, messages re-sent) that are added to in the very transaction of what they count. So a
scrape reads a few rows whatever the number of jobs, queued jobs and epoch rows; only the
running jobs and the notification deliveries are counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jobs.counters import EPOCHS_RECORDED, MESSAGES_RESENT, REAP_OUTCOMES, leases_reaped_counter
from jobs.db import session_scope
from jobs.status_counts import service_counts
from jobs.tables import (
    DELIVERY_STATES,
    Job,
    JobStatus,
    NotificationDelivery,
    ServiceCounter,
    WorkerRecord,
    utcnow,
)

PREFIX = "cifar_jobs"


@dataclass
class Snapshot:
    """The figures of one scrape."""

    jobs_by_status: dict[str, int]
    oldest_queued_age_seconds: float
    running_by_worker: dict[str, int]
    heartbeat_age_by_worker: dict[str, float]
    counters: dict[str, int]
    notifications_by_state: dict[str, int] = field(default_factory=dict)

    @property
    def queue_depth(self) -> int:
        return self.jobs_by_status.get(JobStatus.QUEUED, 0)


def delivery_counts(session: Session) -> dict[str, int]:
    """Notification deliveries by state (every state present)."""
    counts = dict.fromkeys(DELIVERY_STATES, 0)
    for state, count in session.execute(
        select(NotificationDelivery.state, func.count()).group_by(NotificationDelivery.state)
    ):
        counts[state] = int(count)
    return counts


def read_snapshot(session: Session, *, now: datetime | None = None) -> Snapshot:
    now = now or utcnow()
    by_status = {status.value: count for status, count in service_counts(session).items()}
    oldest = session.execute(
        select(Job.created_at)
        .where(Job.status == JobStatus.QUEUED)
        .order_by(Job.created_at)
        .limit(1)
    ).scalar()
    running = {
        worker or "": int(count)
        for worker, count in session.execute(
            select(Job.worker, func.count())
            .where(Job.status == JobStatus.RUNNING)
            .group_by(Job.worker)
        )
    }
    heartbeats = {
        row.name: max(0.0, (now - row.heartbeat_at).total_seconds())
        for row in session.execute(select(WorkerRecord.name, WorkerRecord.heartbeat_at))
    }
    counters = {
        row.name: int(row.value)
        for row in session.execute(select(ServiceCounter.name, ServiceCounter.value))
    }
    return Snapshot(
        jobs_by_status=by_status,
        oldest_queued_age_seconds=(
            0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())
        ),
        running_by_worker=running,
        heartbeat_age_by_worker=heartbeats,
        counters=counters,
        notifications_by_state=delivery_counts(session),
    )


def metric_families(snapshot: Snapshot) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    jobs = GaugeMetricFamily(f"{PREFIX}_jobs", "Jobs by status.", labels=["status"])
    for status, count in snapshot.jobs_by_status.items():
        jobs.add_metric([status], count)
    yield jobs
    yield GaugeMetricFamily(
        f"{PREFIX}_queue_depth", "Jobs queued, waiting for a worker.", value=snapshot.queue_depth
    )
    yield GaugeMetricFamily(
        f"{PREFIX}_oldest_queued_job_age_seconds",
        "How long the oldest queued job has waited since it was submitted (0: none queued).",
        value=snapshot.oldest_queued_age_seconds,
    )
    running = GaugeMetricFamily(
        f"{PREFIX}_running_jobs", "Jobs running, by the worker that holds them.", labels=["worker"]
    )
    for worker, count in sorted(snapshot.running_by_worker.items()):
        running.add_metric([worker], count)
    yield running
    heartbeat = GaugeMetricFamily(
        f"{PREFIX}_worker_heartbeat_age_seconds",
        "Seconds since each worker process last reported itself alive.",
        labels=["worker"],
    )
    for worker, age in sorted(snapshot.heartbeat_age_by_worker.items()):
        heartbeat.add_metric([worker], age)
    yield heartbeat
    yield CounterMetricFamily(
        f"{PREFIX}_epochs_recorded",
        "Epochs recorded (one metrics row each), over all jobs.",
        value=snapshot.counters.get(EPOCHS_RECORDED, 0),
    )
    reaped = CounterMetricFamily(
        f"{PREFIX}_reconciler_leases_reaped",
        "Running jobs whose worker stopped heartbeating, by what the reconciler did with them.",
        labels=["outcome"],
    )
    for outcome in REAP_OUTCOMES:
        reaped.add_metric([outcome], snapshot.counters.get(leases_reaped_counter(outcome), 0))
    yield reaped
    yield CounterMetricFamily(
        f"{PREFIX}_reconciler_messages_resent",
        "Queue messages the reconciler sent again (lost, or never sent by the API).",
        value=snapshot.counters.get(MESSAGES_RESENT, 0),
    )
    notifications = GaugeMetricFamily(
        f"{PREFIX}_notifications",
        "Notification deliveries by state (pending: due or waiting to be retried).",
        labels=["state"],
    )
    for state, count in sorted(snapshot.notifications_by_state.items()):
        notifications.add_metric([state], count)
    yield notifications


class DatabaseCollector(Collector):
    """The service's figures, read from the database on each scrape."""

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        with session_scope(write=False) as session:
            snapshot = read_snapshot(session)
        yield from metric_families(snapshot)
