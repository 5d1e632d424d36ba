"""A small run of the scale benchmark: it builds its database in bulk, serves it with the real
API and times every route it promises to."""

from __future__ import annotations

import json
from pathlib import Path

from bench.scale import main


def test_scale_benchmark_builds_a_small_database_and_times_every_route(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    assert main(["--jobs", "30", "--epochs", "5", "--requests", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["jobs"] == 30 and result["epoch_rows"] > 0
    assert "GET /jobs (last page)" in result["latency"] and "POST /jobs" in result["latency"]
    assert "GET /metrics (Prometheus)" in result["latency"]
    assert len(result["latency"]) == 16
    assert all(row["p95_ms"] >= row["p50_ms"] > 0 for row in result["latency"].values())
