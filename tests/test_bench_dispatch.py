"""A small run of the dispatch benchmark on both brokers: real API and worker processes train
tiny jobs, and every figure it promises comes out of the job rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.dispatch import main


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.redis
def test_dispatch_benchmark_times_claims_finishes_workers_and_an_experiment(
    tmp_path: Path, redis_url: str
) -> None:
    out = tmp_path / "dispatch.json"
    argv = ["--workers", "2", "--jobs", "3", "--latency-jobs", "2", "--train-samples", "20"]
    argv += ["--experiment-jobs", "12", "--redis-url", redis_url, "--json", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert set(result) == {"sqlite", "redis"}
    for figures in result.values():
        overhead = figures["overhead"]
        assert overhead["jobs"] == 2
        for name in ("submit_to_claimed_ms", "last_epoch_to_succeeded_ms"):
            assert 0 < overhead[name]["median"] <= overhead[name]["max"] < 60_000
        throughput = figures["throughput"]
        assert throughput["one_worker_jobs_per_s"] > 0 and throughput["2_workers_jobs_per_s"] > 0
        assert throughput["speedup"] == pytest.approx(
            throughput["2_workers_jobs_per_s"] / throughput["one_worker_jobs_per_s"], rel=0.05
        )
        experiment = figures["experiment"]
        assert experiment["jobs"] == 12
        assert experiment["transaction_s"] > 0 and experiment["request_s"] > 0
        for name in ("last_epoch_to_checkpoint_recorded_ms", "checkpoint_recorded_to_succeeded_ms"):
            assert overhead[name]["median"] <= overhead["last_epoch_to_succeeded_ms"]["max"]
