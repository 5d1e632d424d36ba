"""The throughput benchmark: alternating rounds, per-round ratios, machine-readable results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.train_throughput import main


@pytest.mark.slow
def test_benchmark_times_every_variant_in_every_round(tmp_path: Path) -> None:
    results_path = tmp_path / "results.json"
    main(
        [
            "--device", "cpu", "--blocks", "mobile", "--precision", "fp32,bf16",
            "--compile", "off", "--images", "20", "--batch-size", "8", "--rounds", "2",
            "--json", str(results_path),
        ]
    )  # fmt: skip
    results = json.loads(results_path.read_text())
    assert results["environment"]["device"] == "cpu" and results["environment"]["cpu"]
    rows = results["rows"]
    assert [(row["block"], row["precision"], row["compile"]) for row in rows] == [
        ("mobile", "fp32", False),
        ("mobile", "bf16", False),
    ]
    for row in rows:
        assert row["rounds"] == 2 and row["images_per_round"] == 16  # whole batches only
        assert len(row["naive_rounds"]) == len(row["engine_rounds"]) == 2
        assert row["ratio_min"] <= row["ratio_median"] <= row["ratio_max"]
        ratios = [
            naive["wall_seconds"] / engine["wall_seconds"]
            for naive, engine in zip(row["naive_rounds"], row["engine_rounds"], strict=True)
        ]
        assert min(ratios) == pytest.approx(row["ratio_min"])
        assert row["engine_images_per_second"] > 0 and row["naive_images_per_second"] > 0
        assert all(timing["cpu_seconds"] > 0 for timing in row["engine_rounds"])
        assert row["first_step_seconds"] is None  # compile off
    # Both variants were paired with the same naive timing in each round.
    assert rows[0]["naive_rounds"] == rows[1]["naive_rounds"]


@pytest.mark.slow
def test_concurrency_mode_times_jobs_together_and_one_after_the_other(tmp_path: Path) -> None:
    import torch

    from worker.cpus import available_cpus, threads_per_job

    results_path = tmp_path / "results.json"
    main(
        [
            "--device", "cpu", "--blocks", "mobile", "--concurrent-jobs", "2",
            "--images", "12", "--batch-size", "8", "--rounds", "2", "--json", str(results_path),
        ]
    )  # fmt: skip
    results = json.loads(results_path.read_text())
    (row,) = results["concurrency"]
    cpus = available_cpus()
    assert (row["block"], row["jobs"], row["images_per_job"], row["rounds"]) == ("mobile", 2, 8, 2)
    assert row["usable_cpus"] == cpus
    modes = row["modes"]
    # The jobs ran with the threads each mode gives them, as their training threads reported.
    expected = {
        "one after the other": threads_per_job(cpus, 1),
        "together, per-job threads": threads_per_job(cpus, 2),
        "together, thread per core": torch.get_num_threads(),
    }
    assert {mode: entry["threads_used"] for mode, entry in modes.items()} == {
        mode: [count] for mode, count in expected.items()
    }
    sequential = [timing["wall_seconds"] for timing in modes["one after the other"]["rounds"]]
    for mode in ("together, per-job threads", "together, thread per core"):
        entry = modes[mode]
        assert len(entry["rounds"]) == 2
        ratios = [s / t["wall_seconds"] for s, t in zip(sequential, entry["rounds"], strict=True)]
        assert entry["ratio_min"] == pytest.approx(min(ratios))
        assert entry["ratio_min"] <= entry["ratio_median"] <= entry["ratio_max"]
    for entry in modes.values():
        assert all(t["wall_seconds"] > 0 and t["cpu_seconds"] > 0 for t in entry["rounds"])
