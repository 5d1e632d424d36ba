"""Property-based fuzzing of every operation in the service's own OpenAPI schema (schemathesis,
in process over ASGI, on SQLite): no 5xx; every status code, media type, body and declared
header is the one the schema documents; schema-valid requests are accepted and invalid ones
refused; undeclared methods are 405 with Allow. Schemathesis' coverage phase (boundary values,
unexpected methods, wrong media types) runs alongside the generated examples. A stateful test
follows the links schemathesis infers (submit, then read, cancel, plot, download)."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ensure_resource_availability,
    missing_required_header,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
    use_after_free,
)

from app.main import create_app
from tests.support import drive_job


def not_a_server_error_but_queue_full(ctx: Any, response: Any, case: Any) -> bool | None:
    """not_a_server_error, except the documented 503 queue_full of POST /jobs and POST
    /experiments (the fixture's queue limit is reached on purpose; the other two checks still
    validate that answer)."""
    submits = {("POST", "/jobs"), ("POST", "/experiments")}
    if (case.method.upper(), case.operation.path) in submits and response.status_code == 503:
        assert response.json()["error"] == "queue_full"
        assert int(response.headers["retry-after"][0]) > 0
        return None
    return not_a_server_error(ctx, response, case)


def _integral_floats(value: Any) -> bool:
    if isinstance(value, float):
        return value.is_integer()
    if isinstance(value, dict):
        return any(_integral_floats(item) for item in value.values())
    if isinstance(value, list):
        return any(_integral_floats(item) for item in value)
    return False


def positive_data_acceptance_but_integral_floats(ctx: Any, response: Any, case: Any) -> bool | None:
    """positive_data_acceptance, except for bodies with a float without fraction (4095.0) where
    the schema says integer: JSON Schema counts 4095.0 as an integer, and the job spec's strict
    models (engine.config) refuse it with a 422 naming the field. And except an experiment over
    the job limit: a product of list lengths that JSON Schema cannot bound (422 too_many_jobs);
    a notify.url the destination policy refuses; and a string the JSON guard refuses (400)."""
    if response.status_code == 422 and _integral_floats(case.body):
        messages = {problem["message"] for problem in response.json()["fields"]}
        if messages == {"Input should be a valid integer"}:
            return None
    if response.status_code == 422 and response.json()["error"] == "too_many_jobs":
        return None
    if response.status_code == 422 and _refused_destination(response.json().get("fields", [])):
        return None
    if response.status_code == 400 and response.json()["error"] == "invalid_string":
        # The documented 400 of app/json_body.py: a string with NUL or an unpaired surrogate,
        # which JSON Schema's string type allows.
        assert _unusable_text(case.body), case.body
        return None
    return positive_data_acceptance(ctx, response, case)


def _unusable_text(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value or any(0xD800 <= ord(char) <= 0xDFFF for char in value)
    if isinstance(value, dict):
        return any(_unusable_text(key) or _unusable_text(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_unusable_text(item) for item in value)
    return False


# What jobs.notifications.url_problem refuses beyond the schema's pattern: where a URL may point
# depends on the server's NOTIFY_ALLOWED_HOSTS, and a URL's parts on parsing that JSON Schema
# cannot do (tests/test_notifications.py checks each of these answers).
REFUSED_DESTINATIONS = (
    "non-public address",
    "names this machine",
    "not a valid URL",
    "must name a host",
    "port 0",
)


def _refused_destination(fields: list[dict[str, str]]) -> bool:
    return bool(fields) and all(
        problem["field"] == "notify.url"
        and any(reason in problem["message"] for reason in REFUSED_DESTINATIONS)
        for problem in fields
    )


CHECKS = [
    not_a_server_error_but_queue_full,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    positive_data_acceptance_but_integral_floats,
    missing_required_header,
    unsupported_method,
    use_after_free,
    ensure_resource_availability,
]


def seed_jobs() -> None:
    """Jobs 1-3 exist, so small ids reach real rows: 1 succeeded with metrics and checkpoints,
    2 running, 3 queued; and experiment 1, whose job 4 is running and job 5 queued."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app()) as client:
        for block in ("plain", "residual", "mobile"):
            response = client.post("/jobs", json={"block": block, "hyperparameters": {"epochs": 2}})
            assert response.status_code == 202, response.text
        experiment = {"name": "e", "blocks": ["plain", "mobile"], "hyperparameters": {"epochs": 2}}
        response = client.post("/experiments", json=experiment)
        assert response.status_code == 202, response.text
    drive_job(1, 2, finish="succeeded", checkpoint=b"checkpoint" * 100)
    drive_job(2, 2)
    drive_job(4, 1)


@pytest.fixture
def seeded_database(configure, sqlite_url: str) -> str:  # type: ignore[no-untyped-def]
    """A fresh SQLite database per operation. The app reads its settings per request, so the
    module's app (built at import, as schemathesis needs the schema then) uses this database.
    The queue limit is low enough for fuzzed submissions to reach it: 503 queue_full is a
    documented answer of POST /jobs and has to conform too. NOTIFY_SECRET is set, so that a
    spec with `notify` can be accepted."""
    configure(sqlite_url, MAX_QUEUED_JOBS="6", NOTIFY_SECRET="fuzz-notify-secret")
    seed_jobs()
    return sqlite_url


# Built at import from the real app (schemathesis's fixture-based loader does not work with
# this pytest); nothing in the schema depends on the database. The event streams are left out:
# the stream of a job that has not ended stays open (tests/test_events.py covers them).
EVENT_STREAMS = {("GET", "/jobs/{job_id}/events"), ("GET", "/experiments/{experiment_id}/events")}
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app()).exclude(tag="events")


@pytest.mark.slow
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
    ("POST", "/experiments"),
    ("GET", "/experiments"),
    ("GET", "/experiments/{experiment_id}"),
    ("GET", "/experiments/{experiment_id}/summary.csv"),
    ("GET", "/experiments/{experiment_id}/plots/{plot}.png"),
    ("POST", "/experiments/{experiment_id}/cancel"),
}


def test_the_fuzzed_schema_covers_every_route() -> None:
    """The fuzzer sees every operation, and each documented error is the JSON error body."""
    operations = {
        (result.ok().method.upper(), result.ok().path) for result in schema.get_all_operations()
    }
    assert operations == OPERATIONS
    declared = {
        (method.upper(), path)
        for path, methods in schema.raw_schema["paths"].items()
        for method in methods
    }
    assert declared == OPERATIONS | EVENT_STREAMS
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


class JobWorkflow(schema.as_state_machine()):  # type: ignore[misc]
    """Sequences of calls along the links schemathesis infers from the schema (submit, then read,
    cancel, plot or download the job), with the same checks plus the stateful ones: a resource
    that an earlier answer named is there (ensure_resource_availability)."""

    def setup(self) -> None:
        # Each scenario starts from the seeded jobs: Hypothesis replays scenarios, and a queue
        # filled by an earlier one would change which calls succeed.
        from sqlalchemy import delete

        from jobs.db import session_scope
        from jobs.tables import Checkpoint, EpochMetric, Experiment, Job

        with session_scope() as session:
            for table in (Checkpoint, EpochMetric, Job, Experiment):
                session.execute(delete(table))
        seed_jobs()

    def validate_response(
        self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any
    ) -> None:
        case.validate_response(
            response, checks=CHECKS, transport_kwargs=kwargs or None, recorder=self.recorder
        )


@pytest.mark.slow
def test_job_workflows_conform_to_the_schema(seeded_database: str) -> None:
    JobWorkflow.run(
        settings=settings(
            max_examples=12,
            stateful_step_count=6,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )
