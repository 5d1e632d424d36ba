"""GET /metrics: the Prometheus text format (prometheus-client).

Two kinds of figures, each correct however many API processes and workers there are:

- the service's (jobs, queue, workers, epochs, reconciler, notifications) are read from the
  database at scrape time (jobs.telemetry.DatabaseCollector): every API process answers the same;
- the HTTP ones (requests and latency by route template) are this process's, as Prometheus
  expects of a target. Several processes behind one port (`uvicorn --workers N`) share them
  through prometheus-client's multiprocess mode: set PROMETHEUS_MULTIPROC_DIR to an empty folder
  for all of them, and each scrape adds up every process's files.

The workers' own histograms (epoch duration, images/s, checkpoint size and save time) are on
each worker's WORKER_METRICS_PORT (worker/telemetry.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from fastapi import APIRouter, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool

from app.auth import METRICS_PATH
from jobs.telemetry import PREFIX, DatabaseCollector

# No `_created` series: a timestamp per label set that no query here uses.
disable_created_metrics()

# Not the library's global registry: what /metrics shows is chosen below, per scrape.
HTTP_REGISTRY = CollectorRegistry(auto_describe=True)
HTTP_REQUESTS = Counter(
    f"{PREFIX}_http_requests",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
    registry=HTTP_REGISTRY,
)
HTTP_LATENCY = Histogram(
    f"{PREFIX}_http_request_duration_seconds",
    "Time from a request's arrival to the end of its answer, by method and route template "
    "(an event stream's is its whole life).",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=HTTP_REGISTRY,
)


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_LATENCY.labels(method, route).observe(seconds)


class _Scrape(Collector):
    def __init__(self) -> None:
        self.database = DatabaseCollector()

    def collect(self) -> Iterator[Metric]:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            yield from MultiProcessCollector(None).collect()
        else:
            yield from HTTP_REGISTRY.collect()
        yield from self.database.collect()


_SCRAPE_REGISTRY = CollectorRegistry(auto_describe=False)
_SCRAPE_REGISTRY.register(_Scrape())

router = APIRouter(include_in_schema=False)


@router.get(METRICS_PATH)
async def metrics() -> Response:
    # The database reads block: off the event loop, like the sync routes.
    body = await run_in_threadpool(generate_latest, _SCRAPE_REGISTRY)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
