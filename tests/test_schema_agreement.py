"""The OpenAPI schema and the server agree on what the schema fuzzer (tests/test_schema_fuzz.py)
found them disagreeing about, one fast test each: integers written 128.0, the experiment job
limit that JSON Schema cannot state, the form of Last-Event-ID, and every event an event stream
sends."""

from __future__ import annotations

from typing import Any

import jsonschema_rs

from tests.support import add_experiment, drive_job


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


def test_the_experiment_job_limit_that_json_schema_cannot_state_is_in_the_schema(
    client: Any,
) -> None:
    """2 blocks x 2 learning rates x 63 seeds is valid JSON Schema and 252 jobs: the server's
    422 too_many_jobs is documented (the limit as `x-max-jobs`, the answer under 422), and the
    limit itself is exact."""
    schema = openapi(client)
    assert schema["components"]["schemas"]["ExperimentCreate"]["x-max-jobs"] == 64
    documented = schema["paths"]["/experiments"]["post"]["responses"]["422"]["description"]
    assert "too_many_jobs" in documented and "64" in documented
    experiment = {
        "name": "plain vs residual",
        "blocks": ["plain", "residual"],
        "grid": {"learning_rate": [0.01, 0.1]},
        "hyperparameters": {"epochs": 2},
        "seeds": list(range(63)),
    }
    assert component_validator(schema, "ExperimentCreate").is_valid(experiment)
    response = client.post("/experiments", json=experiment)
    assert response.status_code == 422
    assert response.json()["error"] == "too_many_jobs"
    assert {item["field"] for item in response.json()["fields"]} == {"blocks", "grid", "seeds"}
    response = client.post("/experiments", json={**experiment, "seeds": list(range(16))})
    assert response.status_code == 202 and response.json()["job_count"] == 64


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
                f"{job_id}:0": 200,
                f"{job_id}:2": 200,
                f"{job_id}:5": 409,
                f"{job_id + 1}:1": 409,
                f"{job_id}:1.{job_id}:2": 409,
            },
            ["none", "null", "1", f"{job_id}", f"{job_id}:", f"{job_id}:01", f"0{job_id}:1"],
        ),
    }
    for url, (path, allowed, malformed) in cases.items():
        header = parameter_validator(schema, path, "Last-Event-ID", "header")
        query = parameter_validator(schema, path, "last_event_id", "query")
        for value, status in [*allowed.items(), *((value, 400) for value in malformed)]:
            assert header.is_valid(value) == query.is_valid(value) == (status != 400), value
            by_header = client.get(url, headers={"Last-Event-ID": value})
            by_query = client.get(url, params={"last_event_id": value})
            for response in (by_header, by_query):
                assert response.status_code == status, (url, value, response.text)
                if status != 200:
                    assert response.json()["error"] == "invalid_last_event_id"
