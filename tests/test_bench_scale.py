"""A small run of the scale benchmark: it builds its database in bulk on the hostile shapes
(experiments of many jobs, a tenth of the jobs queued, no statistics) with the service's kept
figures, serves it with the real API and times every route it promises to, with CPU time and
the largest answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from bench.scale import Shape, build, main
from jobs.migrations import upgrade
from jobs.tables import ALL_JOBS, Job, JobCount, JobTag


@pytest.mark.slow
def test_scale_benchmark_builds_a_small_database_and_times_every_route(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    arguments = ["--jobs", "60", "--epochs", "5", "--requests", "2", "--experiment-size", "20"]
    assert main([*arguments, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["jobs"] == 60 and result["epoch_rows"] > 0 and not result["analyzed"]
    latency = result["latency"]
    for route in (
        "GET /jobs (last page)",
        "GET /jobs?status=running&block=plain&sort=best",
        "GET /jobs?experiment_id&tag",
        "GET /experiments/{id}?sort=best desc (page 5)",
        "GET /experiments/{id}/metrics?format=columns",
        "GET /experiments/{id}/summary.csv",
        "GET /experiments/{id}/events (history)",
        "GET /experiments/{id}/events (from last_event_id)",
        "GET /metrics (Prometheus)",
        "POST /jobs",
        "POST /experiments (10 jobs)",
    ):
        assert route in latency, route
    assert len(latency) == 3 + 12 * 2 + 20
    for row in latency.values():
        assert row["p95_ms"] >= row["p50_ms"] > 0 and row["max_bytes"] > 0
        assert row["api_cpu_ms"] >= 0 and row["db_cpu_ms"] == 0  # SQLite has no server


def test_the_built_database_has_the_hostile_shapes_and_the_kept_figures(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    upgrade(url)
    ids = build(url, Shape(2000, 3, experiment_size=400))
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            sizes = connection.execute(
                select(func.count())
                .where(Job.experiment_id.is_not(None))
                .group_by(Job.experiment_id)
            ).scalars()
            assert set(sizes) == {400}
            queued = connection.execute(
                select(JobCount.jobs).where(
                    JobCount.experiment_id == ALL_JOBS, JobCount.status == "queued"
                )
            ).scalar_one()
            assert queued == 200
            tagged = connection.execute(select(func.count()).select_from(JobTag)).scalar_one()
            assert tagged == 200
            times = connection.execute(
                select(func.count()).where(
                    Job.epochs_recorded != Job.epochs_done,
                )
            ).scalar_one()
            assert times == 0
            statistics = connection.exec_driver_sql(
                "SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'"
            ).scalar_one()
            assert statistics == 0
    finally:
        engine.dispose()
    assert ids["queued_experiment"] != ids["experiment"]
