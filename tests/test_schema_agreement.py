"""The OpenAPI schema and the server agree on what the schema fuzzer (tests/test_schema_fuzz.py)
found them disagreeing about, one fast test each: integers written 128.0, the experiment job
limit that JSON Schema cannot state, the form of Last-Event-ID, and every event an event stream
sends."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import jsonschema_rs
import pytest

from jobs.db import is_postgresql, session_scope
from jobs.lifecycle import claim_job, finish_job, record_epoch, release_job
from jobs.settings import get_settings
from jobs.specs import MAX_EXPERIMENT_JOBS
from tests.support import add_experiment, drive_job, epoch_row


def openapi(client: Any) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    schema: dict[str, Any] = response.json()
    return schema


def component_validator(schema: dict[str, Any], name: str) -> jsonschema_rs.Validator:
    """A validator of one component of the schema, its references resolved in the schema."""
    root = {"$ref": f"#/components/schemas/{name}", "components": schema["components"]}
    return jsonschema_rs.Draft202012Validator(root, validate_formats=True)


def test_an_integer_written_with_a_zero_fraction_is_an_integer(client: Any) -> None:
    """JSON Schema's "integer" includes 258.0; the server took it for a float and answered 422."""
    spec = {
        "block": "plain",
        "train_samples": 300.0,
        "test_samples": 1131.0,
        "hyperparameters": {"batch_size": 258.0, "epochs": 2.0, "step_size": 190.0, "seed": 32.0},
    }
    assert component_validator(openapi(client), "JobCreate").is_valid(spec)
    response = client.post("/jobs", json=spec)
    assert response.status_code == 202, response.text
    stored = response.json()["spec"]
    assert stored["hyperparameters"]["batch_size"] == 258
    assert isinstance(stored["hyperparameters"]["batch_size"], int)
    assert (stored["train_samples"], stored["test_samples"]) == (300, 1131)
    assert response.json()["epochs_total"] == 2

    # The same spec written with integers is the same request (idempotent replay).
    again = {**spec, "hyperparameters": {**spec["hyperparameters"], "seed": 32}}
    first = client.post("/jobs", json=spec, headers={"Idempotency-Key": "k1"})
    replay = client.post("/jobs", json=again, headers={"Idempotency-Key": "k1"})
    assert replay.status_code == 202 and replay.json()["id"] == first.json()["id"]

    experiment = {
        "name": "integral",
        "blocks": ["plain"],
        "hyperparameters": {"epochs": 2.0},
        "grid": {"batch_size": [32.0, 64]},
        "seeds": [0.0, 1.0],
        "train_samples": 10.0,
    }
    response = client.post("/experiments", json=experiment)
    assert response.status_code == 202, response.text
    assert response.json()["spec"]["seeds"] == [0, 1]
    assert response.json()["spec"]["grid"] == {"batch_size": [32, 64]}

    # Still refused: a fraction, a string, a boolean, and a value that is 1 twice.
    for hyperparameters, field in (
        ({"batch_size": 258.5}, "hyperparameters.batch_size"),
        ({"epochs": "2"}, "hyperparameters.epochs"),
        ({"seed": True}, "hyperparameters.seed"),
    ):
        response = client.post("/jobs", json={"block": "plain", "hyperparameters": hyperparameters})
        assert response.status_code == 422, hyperparameters
        assert [item["field"] for item in response.json()["fields"]] == [field]
    response = client.post("/experiments", json={**experiment, "seeds": [1, 1.0]})
    assert response.status_code == 422
    assert response.json()["fields"][0]["field"] == "seeds[1]"


@pytest.mark.slow
def test_the_experiment_job_limit_that_json_schema_cannot_state_is_in_the_schema(
    client: Any,
) -> None:
    """2 blocks x 2 learning rates x (limit / 4 + 1) seeds is valid JSON Schema and over the
    job limit: the server's 422 too_many_jobs is documented (the limit as `x-max-jobs`, the
    answer under 422), and the limit itself is exact."""
    schema = openapi(client)
    assert schema["components"]["schemas"]["ExperimentCreate"]["x-max-jobs"] == MAX_EXPERIMENT_JOBS
    documented = schema["paths"]["/experiments"]["post"]["responses"]["422"]["description"]
    assert "too_many_jobs" in documented and f"{MAX_EXPERIMENT_JOBS:,}" in documented
    experiment = {
        "name": "plain vs residual",
        "blocks": ["plain", "residual"],
        "grid": {"learning_rate": [0.01, 0.1]},
        "hyperparameters": {"epochs": 2},
        "seeds": list(range(MAX_EXPERIMENT_JOBS // 4 + 1)),
    }
    assert component_validator(schema, "ExperimentCreate").is_valid(experiment)
    response = client.post("/experiments", json=experiment)
    assert response.status_code == 422
    assert response.json()["error"] == "too_many_jobs"
    assert {item["field"] for item in response.json()["fields"]} == {"blocks", "grid", "seeds"}
    response = client.post(
        "/experiments", json={**experiment, "seeds": list(range(MAX_EXPERIMENT_JOBS // 4))}
    )
    assert response.status_code == 202 and response.json()["job_count"] == MAX_EXPERIMENT_JOBS


def parameter_validator(
    schema: dict[str, Any], path: str, name: str, location: str
) -> jsonschema_rs.Validator:
    [parameter] = [
        parameter
        for parameter in schema["paths"][path]["get"]["parameters"]
        if parameter["name"] == name and parameter["in"] == location
    ]
    return jsonschema_rs.Draft202012Validator(parameter["schema"])


def test_a_last_event_id_the_schema_allows_is_never_refused_as_malformed(client: Any) -> None:
    """The schema allowed any string as Last-Event-ID, and the server answered 400 to "none"
    and "null": now the schema gives the form of each stream's ids. An id in that form can
    still name no event of the stream (409, like any other state the request disagrees with);
    one not in that form is 400 from the header and the query parameter alike."""
    job_id = client.post("/jobs", json={"block": "mobile", "hyperparameters": {"epochs": 1}})
    job_id = job_id.json()["id"]
    drive_job(job_id, 1, finish="succeeded")  # events 1-4; the stream ends
    experiment_id = add_experiment([job_id])
    schema = openapi(client)
    cases = {
        f"/jobs/{job_id}/events": (
            "/jobs/{job_id}/events",
            {"": 200, "0": 200, "3": 200, "4": 200, "5": 409, "9999999999": 409},
            ["none", "null", "x", "01", "+1", "1.0", "1:2", "99999999999"],
        ),
        f"/experiments/{experiment_id}/events": (
            "/experiments/{experiment_id}/events",
            {
                "": 200,
                "0": 200,
                "1": 200,
                "4": 200,
                "5": 409,
                # the per-job cursors its ids were before
                f"{job_id}:0": 200,
                f"{job_id}:2": 200,
                f"{job_id}:5": 409,
                f"{job_id + 1}:1": 409,
                f"{job_id}:1.{job_id}:2": 409,
            },
            ["none", "null", "01", "+1", "1.0", f"{job_id}:", f"{job_id}:01", f"0{job_id}:1"],
        ),
    }
    for url, (path, allowed, malformed) in cases.items():
        header = parameter_validator(schema, path, "Last-Event-ID", "header")
        query = parameter_validator(schema, path, "last_event_id", "query")
        # Not null: a fuzzer sends that as the text "null".
        assert not header.is_valid(None) and not query.is_valid(None)
        for value, status in [*allowed.items(), *((value, 400) for value in malformed)]:
            assert header.is_valid(value) == query.is_valid(value) == (status != 400), value
            by_header = client.get(url, headers={"Last-Event-ID": value})
            by_query = client.get(url, params={"last_event_id": value})
            for response in (by_header, by_query):
                assert response.status_code == status, (url, value, response.text)
                if status != 200:
                    assert response.json()["error"] == "invalid_last_event_id"

    # Both given: each is checked; the header is used unless it is empty.
    url = f"/jobs/{job_id}/events"
    for header_value, query_value, status in (
        ("", "\x84", 400),
        ("3", "x", 400),
        ("x", "3", 400),
        ("", "3", 200),
        ("3", "9", 200),
        ("9", "3", 409),
    ):
        response = client.get(
            url, headers={"Last-Event-ID": header_value}, params={"last_event_id": query_value}
        )
        assert response.status_code == status, (header_value, query_value, response.text)
    resumed = client.get(url, headers={"Last-Event-ID": ""}, params={"last_event_id": "3"})
    assert [line for line in resumed.text.splitlines() if line.startswith("id:")] == ["id: 4"]


def parse_event_stream(text: str) -> tuple[list[dict[str, str]], list[str]]:
    """The events of a text/event-stream as the HTML standard dispatches them (a block with
    data; its id, or else the last id before it), each as {event, data, id}; and the comment
    lines."""
    events: list[dict[str, str]] = []
    comments: list[str] = []
    last_id: str | None = None
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        data: list[str] = []
        for line in block.split("\n"):
            if line.startswith(":"):
                comments.append(line)
            elif line:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                assert name in ("event", "data", "id"), f"undocumented field {name!r} in {block!r}"
                if name == "data":
                    data.append(value)
                else:
                    fields[name] = value
        if "id" in fields:
            last_id = fields["id"]
        if data:
            event = {"event": fields.get("event", "message"), "data": "\n".join(data)}
            if last_id is not None:
                event["id"] = last_id
            events.append(event)
    return events, comments


def check_documented(schema: dict[str, Any], path: str, events: list[dict[str, str]]) -> set[str]:
    """Each event matches exactly one of the stream's documented events, by name, and its JSON
    data the component that event names; returns the names seen."""
    media = schema["paths"][path]["get"]["responses"]["200"]["content"]["text/event-stream"]
    item_schema = media["itemSchema"]
    envelope = jsonschema_rs.Draft202012Validator(
        {**item_schema, "components": schema["components"]}, validate_formats=True
    )
    documented = {branch["properties"]["event"]["const"]: branch for branch in item_schema["oneOf"]}
    for event in events:
        assert event["event"] in documented, event
        envelope.validate(event)
        reference = documented[event["event"]]["properties"]["data"]["contentSchema"]["$ref"]
        data = component_validator(schema, reference.rsplit("/", 1)[1])
        data.validate(json.loads(event["data"]))
    return {event["event"] for event in events}


def end_every_job() -> None:
    from sqlalchemy import select, update

    from jobs.events import record_status
    from jobs.tables import TERMINAL_STATUSES, Job

    with session_scope() as session:
        running = select(Job.id).where(Job.status.not_in(sorted(TERMINAL_STATUSES)))
        for job_id in session.execute(running).scalars().all():
            session.execute(update(Job).where(Job.id == job_id).values(status="failed"))
            record_status(session, job_id)


def stream_while(client: Any, url: str, changes: Callable[[], None]) -> str:
    """The whole text of a stream, read while another thread makes the changes it reports (the
    last of which ends it), after the stream has been idle for a while."""
    failure: list[BaseException] = []

    def change() -> None:
        time.sleep(0.6)
        try:
            changes()
        except BaseException as error:  # reported below, in the test's thread
            failure.append(error)
            end_every_job()  # so that the stream ends and the test fails rather than hangs

    thread = threading.Thread(target=change)
    thread.start()
    try:
        response = client.get(url)
    finally:
        thread.join()
    assert not failure, failure
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    text: str = response.text
    return text


def test_every_event_a_stream_sends_is_documented(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every event of real streams (a job queued, started, released and started again, with a
    diverged epoch, cancelled; an experiment's jobs succeeding and failing) validates against
    the schema's description of that event's name, and the keep-alive comments are the only
    other lines. The schema described the stream as a plain string."""
    monkeypatch.setattr("app.routes.events.KEEP_ALIVE_SECONDS", 0.1)
    schema = openapi(client)
    media = schema["paths"]["/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
    assert set(media) == {"text/event-stream"}
    assert media["text/event-stream"]["x-keep-alive"]["every_seconds"] == 15

    job_id = client.post("/jobs", json={"block": "mobile", "hyperparameters": {"epochs": 3}})
    job_id = job_id.json()["id"]

    # A diverged epoch (a NaN loss) is stored on PostgreSQL (SQLite's NOT NULL refuses it).
    diverges = is_postgresql(get_settings().resolved_database_url)
    last_epoch = epoch_row(3)
    if diverges:
        last_epoch |= {"train_loss": float("nan"), "test_loss": float("inf")}

    def train_then_cancel() -> None:
        from jobs.lifecycle import cancel_job

        for epoch in (1, 2):  # a worker that stops hands the job back; another takes it
            with session_scope() as session:
                claim = claim_job(session, job_id, worker="w", lease_seconds=60)
            assert claim is not None
            with session_scope() as session:
                record_epoch(session, claim, epoch_row(epoch), lease_seconds=60)
            if epoch == 1:
                with session_scope() as session:
                    assert release_job(session, claim) == "queued"
        with session_scope() as session:
            record_epoch(session, claim, last_epoch, lease_seconds=60)
        with session_scope() as session:
            cancel_job(session, job_id)
        with session_scope() as session:
            assert finish_job(session, claim, "cancelled")

    text = stream_while(client, f"/jobs/{job_id}/events", train_then_cancel)
    events, comments = parse_event_stream(text)
    assert check_documented(schema, "/jobs/{job_id}/events", events) == {"status", "epoch", "end"}
    assert [event["event"] for event in events].count("status") >= 5
    assert json.loads(events[-1]["data"]) == {"job_id": job_id, "status": "cancelled"}
    last = [json.loads(event["data"]) for event in events if event["event"] == "epoch"][-1]
    assert last["epoch"] == 3
    if diverges:
        assert last["train_loss"] is None and last["test_loss"] is None
    assert comments and all(comment.startswith(": ping") for comment in comments)

    experiment = {"name": "e", "blocks": ["plain", "mobile"], "hyperparameters": {"epochs": 1}}
    experiment_id = client.post("/experiments", json=experiment).json()["id"]
    first, second = client.get(f"/jobs?experiment_id={experiment_id}").json()["items"]

    def succeed_and_fail() -> None:
        drive_job(first["id"], 1, finish="succeeded")
        drive_job(second["id"], 1, finish="failed")

    path = "/experiments/{experiment_id}/events"
    text = stream_while(client, f"/experiments/{experiment_id}/events", succeed_and_fail)
    events, comments = parse_event_stream(text)
    assert check_documented(schema, path, events) == {"status", "epoch", "end"}
    end = json.loads(events[-1]["data"])
    assert end == {"experiment_id": experiment_id, "status": "failed"}
    assert comments and all(comment.startswith(": ping") for comment in comments)

    # An event that the schema does not describe is caught (the check is not vacuous).
    for wrong in (
        {"event": "heartbeat", "data": "{}", "id": "1"},
        {**events[0], "data": json.dumps({**json.loads(events[0]["data"]), "extra": 1})},
        {**events[0], "id": "x"},
    ):
        with pytest.raises((AssertionError, jsonschema_rs.ValidationError)):
            check_documented(schema, path, [wrong])
