"""The worker's own metrics, observed where the work happens and served by the worker itself on
WORKER_METRICS_PORT (prometheus-client's HTTP server, in a thread): each worker process is a
Prometheus target, so its histograms need no sharing. The service-wide figures (queue, jobs,
epochs recorded, workers' heartbeats) are the API's /metrics, read from the database."""

from __future__ import annotations

import logging

from prometheus_client import Histogram, disable_created_metrics, start_http_server

from jobs.settings import Settings
from jobs.telemetry import PREFIX

logger = logging.getLogger(__name__)

# No `_created` series: a timestamp per label set that no query here uses.
disable_created_metrics()

EPOCH_SECONDS = Histogram(
    f"{PREFIX}_epoch_duration_seconds",
    "Wall time of one training epoch (training and evaluation), by block.",
    ["block"],
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600),
)
IMAGES_PER_SECOND = Histogram(
    f"{PREFIX}_epoch_images_per_second",
    "Training images per second over one epoch, by block.",
    ["block"],
    buckets=(10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000),
)
CHECKPOINT_BYTES = Histogram(
    f"{PREFIX}_checkpoint_bytes",
    "Size of each checkpoint file stored, by block.",
    ["block"],
    buckets=(1e6, 5e6, 1e7, 2.5e7, 5e7, 1e8, 2.5e8, 5e8, 1e9, 5e9),
)
CHECKPOINT_SECONDS = Histogram(
    f"{PREFIX}_checkpoint_save_seconds",
    "Time to store a checkpoint file the trainer wrote and record it, by block.",
    ["block"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


def observe_epoch(block: str, metrics: dict[str, float]) -> None:
    EPOCH_SECONDS.labels(block).observe(float(metrics["seconds"]))
    IMAGES_PER_SECOND.labels(block).observe(float(metrics["images_per_second"]))


def observe_checkpoint(block: str, size_bytes: int, seconds: float) -> None:
    CHECKPOINT_BYTES.labels(block).observe(size_bytes)
    CHECKPOINT_SECONDS.labels(block).observe(seconds)


def serve_metrics(settings: Settings) -> None:
    """Start the worker's /metrics server if WORKER_METRICS_PORT is set."""
    if not settings.worker_metrics_port:
        return
    start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_host)
    logger.info(
        "metrics on http://%s:%s/metrics",
        settings.worker_metrics_host,
        settings.worker_metrics_port,
    )
