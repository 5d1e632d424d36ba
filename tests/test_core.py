"""The job core's own rules: the layering (adapters on the core, never the reverse), the one
dispatch order behind both claims and queue positions, a recorded epoch that says whether to go
on, and the statuses and failure reasons that every adapter takes from the core's enums."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from jobs import dispatch, lifecycle, submission
from jobs.db import session_scope
from jobs.lifecycle import GO_ON, StopReason, claim_job, claim_next_job, record_epoch
from jobs.settings import get_settings
from jobs.specs import JobCreate
from jobs.tables import FailureReason, JobStatus
from tests.support import epoch_row

ROOT = Path(__file__).resolve().parent.parent
SPEC = JobCreate(block="mobile", hyperparameters={"epochs": 3}, train_samples=10)


def imported_packages(package: str) -> dict[str, set[str]]:
    """{module file: top-level packages it imports} for every module of a package."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_adapters_depend_on_the_core_never_the_reverse() -> None:
    for module, names in imported_packages("jobs").items():
        assert not names & {"app", "worker", "cli", "fastapi", "starlette", "torch"}, module
    for module, names in imported_packages("worker").items():
        assert "app" not in names, module
    for module, names in imported_packages("app").items():
        assert "worker" not in names, module


def test_the_http_adapter_writes_no_row_and_holds_no_queries() -> None:
    """Routes parse, call the core and render: app/ builds no SQL statement and calls no
    session method that reads or writes rows (it only opens the core's sessions)."""
    for path in sorted((ROOT / "app").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
                # Type hints and the exceptions that mean "database unavailable" only.
                assert node.module in ("sqlalchemy.orm", "sqlalchemy.exc"), path
                if node.module == "sqlalchemy.orm":
                    assert [alias.name for alias in node.names] == ["Session"], path
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "session"
            ):
                assert node.func.attr not in SESSION_ROW_METHODS, (path, node.lineno)


SESSION_ROW_METHODS = {"add", "add_all", "delete", "execute", "get", "merge", "flush", "scalar"}


@pytest.fixture
def db(configure, database_url: str) -> str:  # type: ignore[no-untyped-def]
    configure(database_url)
    return database_url


def new_jobs(count: int) -> list[int]:
    with session_scope() as session:
        return [
            submission.create_job(session, SPEC, settings=get_settings()).job.id
            for _ in range(count)
        ]


def test_queue_positions_follow_the_order_in_which_jobs_are_claimed(db: str) -> None:
    ids = new_jobs(5)
    with session_scope() as session:
        lifecycle.cancel_job(session, ids[1])  # leaves the queue
        claim_job(session, ids[3], worker="early", lease_seconds=30)  # taken out of turn
    with session_scope(write=False) as session:
        positions = dispatch.queue_positions(session, ids)
        assert dispatch.queue_position(session, ids[1]) is None
    assert positions == {ids[0]: 1, ids[2]: 2, ids[4]: 3}
    claimed = []
    for _ in range(4):
        with session_scope() as session:
            claim = claim_next_job(session, worker="w", lease_seconds=30)
            claimed.append(None if claim is None else claim.job_id)
    assert claimed == sorted(positions, key=positions.__getitem__) + [None]


def test_a_recorded_epoch_says_whether_the_attempt_goes_on(db: str) -> None:
    (job_id,) = new_jobs(1)
    with session_scope() as session:
        claim = claim_job(session, job_id, worker="a", lease_seconds=30)
    assert claim is not None
    with session_scope() as session:
        decision = record_epoch(session, claim, epoch_row(1, 0.3), lease_seconds=30)
    assert decision == GO_ON and decision.go_on
    with session_scope() as session:
        lifecycle.cancel_job(session, job_id)
    with session_scope() as session:
        decision = record_epoch(session, claim, epoch_row(2, 0.4), lease_seconds=30)
    assert not decision.go_on and decision.stop == StopReason.CANCELLED


def test_the_api_takes_statuses_and_failure_reasons_from_the_core(client) -> None:  # type: ignore[no-untyped-def]
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["JobStatus"]["enum"] == [status.value for status in JobStatus]
    assert schemas["FailureReason"]["enum"] == [reason.value for reason in FailureReason]
    job = client.post("/jobs", json={"block": "mobile", "hyperparameters": {"epochs": 1}}).json()
    assert (job["status"], job["ended"]) == ("queued", False)
    cancelled = client.post(f"/jobs/{job['id']}/cancel").json()
    assert (cancelled["status"], cancelled["ended"]) == ("cancelled", True)
    experiment = client.post(
        "/experiments", json={"name": "e", "blocks": ["mobile"], "hyperparameters": {"epochs": 1}}
    ).json()
    assert set(experiment["status_counts"]) == {status.value for status in JobStatus}
    assert experiment["ended"] is False and experiment["jobs"][0]["ended"] is False


def test_the_readme_documents_every_failure_reason_from_the_enum() -> None:
    readme = (ROOT / "README.md").read_text()
    for reason in FailureReason:
        assert f"| `{reason}` | {reason.description} |" in readme, reason
    assert "invalid_spec" not in readme
