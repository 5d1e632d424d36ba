"""The API benchmarks: latency while a job trains (its three kinds of window and the plain CPU
load of the control), and CPU time per read request."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import pytest

from bench import api_cpu
from bench.api_latency import _burn_cpu, main


@pytest.mark.slow
def test_the_control_window_uses_the_cpu_share_it_is_given() -> None:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    _burn_cpu(0.3, 2.0)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    # 0.6 s of CPU asked for, plus the interpreter's start; less only on a starved machine.
    assert 0.3 < used < 1.2, used


@pytest.mark.slow
def test_benchmark_runs_each_kind_of_window_in_each_round(tmp_path: Path) -> None:
    results_path = tmp_path / "results.json"
    main(["--seconds", "4", "--rounds", "2", "--pollers", "2", "--json", str(results_path)])
    results = json.loads(results_path.read_text())
    assert [window["kind"] for window in results["windows"]] == [
        "quiet", "loaded", "control", "loaded", "control", "quiet",
    ]  # fmt: skip
    assert results["errors"] == 0
    assert set(results["latency"]) == {
        "/jobs",
        "/jobs/{id}",
        "/jobs/{id}/metrics",
        "/jobs/{id}/plots/loss.png",
    }
    assert all(row["count"] > 0 for row in results["latency"].values())
    assert results["api_cpu_seconds_with_pollers"] > 0
    assert set(results["epoch_seconds_median"]) == {"quiet", "loaded", "control"}


@pytest.mark.slow
def test_cpu_benchmark_measures_every_read_route(tmp_path: Path) -> None:
    results_path = tmp_path / "results.json"
    arguments = ["--requests", "200", "--jobs", "2", "--epochs", "3", "--http", "h11"]
    api_cpu.main([*arguments, "--json", str(results_path)])
    results = json.loads(results_path.read_text())
    assert results["http"] == "h11" and results["loop"] == "auto"
    assert list(results["routes"]) == ["/jobs/{id}", "/jobs/{id}/metrics", "/jobs", "/health"]
    # CPU time is counted in clock ticks (10 ms): a cheap route may round down to 0.
    assert sum(row["api_cpu_ms_per_request"] for row in results["routes"].values()) > 0
    assert all(row["wall_ms_per_request"] > 0 for row in results["routes"].values())
