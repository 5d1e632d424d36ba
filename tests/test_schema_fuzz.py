"""Property-based fuzzing of every operation in the service's own OpenAPI schema (schemathesis,
in process over ASGI, on SQLite): no 5xx, and every status code and body the API answers with
is the one its schema documents."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app


def not_a_server_error_but_queue_full(ctx: Any, response: Any, case: Any) -> bool | None:
    """not_a_server_error, except POST /jobs's documented 503 queue_full (the fixture's queue
    limit is reached on purpose; the other two checks still validate that answer)."""
    if (case.method.upper(), case.operation.path, response.status_code) == ("POST", "/jobs", 503):
        assert response.json()["error"] == "queue_full"
        assert int(response.headers["retry-after"][0]) > 0
        return None
    return not_a_server_error(ctx, response, case)


CHECKS = [not_a_server_error_but_queue_full, status_code_conformance, response_schema_conformance]


def seed_jobs() -> None:
    """Jobs 1-3 exist, so small ids reach real rows: 1 succeeded with metrics and checkpoints,
    2 running, 3 queued."""
    from fastapi.testclient import TestClient

    from app.config import get_settings
    from app.db import session_scope
    from app.main import create_app
    from app.services.lifecycle import CheckpointRecord, claim_job, finish_job, record_epoch

    with TestClient(create_app()) as client:
        for block in ("plain", "residual", "mobile"):
            response = client.post("/jobs", json={"block": block, "hyperparameters": {"epochs": 2}})
            assert response.status_code == 202, response.text
    root = get_settings().resolved_artifact_dir
    payload = b"checkpoint" * 100
    path = root / "jobs" / "1" / "attempt-1" / "latest.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    records = [
        CheckpointRecord(
            name, 2, len(payload), hashlib.sha256(payload).hexdigest(), str(path.relative_to(root))
        )
        for name in ("latest", "final")
    ]
    history = [
        {
            "epoch": e,
            "train_loss": 2.0 / e,
            "train_accuracy": 0.2 * e,
            "test_loss": 2.0,
            "test_accuracy": 0.1 * e,
            "learning_rate": 0.01,
            "seconds": 1.0,
            "images_per_second": 50.0,
        }
        for e in (1, 2)
    ]
    for job_id, finish in ((1, "succeeded"), (2, None)):
        with session_scope() as session:
            claim = claim_job(session, job_id, worker="fuzz", lease_seconds=600)
        assert claim is not None
        with session_scope() as session:
            record_epoch(session, claim, history, records if finish else [], lease_seconds=600)
        if finish:
            with session_scope() as session:
                assert finish_job(session, claim, finish)


@pytest.fixture
def seeded_database(configure, sqlite_url: str) -> str:  # type: ignore[no-untyped-def]
    """A fresh SQLite database per operation. The app reads its settings per request, so the
    module's app (built at import, as schemathesis needs the schema then) uses this database.
    The queue limit is low enough for fuzzed submissions to reach it: 503 queue_full is a
    documented answer of POST /jobs and has to conform too."""
    configure(sqlite_url, MAX_QUEUED_JOBS="6")
    seed_jobs()
    return sqlite_url


# Built at import from the real app (schemathesis's fixture-based loader does not work with
# this pytest); nothing in the schema depends on the database.
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app())


@schema.parametrize()
@settings(
    max_examples=15,
    derandomize=True,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_conforms_to_its_schema(case: Any, seeded_database: str) -> None:
    case.call_and_validate(checks=CHECKS)


OPERATIONS = {
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/architectures"),
    ("POST", "/jobs"),
    ("GET", "/jobs"),
    ("GET", "/jobs/{job_id}"),
    ("GET", "/jobs/{job_id}/metrics"),
    ("POST", "/jobs/{job_id}/cancel"),
    ("GET", "/jobs/{job_id}/plots/{plot_name}"),
    ("GET", "/plots/compare.png"),
    ("GET", "/jobs/{job_id}/checkpoints"),
    ("GET", "/jobs/{job_id}/checkpoints/{name}"),
}


def test_the_fuzzed_schema_covers_every_route() -> None:
    """The fuzzer sees every operation, and each documented error is the JSON error body."""
    operations = {
        (result.ok().method.upper(), result.ok().path) for result in schema.get_all_operations()
    }
    assert operations == OPERATIONS
    for path, methods in schema.raw_schema["paths"].items():
        for method, operation in methods.items():
            for status, response in operation["responses"].items():
                if status.startswith("4") or (status == "503" and path != "/ready"):
                    content = response["content"]["application/json"]["schema"]
                    assert content == {"$ref": "#/components/schemas/ErrorRead"}, (
                        method,
                        path,
                        status,
                    )
