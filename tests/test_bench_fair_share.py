"""A small run of the fair-share benchmark on both databases: every figure it promises comes
out, and the newcomer's one job waits for one job of each other person."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.fair_share import main
from tests.conftest import POSTGRES_ADMIN_URL


@pytest.mark.slow
def test_fair_share_benchmark_times_claims_positions_and_a_submission(tmp_path: Path) -> None:
    out = tmp_path / "fair-share.json"
    argv = ["--queued", "120", "--experiment-jobs", "40", "--repeats", "3"]
    assert main([*argv, "--postgres-url", POSTGRES_ADMIN_URL, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result) == {"sqlite", "postgresql"}
    for figures in result.values():
        assert figures["queued"] == 120
        # alice, bob and carol each have a job in the turn dave joins.
        assert figures["dave_position"] == 4
        assert figures["alice_was_running"] is True
        for name in (
            "claim_ms",
            "claim_alice_capped_ms",
            "position_deepest_ms",
            "reason_deepest_ms",
            "page_positions_ms",
            "submit_lone_ms",
        ):
            assert 0 < figures[name]["median"] <= figures[name]["p95"]
