"""A real Prometheus server (Debian's `prometheus`) scrapes the API and a worker every second
while jobs train, and its query API shows the queue growing and draining, the worker alive and
busy, and the epochs recorded, as the API's database and the worker's histograms count them."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import IN_CI, service_environment
from tests.support import Process, free_port, start_api, start_worker, wait_for, wait_for_status

pytestmark = pytest.mark.e2e

API_KEY = "prometheus-test-key"
METRICS_TOKEN = "prometheus-scrape-token"
JOB = {
    "block": "mobile",
    "hyperparameters": {"epochs": 3, "batch_size": 32, "seed": 3},
    "train_samples": 160,
    "test_samples": 32,
}
JOBS = 3


@pytest.fixture
def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        message = "the prometheus server is missing (apt-get install prometheus)"
        if IN_CI:
            pytest.fail(f"{message}; CI needs it.", pytrace=False)
        pytest.skip(f"{message}: install it to run this test")
    return found


def start_prometheus(
    binary: str, root: Path, api_port: int, worker_port: int
) -> tuple[str, Process]:
    config = root / "prometheus.yml"
    config.write_text(
        f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: api
    authorization:
      type: Bearer
      credentials: {METRICS_TOKEN}
    static_configs:
      - targets: ["127.0.0.1:{api_port}"]
  - job_name: worker
    static_configs:
      - targets: ["127.0.0.1:{worker_port}"]
"""
    )
    port = free_port()
    process = Process(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={root / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        {"PATH": "/usr/bin:/bin"},
        root / "prometheus.log",
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if not process.alive():
            raise AssertionError(f"prometheus exited:\n{process.output()}")
        try:
            return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, timeout=60, what="prometheus to be ready")
    return url, process


class PromQL:
    def __init__(self, url: str) -> None:
        self.url = url

    def values(self, query: str) -> list[tuple[dict[str, str], float]]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": query}, timeout=10).json()
        assert answer["status"] == "success", answer
        return [(item["metric"], float(item["value"][1])) for item in answer["data"]["result"]]

    def scalar(self, query: str) -> float | None:
        found = self.values(query)
        return found[0][1] if found else None


@pytest.fixture
def stack(
    tmp_path: Path, dataset_root: Path, prometheus_binary: str
) -> Iterator[tuple[httpx.Client, PromQL, Process]]:
    from jobs.migrations import upgrade

    worker_port = free_port()
    env = service_environment(
        tmp_path,
        f"sqlite:///{tmp_path / 'jobs.sqlite3'}",
        dataset_root,
        API_KEY=API_KEY,
        METRICS_TOKEN=METRICS_TOKEN,
        WORKER_METRICS_PORT=str(worker_port),
        WORKER_METRICS_HOST="127.0.0.1",
    )
    upgrade(env["DATABASE_URL"])
    api_port = free_port()
    api = start_api(env, tmp_path, api_port)
    worker = start_worker(env, tmp_path, name="prom-worker")
    prometheus_url, prometheus = start_prometheus(
        prometheus_binary, tmp_path, api_port, worker_port
    )
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{api_port}", timeout=30, headers={"X-API-Key": API_KEY}
    )
    try:
        yield client, PromQL(prometheus_url), worker
    finally:
        client.close()
        prometheus.stop()
        worker.stop()
        api.stop()


def test_prometheus_sees_the_queue_the_workers_and_the_epochs_move(
    stack: tuple[httpx.Client, PromQL, Process],
) -> None:
    api, promql, worker = stack
    # Both targets are scraped and up (the API's with the scrape token).
    wait_for(
        lambda: {m["job"]: v for m, v in promql.values("up")} == {"api": 1.0, "worker": 1.0},
        timeout=30,
        what="both targets up",
    )
    wait_for(
        lambda: (
            promql.scalar('cifar_jobs_worker_heartbeat_age_seconds{worker="prom-worker"}')
            is not None
        ),
        timeout=30,
        what="the worker's heartbeat",
    )

    ids = []
    for _ in range(JOBS):
        response = api.post("/jobs", json=JOB)
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])

    # While the first trains, the others wait: the queue is seen at depth 1 or 2, and the worker
    # is seen running one job.
    wait_for(
        lambda: (promql.scalar("cifar_jobs_queue_depth") or 0) >= 1,
        timeout=60,
        what="Prometheus to see queued jobs",
    )
    wait_for(
        lambda: promql.scalar('cifar_jobs_running_jobs{worker="prom-worker"}') == 1,
        timeout=120,
        what="Prometheus to see the worker running a job",
    )
    wait_for(
        lambda: (promql.scalar("cifar_jobs_epochs_recorded_total") or 0) >= 1,
        timeout=120,
        what="Prometheus to see an epoch recorded",
    )

    for job_id in ids:
        job = wait_for_status(api, job_id, ("succeeded", "failed"), timeout=300)
        assert job["status"] == "succeeded", worker.output()
    epochs = JOBS * JOB["hyperparameters"]["epochs"]

    # Drained: the queue at 0 now, all epochs counted by the API (database) and by the worker's
    # histograms, and the queue's earlier depth still in Prometheus's history.
    wait_for(
        lambda: (
            promql.scalar("cifar_jobs_epochs_recorded_total") == epochs
            and promql.scalar("cifar_jobs_queue_depth") == 0
            and promql.scalar("sum(cifar_jobs_epoch_duration_seconds_count)") == epochs
        ),
        timeout=30,
        what="Prometheus to see every epoch and an empty queue",
    )
    assert (promql.scalar("max_over_time(cifar_jobs_queue_depth[10m])") or 0) >= 1
    assert promql.scalar('cifar_jobs_jobs{status="succeeded"}') == JOBS
    assert promql.scalar('sum(cifar_jobs_epoch_images_per_second_count{block="mobile"})') == epochs
    assert (promql.scalar("sum(cifar_jobs_checkpoint_bytes_count)") or 0) >= JOBS
    assert (promql.scalar("cifar_jobs_checkpoint_bytes_sum") or 0) > 0
    # The API's own requests, by route template.
    submitted = promql.scalar(
        'sum(cifar_jobs_http_requests_total{route="/jobs",method="POST",status="202"})'
    )
    assert submitted == JOBS
