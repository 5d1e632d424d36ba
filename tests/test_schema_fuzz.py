"""Property-based fuzzing of every operation in the service's own OpenAPI schema (schemathesis,
in process over ASGI, on SQLite), with every schemathesis check on: no 5xx; every status code,
media type, body, declared header and streamed event is the one the schema documents;
schema-valid requests are accepted and invalid ones refused; undeclared methods are 405 with
Allow. Every phase runs: the schema's examples, the coverage phase (boundary values, unexpected
methods, wrong media types), generated examples, and a stateful test that follows the links
schemathesis infers (submit, then read, cancel, plot, download). The event streams are fuzzed on
a database where every job has ended, so that each stream ends; tests/test_schema_agreement.py
checks the events of live streams."""

from __future__ import annotations

import math
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import CHECKS as REGISTERED_CHECKS
from schemathesis.checks import load_all_checks, not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app.main import create_app
from jobs.specs import MAX_EXPERIMENT_JOBS, REPORT_BLOCKS, REPORT_PRESET
from tests.support import drive_job


def not_a_server_error_but_queue_full(ctx: Any, response: Any, case: Any) -> bool | None:
    """not_a_server_error, except the documented 503 queue_full of POST /jobs and POST
    /experiments (the stateful test reaches its queue limit on purpose; the other checks still
    validate that answer)."""
    submits = {("POST", "/jobs"), ("POST", "/experiments")}
    if (case.method.upper(), case.operation.path) in submits and response.status_code == 503:
        assert response.json()["error"] == "queue_full"
        assert int(response.headers["retry-after"][0]) > 0
        return None
    return not_a_server_error(ctx, response, case)


def experiment_job_count(spec: dict[str, Any]) -> int:
    """How many jobs an experiment spec makes: blocks x grid combinations x seeds."""
    blocks = spec.get("blocks")
    if blocks is None and spec.get("preset") == REPORT_PRESET:
        blocks = REPORT_BLOCKS
    combinations = math.prod(len(values) for values in (spec.get("grid") or {}).values())
    return len(blocks or ()) * combinations * len(spec.get("seeds") or [None])


def search_rules_broken(spec: dict[str, Any]) -> set[str]:
    """The fields of a search that break the rules JSON Schema cannot state (SearchCreate's
    x-search-rules: they compare two values of the request), as the 422 names them. Nothing
    for a body the schema refuses anyway (its shape is not a search's)."""
    try:
        return _search_rules_broken(spec)
    except (AttributeError, IndexError, KeyError, TypeError):
        return set()


def _search_rules_broken(spec: dict[str, Any]) -> set[str]:
    search = spec.get("search")
    if not isinstance(search, dict):
        return set()
    broken = set()
    space = search.get("space") or {}
    for name, dimension in space.items():
        for kind, values in dimension.items():
            if kind != "choice" and values[0] > values[1]:
                broken.add(f"search.space.{name}.{kind}")
    for index, block in enumerate((space.get("block") or {}).get("choice") or []):
        if block not in (spec.get("blocks") or []):
            broken.add(f"search.space.block.choice[{index}]")
    if search.get("sampler") == "grid" and search.get("max_trials") is not None:
        blocks = len(spec.get("blocks") or []) if "block" not in space else 1
        points = math.prod(len(dimension["choice"]) for dimension in space.values()) * blocks
        if search["max_trials"] > points:
            broken.add("search.max_trials")
    if search.get("startup_trials") is not None and search.get("sampler", "tpe") != "tpe":
        broken.add("search.startup_trials")
    pruner = search.get("pruner") or {}
    epochs = (spec.get("hyperparameters") or {}).get("epochs", 100)
    if pruner.get("type", "asha") != "none" and pruner.get("min_epochs", 1) >= epochs:
        broken.add("search.pruner.min_epochs")
    return broken


def positive_data_acceptance_but_job_limit(ctx: Any, response: Any, case: Any) -> bool | None:
    """positive_data_acceptance, except three answers JSON Schema cannot express: an experiment
    over the job limit (a product of list lengths; the schema states it as ExperimentCreate's
    x-max-jobs and documents the 422 too_many_jobs; the request must really be over it); a page
    cursor, which is opaque (any string of the schema's alphabet, but only the ones the service
    handed out are accepted: 422 naming `cursor`); and a body over MAX_BODY_BYTES, which lists
    of up to 1,000 grid values can make (413, documented). And a notify.url the destination
    policy refuses, which depends on the server's NOTIFY_ALLOWED_HOSTS; and a search that
    breaks a rule of x-search-rules: each field the 422 names must."""
    is_submission = (case.method.upper(), case.operation.path) == ("POST", "/experiments")
    if (
        is_submission
        and response.status_code == 422
        and response.json()["error"] == "too_many_jobs"
    ):
        components = case.operation.schema.raw_schema["components"]["schemas"]
        assert experiment_job_count(case.body) > components["ExperimentCreate"]["x-max-jobs"]
        return None
    fields = response.json().get("fields") or [] if response.status_code == 422 else []
    if [item["field"] for item in fields] == ["cursor"] or _refused_destination(fields):
        return None
    if response.status_code == 413 and response.json()["error"] == "body_too_large":
        return None
    if is_submission and response.status_code == 422 and isinstance(case.body, dict):
        named = {item["field"] for item in response.json().get("fields") or []}
        if named and named <= search_rules_broken(case.body):
            return None
    if _refused_by_the_experiments_state(case, response):
        return None
    return positive_data_acceptance(ctx, response, case)


def _refused_by_the_experiments_state(case: Any, response: Any) -> bool:
    """A search's max_trials below the trials it made or above its grid's points, or of a grid
    experiment (ExperimentUpdate's x-rules), and resuming a grid experiment: 422s that depend on
    the experiment, not on the request's shape."""
    if response.status_code != 422:
        return False
    named = {item["field"] for item in response.json().get("fields") or []}
    operation = (case.method.upper(), case.operation.path)
    if operation == ("PATCH", "/experiments/{experiment_id}"):
        return named == {"max_trials"}
    return operation == ("POST", "/experiments/{experiment_id}/resume") and named == {"experiment"}


# What jobs.notifications.url_problem refuses beyond the schema's pattern: where a URL may point
# depends on the server's NOTIFY_ALLOWED_HOSTS, and a URL's parts on parsing that JSON Schema
# cannot do (tests/test_notifications.py checks each of these answers).
REFUSED_DESTINATIONS = (
    "non-public address",
    "names this machine",
    "not a valid URL",
    "must name a host",
    "port 0",
    "must not percent-encode the host",
)


def _refused_destination(fields: list[dict[str, str]]) -> bool:
    return bool(fields) and all(
        problem["field"] == "notify.url"
        and any(reason in problem["message"] for reason in REFUSED_DESTINATIONS)
        for problem in fields
    )


# Every check schemathesis has, two of them narrowed to the documented answers above.
load_all_checks()
NARROWED = {
    not_a_server_error: not_a_server_error_but_queue_full,
    positive_data_acceptance: positive_data_acceptance_but_job_limit,
}
CHECKS = [NARROWED.get(check, check) for check in REGISTERED_CHECKS.get_all()]


SEEDED_JOBS = 5
SEEDED_EXPERIMENTS = 1


def submit_jobs(*, cancel: tuple[int, ...] = ()) -> None:
    """Jobs 1-3 (plain, residual, mobile) and experiment 1 (jobs 4 and 5), all queued, then
    the `cancel` ones cancelled."""
    from fastapi.testclient import TestClient

    with TestClient(create_app()) as client:
        for block in ("plain", "residual", "mobile"):
            response = client.post("/jobs", json={"block": block, "hyperparameters": {"epochs": 2}})
            assert response.status_code == 202, response.text
        experiment = {"name": "e", "blocks": ["plain", "mobile"], "hyperparameters": {"epochs": 2}}
        response = client.post("/experiments", json=experiment)
        assert response.status_code == 202, response.text
        for job_id in cancel:
            assert client.post(f"/jobs/{job_id}/cancel").status_code == 200


def seed_jobs() -> None:
    """Jobs 1-3 exist, so small ids reach real rows: 1 succeeded with metrics and checkpoints,
    2 running, 3 queued; and experiment 1, whose job 4 is running and job 5 queued."""
    submit_jobs()
    drive_job(1, 2, finish="succeeded", checkpoint=b"checkpoint" * 100)
    drive_job(2, 2)
    drive_job(4, 1)


def seed_ended_jobs() -> None:
    """The same jobs, every one ended, so that their event streams end: 1 succeeded and 2
    failed (with epochs), 3 cancelled; experiment 1's job 4 succeeded and job 5 cancelled."""
    submit_jobs(cancel=(3, 5))
    drive_job(1, 2, finish="succeeded", checkpoint=b"checkpoint" * 100)
    drive_job(2, 1, finish="failed")
    drive_job(4, 1, finish="succeeded")


def forget_submissions() -> None:
    """Remove every job and experiment but the seeded ones (behind the service's back: its
    kept status counts are made again from the rows)."""
    from sqlalchemy import delete

    from jobs.db import session_scope
    from jobs.status_counts import recount
    from jobs.tables import Experiment, Job

    with session_scope() as session:
        session.execute(delete(Job).where(Job.id > SEEDED_JOBS))
        session.execute(delete(Experiment).where(Experiment.id > SEEDED_EXPERIMENTS))
        recount(session)


@pytest.fixture
def seeded_database(configure, sqlite_url: str) -> str:
    """A fresh SQLite database per operation. The app reads its settings per request, so the
    module's app (built at import, as schemathesis needs the schema then) uses this database.
    The queue has room for the largest experiment, so that a valid submission is accepted;
    NOTIFY_SECRET is set, so that a spec with `notify` can be accepted."""
    configure(
        sqlite_url,
        MAX_QUEUED_JOBS=str(MAX_EXPERIMENT_JOBS + SEEDED_JOBS),
        NOTIFY_SECRET="fuzz-notify-secret",
    )
    seed_jobs()
    return sqlite_url


@pytest.fixture
def crowded_database(configure, sqlite_url: str) -> str:
    """The seeded database with a queue limit that a few submissions reach: 503 queue_full is
    a documented answer of POST /jobs and POST /experiments and has to conform too."""
    configure(sqlite_url, MAX_QUEUED_JOBS="6", NOTIFY_SECRET="fuzz-notify-secret")
    seed_jobs()
    return sqlite_url


@pytest.fixture
def ended_database(configure, sqlite_url: str) -> str:
    """A fresh SQLite database per operation in which every job has ended."""
    configure(sqlite_url)
    seed_ended_jobs()
    return sqlite_url


# Every phase, stated rather than left to the defaults: the schema's examples and the coverage
# phase run in Hypothesis' explicit phase, generated examples in its generate phase.
CONFIG = SchemathesisConfig.from_dict(
    {
        "phases": {
            name: {"enabled": True} for name in ("examples", "coverage", "fuzzing", "stateful")
        }
    }
)
PHASES = [Phase.explicit, Phase.generate]
# Built at import from the real app (schemathesis's fixture-based loader does not work with
# this pytest); nothing in the schema depends on the database.
EVENT_STREAMS = {("GET", "/jobs/{job_id}/events"), ("GET", "/experiments/{experiment_id}/events")}
full_schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(), config=CONFIG)
schema = full_schema.exclude(tag="events")
# A stream of a job that has not ended stays open: the streams are fuzzed on ended jobs only.
event_schema = full_schema.include(tag="events")


FUZZ = settings(
    max_examples=50,
    derandomize=True,
    deadline=None,
    database=None,
    phases=PHASES,
    suppress_health_check=list(HealthCheck),
)


@pytest.mark.slow
@schema.parametrize()
@FUZZ
def test_every_operation_conforms_to_its_schema(case: Any, seeded_database: str) -> None:
    if case.method.upper() == "POST" and case.operation.path in ("/jobs", "/experiments"):
        forget_submissions()  # each submission meets the seeded queue, not earlier examples'
    case.call_and_validate(checks=CHECKS)


@pytest.mark.slow
@event_schema.parametrize()
@settings(FUZZ, max_examples=100)  # mostly ids that name nothing; a stream ends at once
def test_every_event_stream_conforms_to_its_schema(case: Any, ended_database: str) -> None:
    """Each streamed event too: schemathesis checks it against the event of that name in the
    response's itemSchema, its JSON data against the component the event names."""
    case.call_and_validate(checks=CHECKS)


OPERATIONS = {
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/architectures"),
    ("POST", "/jobs"),
    ("GET", "/jobs"),
    ("GET", "/jobs/{job_id}"),
    ("PATCH", "/jobs/{job_id}"),
    ("DELETE", "/jobs/{job_id}"),
    ("GET", "/jobs/{job_id}/metrics"),
    ("POST", "/jobs/{job_id}/cancel"),
    ("GET", "/jobs/{job_id}/plots/{plot_name}"),
    ("GET", "/plots/compare.png"),
    ("GET", "/jobs/{job_id}/checkpoints"),
    ("GET", "/jobs/{job_id}/checkpoints/{name}"),
    ("POST", "/experiments"),
    ("GET", "/experiments"),
    ("GET", "/experiments/{experiment_id}"),
    ("PATCH", "/experiments/{experiment_id}"),
    ("DELETE", "/experiments/{experiment_id}"),
    ("GET", "/experiments/{experiment_id}/metrics"),
    ("GET", "/experiments/{experiment_id}/summary.csv"),
    ("GET", "/experiments/{experiment_id}/plots/{plot}.png"),
    ("POST", "/experiments/{experiment_id}/cancel"),
    ("POST", "/experiments/{experiment_id}/resume"),
    ("GET", "/me"),
    ("POST", "/users"),
    ("GET", "/users"),
    ("GET", "/users/{name}"),
    ("PATCH", "/users/{name}"),
    ("POST", "/users/{name}/tokens"),
    ("GET", "/users/{name}/tokens"),
    ("DELETE", "/users/{name}/tokens/{token_id}"),
    ("DELETE", "/users/{name}/tokens"),
    ("GET", "/audit"),
}


def test_the_fuzzed_schema_covers_every_route() -> None:
    """The fuzzer sees every operation with every check and phase on, and each documented
    error is the JSON error body."""
    operations = {
        (result.ok().method.upper(), result.ok().path) for result in schema.get_all_operations()
    }
    assert operations == OPERATIONS
    streams = {
        (result.ok().method.upper(), result.ok().path)
        for result in event_schema.get_all_operations()
    }
    assert streams == EVENT_STREAMS
    assert [check.__name__ for check in CHECKS] == [
        NARROWED.get(check, check).__name__ for check in REGISTERED_CHECKS.get_all()
    ]
    assert len(CHECKS) == len(REGISTERED_CHECKS.get_all_names()) >= 14
    for result in full_schema.get_all_operations():
        phases = full_schema.config.phases_for(operation=result.ok())
        assert phases.examples.enabled and phases.coverage.enabled
        assert phases.fuzzing.enabled and phases.stateful.enabled
    assert Phase.explicit in PHASES and Phase.generate in PHASES
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


class JobWorkflow(schema.as_state_machine()):
    """Sequences of calls along the links schemathesis infers from the schema (submit, then read,
    cancel, plot or download the job), with the same checks plus the stateful ones: a resource
    that an earlier answer named is there (ensure_resource_availability)."""

    def setup(self) -> None:
        # Each scenario starts from the seeded jobs: Hypothesis replays scenarios, and a queue
        # filled by an earlier one would change which calls succeed.
        from sqlalchemy import delete

        from jobs.db import session_scope
        from jobs.status_counts import recount
        from jobs.tables import Checkpoint, EpochMetric, Experiment, Job

        with session_scope() as session:
            for table in (Checkpoint, EpochMetric, Job, Experiment):
                session.execute(delete(table))
            recount(session)  # rows deleted behind the service's back
        seed_jobs()

    def validate_response(
        self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any
    ) -> None:
        case.validate_response(
            response, checks=CHECKS, transport_kwargs=kwargs or None, recorder=self.recorder
        )


@pytest.mark.slow
def test_job_workflows_conform_to_the_schema(crowded_database: str) -> None:
    JobWorkflow.run(
        settings=settings(
            max_examples=40,
            stateful_step_count=8,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )
