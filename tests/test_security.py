"""Security edges of the HTTP API: path traversal on the file routes, the request body cap, the
API key, and hostile input. Real app, real databases, and a real uvicorn process where the bytes
on the wire matter (raw request targets, chunked uploads)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest
from fastapi.testclient import TestClient

from tests.conftest import service_environment
from tests.support import Process, drive_job, free_port, start_api
from tests.support import broker_messages as count_broker_messages

SMALL_JOB = {"block": "mobile", "hyperparameters": {"epochs": 2}, "train_samples": 40}
SMALL_EXPERIMENT = {"name": "small", "blocks": ["mobile"], "hyperparameters": {"epochs": 2}}
JSON = {"content-type": "application/json"}
FORM = {"content-type": "application/x-www-form-urlencoded"}
CHECKPOINT_BYTES = b"a real checkpoint file, not /etc/passwd\n" * 64


def put_checkpoint(job_id: int) -> bytes:
    """Record one epoch with a real `latest` checkpoint file, as a worker would."""
    drive_job(job_id, 1, checkpoint=CHECKPOINT_BYTES)
    return CHECKPOINT_BYTES


def traversal_targets(job_id: int) -> list[str]:
    """Request targets, exactly as they go on the wire (already percent-encoded)."""
    names = [
        "../",
        "..",
        "../../../../etc/passwd",
        "..%2f..%2fetc%2fpasswd",
        "..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "%2e%2e%2f",
        "%2e%2e",
        "%2e%2e/%2e%2e/etc/passwd",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "%2fetc%2fpasswd",
        "%2Fetc%2Fpasswd",
        "latest%00.png",
        "latest%00",
        "loss.png%00",
        "..%5c..%5cetc%5cpasswd",
        "%252e%252e%252fetc%252fpasswd",
    ]
    targets = [
        f"/jobs/{job_id}/{route}/{name}" for route in ("checkpoints", "plots") for name in names
    ]
    for tail in ("checkpoints/latest", "plots/loss.png"):
        targets += [
            f"/jobs/..%2f{job_id}/{tail}",
            f"/jobs/%2e%2e%2f{job_id}/{tail}",
            f"/jobs/%2e%2e/{tail}",
            f"/jobs/..%2f..%2fetc%2fpasswd/{tail}",
            f"/jobs/{job_id}%2f..%2f..%2fetc/{tail}",
            f"/jobs/%2fetc%2fpasswd/{tail}",
            f"/jobs/{job_id}%00/{tail}",
        ]
    # Literal dot segments that a normalising client would turn into a real resource (the
    # checkpoint, or the job): a 404 here proves the raw target reached the server unchanged.
    targets += [
        f"/jobs/{job_id}/plots/../checkpoints/latest",
        f"/jobs/{job_id}/checkpoints/../checkpoints/latest",
        f"/jobs/../jobs/{job_id}/checkpoints/latest",
        f"/jobs/{job_id}/checkpoints/../../../../../etc/passwd",
    ]
    return targets


def assert_json_404(status: int, content_type: str, body: bytes, target: str) -> None:
    assert b"root:" not in body, target
    assert status == 404, (target, status, body[:200])
    assert content_type.startswith("application/json"), (target, content_type)
    document = json.loads(body)
    assert set(document) >= {"error", "detail"}, (target, document)
    assert document["error"] in ("not_found", "checkpoint_not_found", "job_not_found"), target


def raw_get(
    pool: httpcore.ConnectionPool, port: int, target: str, headers: dict[str, str] | None = None
) -> httpcore.Response:
    """GET with this exact request target. httpx normalises dot segments in every URL it builds
    (even with raw_path), so the request goes through httpcore, the transport under httpx, which
    writes the target to the socket byte for byte."""
    url = httpcore.URL(scheme=b"http", host=b"127.0.0.1", port=port, target=target.encode())
    response = pool.request("GET", url, headers=headers or {})
    return response


@pytest.fixture(scope="module")
def live_server(
    tmp_path_factory: pytest.TempPathFactory, dataset_root: Path
) -> Iterator[tuple[int, Process, str, str]]:
    """One uvicorn process for this module (it takes a while to start on a busy machine), on a
    migrated SQLite database: (port, process, database url, artifact dir)."""
    from jobs.migrations import upgrade

    root = tmp_path_factory.mktemp("live-api")
    url = f"sqlite:///{root / 'jobs.sqlite3'}"
    upgrade(url)
    artifacts = str(root / "artifacts")
    env = service_environment(root, url, dataset_root, ARTIFACT_DIR=artifacts)
    port = free_port()
    process = start_api(env, root, port)
    try:
        yield port, process, url, artifacts
    finally:
        process.stop()


@pytest.fixture
def live_api(configure, live_server: tuple[int, Process, str, str]) -> tuple[int, Process]:
    """The live server, with this process's settings on its database and artifact dir."""
    port, process, url, artifacts = live_server
    configure(url, ARTIFACT_DIR=artifacts)
    return port, process


# --- path traversal ------------------------------------------------------------------------


def test_path_traversal_on_the_live_server_is_a_json_404(live_api: tuple[int, Process]) -> None:
    port, process = live_api
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=30) as api:
        created = api.post("/jobs", json=SMALL_JOB)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        payload = put_checkpoint(job_id)
        # The real file is reachable by its name, so a 404 below is the guard, not a missing file.
        download = api.get(f"/jobs/{job_id}/checkpoints/latest")
        assert download.status_code == 200 and download.content == payload
        assert api.get(f"/jobs/{job_id}/plots/loss.png").status_code == 200

    with httpcore.ConnectionPool() as pool:
        control = raw_get(pool, port, f"/jobs/{job_id}/checkpoints/latest")
        assert control.status == 200 and control.content == payload
        for target in traversal_targets(job_id):
            response = raw_get(pool, port, target)
            content_type = dict(response.headers).get(b"content-type", b"").decode()
            assert_json_404(response.status, content_type, response.content, target)

        # What the server made of the target: %00 is decoded and reaches the route as a name.
        nul = raw_get(pool, port, f"/jobs/{job_id}/checkpoints/latest%00.png")
        assert json.loads(nul.content) == {
            "error": "checkpoint_not_found",
            "detail": "No checkpoint 'latest\\x00.png'; names are latest, best, final.",
        }
        plot_nul = json.loads(raw_get(pool, port, f"/jobs/{job_id}/plots/latest%00.png").content)
        assert plot_nul["error"] == "not_found" and "latest\\x00.png" in plot_nul["detail"]
        # An encoded "../" with a trailing slash is not redirected to a normalised path.
        for target in (f"/jobs/{job_id}/checkpoints/%2e%2e%2f", f"/jobs/{job_id}/checkpoints/"):
            response = raw_get(pool, port, target)
            assert response.status == 404 and b"location" not in dict(response.headers), target
    assert "root:" not in process.output()
    assert process.alive()


def test_path_traversal_in_process_is_a_json_404(client: TestClient) -> None:
    created = client.post("/jobs", json=SMALL_JOB)
    assert created.status_code == 202
    job_id = created.json()["id"]
    payload = put_checkpoint(job_id)
    assert client.get(f"/jobs/{job_id}/checkpoints/latest").content == payload
    # The test client is httpx: it would rewrite literal dot segments (the live test sends
    # those), so only the targets that it sends unchanged are tried here.
    targets = [
        target
        for target in traversal_targets(job_id)
        if httpx.URL(f"http://testserver{target}").raw_path == target.encode()
    ]
    assert len(targets) >= 30
    for target in targets:
        response = client.get(target, follow_redirects=False)
        assert_json_404(
            response.status_code, response.headers.get("content-type", ""), response.content, target
        )


# --- request body cap ----------------------------------------------------------------------


def oversized_body(max_bytes: int = 16 * 1024) -> bytes:
    body = json.dumps(
        {**SMALL_JOB, "name": "x" * 150, "tags": ["t"] * 20, "padding": "y" * (max_bytes + 100)}
    ).encode()
    assert len(body) > max_bytes
    return body


def chunks(body: bytes, size: int = 1024) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def assert_too_large(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    assert response.json() == {
        "error": "body_too_large",
        "detail": "Request body larger than 16384 bytes.",
    }


def test_oversized_body_on_the_live_server(live_api: tuple[int, Process]) -> None:
    port, process = live_api
    body = oversized_body()
    headers = {"content-type": "application/json"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as api:
        before = len(api.get("/jobs").json()["items"])

        declared = api.post("/jobs", content=body, headers=headers)
        assert declared.request.headers["content-length"] == str(len(body))
        assert_too_large(declared)

        # No Content-Length: the cap is enforced while the chunks arrive.
        streamed = api.post("/jobs", content=chunks(body), headers=headers)
        assert "content-length" not in streamed.request.headers
        assert streamed.request.headers["transfer-encoding"] == "chunked"
        assert_too_large(streamed)

        assert len(api.get("/jobs").json()["items"]) == before
        # A body under the cap, sent chunked, still works.
        small = api.post(
            "/jobs", content=chunks(json.dumps(SMALL_JOB).encode(), 8), headers=headers
        )
        assert small.status_code == 202, small.text
        assert len(api.get("/jobs").json()["items"]) == before + 1
    assert process.alive()


def test_oversized_body_in_process(client: TestClient) -> None:
    body = oversized_body()
    headers = {"content-type": "application/json"}
    assert_too_large(client.post("/jobs", content=body, headers=headers))
    assert_too_large(client.post("/jobs", content=chunks(body), headers=headers))
    assert len(client.get("/jobs").json()["items"]) == 0


# --- API key -------------------------------------------------------------------------------


def every_protected_request(
    job_id: int, experiment_id: int
) -> list[tuple[str, str, dict[str, Any], int]]:
    """(method, path, httpx kwargs, the status with the right key) for each API route."""
    experiment = f"/experiments/{experiment_id}"
    return [
        ("GET", "/architectures", {}, 200),
        ("GET", "/ready", {}, 200),
        ("POST", "/jobs", {"json": SMALL_JOB}, 202),
        ("GET", "/jobs", {}, 200),
        ("GET", f"/jobs/{job_id}", {}, 200),
        ("GET", f"/jobs/{job_id}/metrics", {}, 200),
        ("GET", f"/jobs/{job_id}/plots/loss.png", {}, 200),
        ("GET", "/plots/compare.png", {"params": {"jobs": str(job_id)}}, 200),
        ("GET", f"/jobs/{job_id}/checkpoints", {}, 200),
        ("GET", f"/jobs/{job_id}/checkpoints/latest", {}, 200),
        ("PATCH", f"/jobs/{job_id}", {"json": {"priority": 1}}, 409),  # it is running
        ("DELETE", f"/jobs/{job_id}", {}, 409),  # not ended
        ("POST", f"/jobs/{job_id}/cancel", {}, 200),
        ("POST", "/experiments", {"json": SMALL_EXPERIMENT}, 202),
        ("GET", "/experiments", {}, 200),
        ("GET", experiment, {}, 200),
        ("GET", f"{experiment}/summary.csv", {}, 200),
        ("GET", f"{experiment}/metrics", {}, 200),
        ("PATCH", experiment, {"json": {"priority": 1}}, 200),
        ("GET", f"{experiment}/plots/test_accuracy.png", {}, 200),
        ("POST", f"{experiment}/cancel", {}, 200),
        ("POST", f"{experiment}/resume", {}, 422),  # a grid, not a search
        # An open stream would not end while its jobs run: a bad resume point answers at once.
        ("GET", f"/jobs/{job_id}/events", {"params": {"last_event_id": "x"}}, 400),
        ("GET", f"{experiment}/events", {"params": {"last_event_id": "x"}}, 400),
        ("DELETE", experiment, {}, 204),  # every job cancelled above
        ("GET", "/me", {}, 200),
        ("POST", "/users", {"json": {"name": "ada"}}, 201),
        ("GET", "/users", {}, 200),
        ("GET", "/users/ada", {}, 200),
        ("PATCH", "/users/ada", {"json": {"max_queued_jobs": 10}}, 200),
        ("POST", "/users/ada/tokens", {"json": {"label": "ci"}}, 201),
        ("GET", "/users/ada/tokens", {}, 200),
        ("DELETE", "/users/ada/tokens/1", {}, 200),
        ("DELETE", "/users/ada/tokens", {}, 200),
        ("GET", "/audit", {}, 200),
    ]


def test_api_key_guards_every_route_but_health(configure, database_url: str) -> None:
    configure(database_url, API_KEY="s3cret")
    from app.main import create_app

    app = create_app()
    good = {"X-API-Key": "s3cret"}
    with TestClient(app) as client:
        created = client.post("/jobs", json=SMALL_JOB, headers=good)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        put_checkpoint(job_id)
        experiment = client.post("/experiments", json=SMALL_EXPERIMENT, headers=good)
        assert experiment.status_code == 202, experiment.text
        requests = every_protected_request(job_id, experiment.json()["id"])

        # The list covers every operation of the app's schema (a new route must be listed).
        schema = client.get("/openapi.json", headers=good).json()
        declared = {
            (method.upper(), path)
            for path, operations in schema["paths"].items()
            for method in operations
            if path != "/health"
        }
        covered = {
            (method, template)
            for method, path, _, _ in requests
            for template in schema["paths"]
            if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path)
        }
        assert covered == declared and len(declared) == 35

        jobs_before = len(client.get("/jobs", headers=good).json()["items"])
        for method, path, kwargs, _ in requests:
            for headers in (
                {},
                {"X-API-Key": "wrong"},
                {"X-API-Key": "s3cret "},
                {"X-API-Key": "S3CRET"},
                {"X-API-Key": ""},
            ):
                response = client.request(method, path, headers=headers, **kwargs)
                assert response.status_code == 401, (method, path, headers, response.text)
                assert response.json() == {
                    "error": "unauthorized",
                    "detail": "Missing or wrong X-API-Key header.",
                }
        # Checked before routing and before the body is read: whatever the request, no key is
        # 401, where the right key gets the route's own answer. (Pages a browser opens, /docs
        # among them, lead to the sign-in form instead: tests/test_ui.py.)
        for method, path, kwargs, with_key in (
            ("GET", "/openapi.json", {}, 200),
            ("HEAD", f"/jobs/{job_id}", {}, 200),
            ("GET", "/no/such/route", {}, 404),
            ("DELETE", "/jobs", {}, 405),
            ("POST", "/jobs", {"content": b'{"block": "pl', "headers": JSON}, 400),
            ("POST", "/jobs", {"content": b"\xff", "headers": JSON}, 400),
            ("POST", "/jobs", {"content": b"block=plain", "headers": FORM}, 415),
            ("POST", "/jobs", {"json": {"block": "nope"}}, 422),
            ("POST", "/jobs", {"content": oversized_body(), "headers": JSON}, 413),
            ("POST", "/jobs", {"json": SMALL_JOB, "headers": {"Idempotency-Key": ""}}, 422),
        ):
            headers = kwargs.pop("headers", {})
            refused = client.request(method, path, headers=headers, **kwargs)
            assert refused.status_code == 401, (method, path, refused.text)
            assert refused.headers["www-authenticate"] == 'ApiKey header="X-API-Key"'
            if method != "HEAD":
                assert refused.json()["error"] == "unauthorized"
            answered = client.request(method, path, headers={**headers, **good}, **kwargs)
            assert answered.status_code == with_key, (method, path, answered.text)
        assert len(client.get("/jobs", headers=good).json()["items"]) == jobs_before == 2

        for method, path, kwargs, expected in requests:
            response = client.request(method, path, headers=good, **kwargs)
            assert response.status_code == expected, (method, path, response.text)
        assert (
            client.get(f"/jobs/{job_id}/checkpoints/latest", headers=good).content
            == CHECKPOINT_BYTES
        )

        assert client.get("/health").status_code == 200
        assert client.get("/health").json() == {"status": "ok"}
        assert client.head("/health").status_code == 200
    schemes = schema["components"]["securitySchemes"]
    [(scheme_name, scheme)] = schemes.items()
    assert scheme == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": scheme["description"],
    }
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if path == "/health":
                assert "security" not in operation
            else:
                assert operation["security"] == [{scheme_name: []}], (method, path)
                assert "401" in operation["responses"], (method, path)


def test_without_api_key_setting_no_key_is_needed(client: TestClient) -> None:
    assert client.get("/jobs").status_code == 200
    assert client.get("/jobs", headers={"X-API-Key": "anything"}).status_code == 200
    # ... and the schema does not ask for one.
    schema = client.get("/openapi.json").json()
    assert "securitySchemes" not in schema.get("components", {})
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert "security" not in operation, (method, path)
            assert "401" not in operation["responses"], (method, path)


# --- hostile input -------------------------------------------------------------------------


def broker_messages() -> int:
    """Messages waiting in the embedded broker of this process's settings."""
    from jobs.settings import get_settings

    return count_broker_messages(get_settings().var_dir)


BAD_BODIES: list[tuple[str, str]] = [
    ('{"block":"plain","hyperparameters":{"learning_rate":NaN}}', "hyperparameters.learning_rate"),
    (
        '{"block":"plain","hyperparameters":{"learning_rate":Infinity}}',
        "hyperparameters.learning_rate",
    ),
    (
        '{"block":"plain","hyperparameters":{"learning_rate":-Infinity}}',
        "hyperparameters.learning_rate",
    ),
    ('{"block":"plain","hyperparameters":{"momentum":NaN}}', "hyperparameters.momentum"),
    (
        '{"block":"plain","hyperparameters":{"weight_decay":Infinity}}',
        "hyperparameters.weight_decay",
    ),
    (
        '{"block":"plain","hyperparameters":{"learning_rate":1e999}}',
        "hyperparameters.learning_rate",
    ),
    ('{"block":"plain","colour":"red"}', "colour"),
    ('{"block":"plain","hyperparameters":{"epochz":3}}', "hyperparameters.epochz"),
    ('{"block":"plain","hyperparameters":{"epochs":0}}', "hyperparameters.epochs"),
    ('{"block":"plain","hyperparameters":{"epochs":100000}}', "hyperparameters.epochs"),
    ('{"block":"plain","hyperparameters":{"epochs":-1}}', "hyperparameters.epochs"),
    ('{"block":"plain","hyperparameters":{"batch_size":0}}', "hyperparameters.batch_size"),
    ('{"block":"transformer"}', "block"),
    ('{"block":"PLAIN"}', "block"),
    ('{"block":""}', "block"),
    ("{}", "block"),
    ('{"block":null}', "block"),
    ('{"block":3}', "block"),
    ('{"block":"plain","dataset":"imagenet"}', "dataset"),
    ('{"block":"plain","hyperparameters":{"epochs":"many"}}', "hyperparameters.epochs"),
    ('{"block":"plain","hyperparameters":{"epochs":2.5}}', "hyperparameters.epochs"),
    ('{"block":"plain","hyperparameters":{"augment":"maybe"}}', "hyperparameters.augment"),
    ('{"block":"plain","hyperparameters":[]}', "hyperparameters"),
    ('{"block":"plain","tags":"demo"}', "tags"),
    ('{"block":"plain","tags":["has space"]}', "tags.0"),
    ('{"block":"plain","tags":["dup","ok","dup"]}', "tags"),
    ('{"block":"plain","train_samples":0}', "train_samples"),
    ('{"block":"plain","name":' + json.dumps("n" * 201) + "}", "name"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES, ids=[b for b, _ in BAD_BODIES])
def test_bad_input_is_a_422_naming_the_field(
    configure, sqlite_url: str, body: str, field: str
) -> None:
    configure(sqlite_url)
    from app.main import create_app

    with TestClient(create_app()) as client:
        response = client.post("/jobs", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422, response.text
        document = response.json()
        assert document["error"] == "validation_error"
        assert field in [problem["field"] for problem in document["fields"]], document
        assert field in document["detail"]
        assert len(client.get("/jobs").json()["items"]) == 0
    assert broker_messages() == 0


def test_bad_input_stores_and_queues_nothing(client: TestClient) -> None:
    """Every bad body in a row on each database, then a good one as the control."""
    for body, _ in BAD_BODIES:
        assert client.post("/jobs", content=body, headers=JSON).status_code == 422, body
    for raw, headers, status in (
        (b"not json", JSON, 400),
        (b'{"block": "plain"', JSON, 400),
        (b"\xff\xfe", JSON, 400),
        (b"", JSON, 422),
        (b'{"block": "plain"}', {"content-type": "text/plain"}, 415),
        (b'{"block": "plain"}', {}, 415),
    ):
        response = client.post("/jobs", content=raw, headers=headers)
        assert response.status_code == status, (raw, headers, response.text)
    assert client.post("/jobs", json=SMALL_JOB, headers={"Idempotency-Key": ""}).status_code == 422
    assert len(client.get("/jobs").json()["items"]) == 0
    assert broker_messages() == 0
    assert client.post("/jobs", json=SMALL_JOB).status_code == 202
    assert len(client.get("/jobs").json()["items"]) == 1
    assert broker_messages() == 1


def test_a_body_that_is_not_sent_as_json_is_415(client: TestClient) -> None:
    body = json.dumps(SMALL_JOB).encode()
    for content_type in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/jsonx",
        "json",
        "application/json; charset=latin-1",
        "application/json; charset=utf-16",
    ):
        response = client.post("/jobs", content=body, headers={"content-type": content_type})
        assert response.status_code == 415, content_type
        document = response.json()
        assert document["error"] == "unsupported_media_type"
        assert "application/json" in document["detail"] and content_type in document["detail"]
    bare = client.post("/jobs", content=body)
    assert "content-type" not in bare.request.headers
    assert bare.status_code == 415 and "no Content-Type" in bare.json()["detail"]
    assert len(client.get("/jobs").json()["items"]) == 0
    for content_type in (
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON; charset=UTF-8",
        "application/vnd.cifar-job+json",
    ):
        response = client.post("/jobs", content=body, headers={"content-type": content_type})
        assert response.status_code == 202, (content_type, response.text)
    assert len(client.get("/jobs").json()["items"]) == 4
    assert broker_messages() == 4


def test_broken_json_is_400_naming_where_it_breaks(client: TestClient) -> None:
    for body, where in (
        (b'{"block": "plain"', "line 1, column 18 (character 17)"),
        (b'{"block": "plain",\n "name": }', "line 2, column 10 (character 28)"),
        (b"not json", "line 1, column 1 (character 0)"),
        (b'{"block": "plain"} extra', "line 1, column 20 (character 19)"),
        (b"\xef\xbb\xbf{}", "line 1, column 1 (character 0)"),  # a byte order mark
    ):
        response = client.post("/jobs", content=body, headers=JSON)
        assert response.status_code == 400, body
        document = response.json()
        assert set(document) == {"error", "detail"}, document
        assert document["error"] == "invalid_json"
        assert document["detail"].startswith("The request body is not valid JSON: ")
        assert document["detail"].endswith(f" at {where}."), document["detail"]
    assert len(client.get("/jobs").json()["items"]) == 0


def test_a_body_that_is_not_utf8_is_always_400(client: TestClient) -> None:
    for body, byte in (
        (b"\xff\xfe", 0),
        (b"\xfe\xff\x00{", 0),
        (b'{"block": "plain", "name": "caf\xe9"}', 31),  # Latin-1
        (b'{"block": "plain"}\xc3\x28', 18),
        ('{"block": "plain"}'.encode("utf-16"), 0),
        (b"\x80", 0),
    ):
        response = client.post("/jobs", content=body, headers=JSON)
        assert response.status_code == 400, body
        document = response.json()
        assert document["error"] == "invalid_json", body
        assert document["detail"].startswith(f"The request body is not UTF-8 text: byte {byte} ")
    assert len(client.get("/jobs").json()["items"]) == 0


def test_an_empty_idempotency_key_is_refused(client: TestClient) -> None:
    key: str | bytes
    for key in ("", "   ", "caf\u00e9".encode(), "k" * 201):
        response = client.post("/jobs", json=SMALL_JOB, headers={"Idempotency-Key": key})
        assert response.status_code == 422, (key, response.text)
        document = response.json()
        assert document["error"] == "validation_error"
        assert [problem["field"] for problem in document["fields"]] == ["header.idempotency-key"]
    assert len(client.get("/jobs").json()["items"]) == 0
    first = client.post("/jobs", json=SMALL_JOB, headers={"Idempotency-Key": "retry-1"})
    again = client.post("/jobs", json=SMALL_JOB, headers={"Idempotency-Key": "retry-1"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"


# --- hostile JSON: deep, long or strange bodies ----------------------------------------------

MAX_BODY = 16 * 1024  # MAX_BODY_BYTES's default, which these tests run with
JOB_PREFIX = '{"block": "mobile", "hyperparameters": '  # the top-level object is level 1


def opening(levels: int, kinds: str = "[") -> str:
    """The first half of deep(levels, ..., kinds)."""
    return "".join('{"a": ' if kinds[i % len(kinds)] == "{" else "[" for i in range(levels))


def deep(levels: int, kinds: str = "[", inner: str = "1") -> str:
    """`levels` arrays and/or objects (taking turns as `kinds` says), one inside the other."""
    closing = "".join("}" if kinds[i % len(kinds)] == "{" else "]" for i in range(levels))
    return opening(levels, kinds) + inner + closing[::-1]


def at(text: str) -> str:
    """How a detail names the character just after `text` (one line)."""
    return f"line 1, column {len(text) + 1} (character {len(text)})"


TOO_DEEP = "nests arrays and objects more than 64 levels deep: level 65 opens at "
LONG_INTEGER = "1" * 10_000

# (test id, body, error code, what the detail says). Each is refused by the JSON check before
# FastAPI parses the body, with the same answer on every route that takes a JSON body.
HOSTILE_JSON: list[tuple[str, bytes, str, list[str]]] = [
    (
        "5000 nested arrays",
        (JOB_PREFIX + deep(5000) + "}").encode(),
        "json_too_deep",
        [TOO_DEEP + at(JOB_PREFIX + opening(63))],
    ),
    (
        "5000 nested arrays, never closed",
        (JOB_PREFIX + "[" * 5000).encode(),
        "json_too_deep",
        [TOO_DEEP + at(JOB_PREFIX + opening(63))],
    ),
    (
        "2000 nested objects",
        (JOB_PREFIX + deep(2000, "{") + "}").encode(),
        "json_too_deep",
        [TOO_DEEP + at(JOB_PREFIX + opening(63, "{"))],
    ),
    (
        "2000 levels of arrays and objects in turn",
        (JOB_PREFIX + deep(2000, "[{") + "}").encode(),
        "json_too_deep",
        [TOO_DEEP + at(JOB_PREFIX + opening(63, "[{"))],
    ),
    (
        "a top-level array one level too deep",
        deep(65).encode(),
        "json_too_deep",
        [TOO_DEEP + at(opening(64))],
    ),
    (
        "too deep after brackets inside strings",
        (JOB_PREFIX + '["]]]]\\"]]", "}}", ' + deep(63) + "]}").encode(),
        "json_too_deep",
        [TOO_DEEP + at(JOB_PREFIX + '["]]]]\\"]]", "}}", ' + opening(62))],
    ),
    (
        "a 10000-digit integer",
        ('{"block": "mobile", "train_samples": ' + LONG_INTEGER + "}").encode(),
        "number_too_long",
        [
            "a number 10000 characters long (11111111111111111111...) in train_samples at "
            + at('{"block": "mobile", "train_samples": '),
            "at most 100 characters",
        ],
    ),
    (
        "a negative 10000-digit integer in an array",
        ('{"block": "mobile", "tags": ["a", -' + LONG_INTEGER + "]}").encode(),
        "number_too_long",
        ["a number 10001 characters long (-1111111111111111111...) in tags.1 at "],
    ),
    (
        "a 5000-digit fraction",
        (JOB_PREFIX + '{"learning_rate": 0.' + "0" * 4999 + "1}}").encode(),
        "number_too_long",
        [
            "a number 5002 characters long (0.000000000000000000...) in "
            "hyperparameters.learning_rate at "
        ],
    ),
    (
        "a 200-digit exponent",
        (JOB_PREFIX + '{"learning_rate": 1e' + "9" * 200 + "}}").encode(),
        "number_too_long",
        ["a number 202 characters long", "hyperparameters.learning_rate"],
    ),
    (
        "an escaped lone high surrogate",
        b'{"block": "mobile", "name": "run \\ud800"}',
        "invalid_string",
        [
            "an unpaired surrogate (\\ud800) in name, in the string at "
            + at('{"block": "mobile", "name": ')
        ],
    ),
    (
        "an escaped lone low surrogate in a tag",
        b'{"block": "mobile", "tags": ["ok", "\\udc00"]}',
        "invalid_string",
        ["an unpaired surrogate (\\udc00) in tags.1"],
    ),
    (
        "a surrogate pair the wrong way round",
        b'{"block": "mobile", "name": "\\ude00\\ud83d"}',
        "invalid_string",
        ["an unpaired surrogate (\\ude00) in name"],
    ),
    (
        "a lone surrogate in a key",
        b'{"block": "mobile", "\\ud800": 1}',
        "invalid_string",
        ["an unpaired surrogate (\\ud800) in a key of the top-level object"],
    ),
    (
        "an escaped NUL",
        b'{"block": "mobile", "name": "a\\u0000b"}',
        "invalid_string",
        ["a NUL character (\\u0000) in name"],
    ),
    (
        "a NUL in a nested key",
        b'{"block": "mobile", "hyperparameters": {"epochs\\u0000": 2}}',
        "invalid_string",
        ["a NUL character (\\u0000) in a key of the object hyperparameters"],
    ),
    (
        "a duplicate key",
        b'{"block": "plain", "block": "mobile"}',
        "duplicate_key",
        [
            'the key "block" twice in the top-level object, the second time at '
            + at('{"block": "plain", '),
            "only once",
        ],
    ),
    (
        "a duplicate nested key",
        b'{"block": "mobile", "hyperparameters": {"epochs": 1, "lr": 0.1, "epochs": 900}}',
        "duplicate_key",
        ['the key "epochs" twice in the object hyperparameters'],
    ),
    (
        "a duplicate key written with an escape",
        b'{"block": "plain", "\\u0062lock": "mobile"}',
        "duplicate_key",
        ['the key "block" twice in the top-level object'],
    ),
    (
        "a duplicate key in an array's object",
        b'{"name": "x", "blocks": ["mobile"], "grid": {"epochs": [{"a": 1, "b": 2, "a": 3}]}}',
        "duplicate_key",
        ['the key "a" twice in the object grid.epochs.0'],
    ),
    (
        "a NUL byte in a string",
        b'{"block": "mobile", "name": "a\x00b"}',
        "invalid_json",
        ["Invalid control character at " + at('{"block": "mobile", "name": "a')],
    ),
    (
        "a NUL byte after the value",
        b'{"block": "mobile"}\x00',
        "invalid_json",
        ["Extra data at " + at('{"block": "mobile"}')],
    ),
    (
        "a byte order mark before a deep body",
        b"\xef\xbb\xbf" + deep(5000).encode(),
        "invalid_json",
        ["Unexpected UTF-8 BOM"],
    ),
    (
        "invalid UTF-8 inside a deep body",
        b"[" * 100 + b'"\xc0\xaf"' + b"]" * 100,
        "invalid_json",
        ["not UTF-8 text: byte 101 (0xc0) invalid start byte"],
    ),
    (
        "a surrogate encoded in UTF-8 bytes (CESU-8)",
        b'{"block": "mobile", "name": "\xed\xa0\x80"}',
        "invalid_json",
        ["not UTF-8 text: byte 29 (0xed) invalid continuation byte"],
    ),
]


def json_routes(client: TestClient) -> list[tuple[str, str]]:
    """(method, path) of every operation that takes a JSON body, from the schema; ids in a
    path are 1 (the body is checked before the route looks anything up)."""
    schema = client.get("/openapi.json").json()
    found = {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if "application/json" in operation.get("requestBody", {}).get("content", {})
    }
    # A new route with a JSON body must be added here (and to every_protected_request).
    assert found == {
        ("POST", "/jobs"),
        ("POST", "/experiments"),
        ("PATCH", "/jobs/{job_id}"),
        ("PATCH", "/experiments/{experiment_id}"),
        ("POST", "/users"),
        ("PATCH", "/users/{name}"),
        ("POST", "/users/{name}/tokens"),
    }, found
    return sorted((method, re.sub(r"\{[^}]+\}", "1", path)) for method, path in found)


def assert_refused(response: httpx.Response, status: int, code: str, says: list[str]) -> None:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert set(document) == {"error", "detail"}, document
    assert document["error"] == code, document
    for words in says:
        assert words in document["detail"], (words, document["detail"][:500])
    assert "Traceback" not in response.text and 'File "' not in response.text


@pytest.mark.parametrize(
    ("body", "code", "says"),
    [case[1:] for case in HOSTILE_JSON],
    ids=[case[0] for case in HOSTILE_JSON],
)
def test_hostile_json_is_a_400_naming_the_problem(
    configure, sqlite_url: str, body: bytes, code: str, says: list[str]
) -> None:
    configure(sqlite_url)
    from app.main import create_app

    assert len(body) <= MAX_BODY
    with TestClient(create_app()) as client:  # a server exception would be raised here
        for method, path in json_routes(client):
            response = client.request(method, path, content=body, headers=JSON)
            assert_refused(response, 400, code, says)
        assert len(client.get("/jobs").json()["items"]) == 0
        assert client.post("/jobs", json=SMALL_JOB).status_code == 202
    assert broker_messages() == 1


def test_json_at_the_depth_limit_reaches_validation(client: TestClient) -> None:
    """64 levels parse, and the schema's answer names the field; brackets in strings do not
    count; numbers of 100 characters are numbers."""
    for body, field in (
        (JOB_PREFIX + deep(63) + "}", "hyperparameters"),
        (JOB_PREFIX + deep(63, "{") + "}", "hyperparameters.a"),
        ('{"block": "mobile", "tags": ' + deep(63, "[{") + "}", "tags.0"),
        ('{"block": "mobile", "colour": ' + deep(63, "{[") + "}", "colour"),
        ('{"block": "mobile", "train_samples": ' + "9" * 100 + "}", "train_samples"),
        ('{"name": "x", "blocks": ["mobile"], "seeds": ' + deep(63) + "}", "seeds[0]"),
        (
            '{"name": "x", "blocks": ["mobile"], "grid": {"epochs": [' + deep(61) + "]}}",
            "grid.epochs[0]",
        ),
        ('{"name": "x", "blocks": ["mobile"], "seeds": [1' + "0" * 99 + "]}", "seeds[0]"),
        # A string may be long; the schema's limit on the field answers.
        ('{"block": "mobile", "name": "' + "n" * 16_000 + '"}', "name"),
        ('{"block": "mobile", "' + "k" * 16_000 + '": 1}', "k" * 16_000),
        # A float out of range is infinity, which the schema refuses.
        (JOB_PREFIX + '{"learning_rate": 1e400}}', "hyperparameters.learning_rate"),
        (JOB_PREFIX + '{"learning_rate": -1' + "0" * 98 + "}}", "hyperparameters.learning_rate"),
    ):
        assert len(body) <= MAX_BODY
        path = "/experiments" if '"blocks"' in body else "/jobs"
        response = client.post(path, content=body.encode(), headers=JSON)
        assert response.status_code == 422, (body[:80], response.text[:300])
        document = response.json()
        assert document["error"] == "validation_error"
        assert field in [problem["field"] for problem in document["fields"]], body[:80]
    # Brackets and escaped quotes inside strings are text: this one is accepted.
    name = '[[{{"\\]]' * 20
    accepted = client.post("/jobs", json={**SMALL_JOB, "name": name})
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["name"] == name
    # ... and a surrogate pair is one character.
    emoji = client.post(
        "/jobs", content=b'{"block": "mobile", "name": "\\ud83d\\ude00"}', headers=JSON
    )
    assert emoji.status_code == 202 and emoji.json()["name"] == "\U0001f600"
    assert len(client.get("/jobs").json()["items"]) == 2


def padded(body: str, size: int) -> bytes:
    """`body` (an object) with spaces before its closing brace: exactly `size` bytes."""
    assert body.endswith("}") and len(body) <= size
    return (body[:-1] + " " * (size - len(body)) + "}").encode()


def test_hostile_json_at_and_over_the_size_limit(client: TestClient) -> None:
    deep_body = JOB_PREFIX + deep(5000) + "}"
    for method, path in json_routes(client):
        at_limit = padded(deep_body, MAX_BODY)
        assert len(at_limit) == MAX_BODY
        assert_refused(
            client.request(method, path, content=at_limit, headers=JSON),
            400,
            "json_too_deep",
            [TOO_DEEP],
        )
        over = padded(deep_body, MAX_BODY + 1)
        assert_too_large(client.request(method, path, content=over, headers=JSON))
        assert_too_large(client.request(method, path, content=chunks(over), headers=JSON))
        duplicate = padded('{"block": "mobile", "block": "plain"}', MAX_BODY)
        assert_refused(
            client.request(method, path, content=duplicate, headers=JSON),
            400,
            "duplicate_key",
            ['"block"'],
        )
        number = padded('{"block": "mobile", "train_samples": ' + "1" * 16_000 + "}", MAX_BODY)
        assert_refused(
            client.request(method, path, content=number, headers=JSON),
            400,
            "number_too_long",
            ["16000 characters"],
        )
    assert len(client.get("/jobs").json()["items"]) == 0
    # A good body at exactly the limit is taken; one byte more is not.
    job = json.dumps(SMALL_JOB)
    assert client.post("/jobs", content=padded(job, MAX_BODY), headers=JSON).status_code == 202
    assert_too_large(client.post("/jobs", content=padded(job, MAX_BODY + 1), headers=JSON))
    experiment = padded(json.dumps(SMALL_EXPERIMENT), MAX_BODY)
    assert client.post("/experiments", content=experiment, headers=JSON).status_code == 202
    assert len(client.get("/jobs").json()["items"]) == 2


def test_hostile_json_on_the_live_server(live_api: tuple[int, Process]) -> None:
    """The bytes over a real socket, with Content-Length and chunked: still 400, and the server
    logs no traceback."""
    port, process = live_api
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as api:
        before = len(api.get("/jobs").json()["items"])
        for _, body, code, says in HOSTILE_JSON:
            for path in ("/jobs", "/experiments"):
                for content in (body, chunks(body, 512)):
                    response = api.post(path, content=content, headers=JSON)
                    assert_refused(response, 400, code, says)
        assert len(api.get("/jobs").json()["items"]) == before
        assert api.post("/jobs", json=SMALL_JOB).status_code == 202
    log = process.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "RecursionError" not in log
    assert process.alive()


def test_the_json_check_is_linear_and_quick() -> None:
    """The worst bodies of MAX_BODY_BYTES for the scan (a token every byte or two) take
    milliseconds; growing a body 16 times grows the time about 16 times, not 256."""
    import time

    from app.json_body import json_problem

    def fill(head: str, unit: str, tail: str, size: int) -> bytes:
        return (head + unit * ((size - len(head) - len(tail)) // len(unit)) + tail).encode()

    def seconds(body: bytes) -> float:
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            json_problem(body)
            best = min(best, time.perf_counter() - started)
        return best

    for head, unit, tail in (
        ("[", "[],", "[]]"),
        ("[", '"",', '""]'),
        ("[", "1,", "1]"),
        ('{"a": ' * 60 + "[", '"[{",', "1]" + "}" * 60),
    ):
        small = seconds(fill(head, unit, tail, MAX_BODY))
        large = seconds(fill(head, unit, tail, 16 * MAX_BODY))
        assert small < 0.25, (unit, small)
        assert large < 16 * 4 * small + 0.05, (unit, small, large)
