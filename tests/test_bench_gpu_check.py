"""The GPU check's bookkeeping: overlapping jobs, a step that fails, the Markdown summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.gpu_check import TINY, Report, _overlap_seconds, run_step


def _job(start: str, end: str) -> dict[str, str]:
    return {
        "started_at": f"2026-01-01T00:00:{start}+00:00",
        "finished_at": f"2026-01-01T00:00:{end}+00:00",
    }


def test_overlap_counts_only_time_with_two_or_more_jobs_running() -> None:
    assert _overlap_seconds([_job("00", "10")]) == 0
    assert _overlap_seconds([_job("00", "10"), _job("10", "20")]) == 0  # one after the other
    assert _overlap_seconds([_job("00", "10"), _job("04", "20"), _job("06", "08")]) == 6
    assert _overlap_seconds([_job("00", "10"), {"started_at": None, "finished_at": None}]) == 0


def test_a_failing_step_is_recorded_and_the_next_still_runs(tmp_path: Path) -> None:
    report = Report(tmp_path, TINY)

    def broken(result: dict[str, Any]) -> None:
        result["service_epoch_seconds"] = [1.5]
        raise RuntimeError("the service exited")

    def fine(result: dict[str, Any]) -> None:
        result["mode"] = "N worker processes"
        result["runs"] = [{"jobs": 2, "statuses": ["succeeded"] * 2, "wall_seconds": 3.0}]

    run_step(report, "service", 10, broken)
    run_step(report, "concurrency", 10, fine)
    saved = json.loads((tmp_path / "gpu-check.json").read_text())
    service, concurrency = saved["steps"]["service"], saved["steps"]["concurrency"]
    assert service["status"] == "failed" and "the service exited" in service["error"]
    assert service["service_epoch_seconds"] == [1.5]  # kept what it had
    assert concurrency["status"] == "ok"
    summary = (tmp_path / "gpu-check.md").read_text()
    assert "| 1 | 1.50 | - |" in summary
    assert "| 2 | 2/2 | 3.0 |" in summary and "RuntimeError: the service exited" in summary
