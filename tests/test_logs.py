"""Structured logs: with LOG_FORMAT=json the API and the worker write one JSON object per line,
with the ids that tie a request to a job and a worker, and never a secret. Checked on the
output of real processes, and the request id rules in-process."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest

from app.observe import MAX_REQUEST_ID_CHARS, request_id_from
from jobs.logs import REDACTED, JsonLogFormatter, Scrubber, log_context, settings_secrets
from jobs.settings import Settings
from tests.conftest import service_environment
from tests.support import free_port, start_api, start_worker, wait_for, wait_for_status

API_KEY = "log-test-api-key-9f3c"
NOTIFY_SECRET = "log-test-notify-secret-77d1"
METRICS_TOKEN = "log-test-metrics-token-1b2e"
SMALL_JOB = {
    "block": "mobile",
    "hyperparameters": {"epochs": 2, "batch_size": 32, "seed": 1},
    "train_samples": 64,
    "test_samples": 32,
}


def json_lines(path: Path) -> list[dict]:
    """Every line of a process's output, each of which must be one JSON object."""
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"{path.name} line {number} is not JSON: {line!r}") from None
        assert isinstance(record, dict), line
        assert {"timestamp", "level", "logger", "event"} <= set(record), record
        records.append(record)
    return records


@pytest.mark.e2e
def test_api_and_worker_log_json_with_their_ids_and_no_secret(
    tmp_path: Path, dataset_root: Path
) -> None:
    from app.auth import SIGN_IN_COOKIE, sign_in_token
    from jobs.migrations import upgrade

    env = service_environment(
        tmp_path,
        f"sqlite:///{tmp_path / 'jobs.sqlite3'}",
        dataset_root,
        LOG_FORMAT="json",
        API_KEY=API_KEY,
        NOTIFY_SECRET=NOTIFY_SECRET,
        METRICS_TOKEN=METRICS_TOKEN,
    )
    upgrade(env["DATABASE_URL"])
    port = free_port()
    api_process = start_api(env, tmp_path, port)
    worker = start_worker(env, tmp_path, name="log-worker")
    cookie = sign_in_token(API_KEY)
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", timeout=30, headers={"X-API-Key": API_KEY}
        ) as api:
            submitted = api.post("/jobs", json=SMALL_JOB, headers={"X-Request-ID": "submit-1"})
            assert submitted.status_code == 202, submitted.text
            assert submitted.headers["X-Request-ID"] == "submit-1"
            job_id = submitted.json()["id"]
            # A secret sent where a client should not put it is still never written out.
            echoed = api.get(f"/jobs/{job_id}", headers={"X-Request-ID": f"k-{API_KEY}"})
            assert echoed.headers["X-Request-ID"] == f"k-{API_KEY}"
            # The dashboard's cookie, a wrong key, a bad request id.
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as browser:
                browser.cookies.set(SIGN_IN_COOKIE, cookie)
                assert browser.get("/jobs").status_code == 200
                refused = browser.get("/jobs", headers={"X-API-Key": "wrong", "Cookie": ""})
                assert refused.status_code == 401
            generated = api.get("/health", headers={"X-Request-ID": "bad\tid"})
            assert generated.headers["X-Request-ID"] != "bad\tid"
            job = wait_for_status(api, job_id, ("succeeded", "failed"))
            assert job["status"] == "succeeded", worker.output()
        # The worker logs the job's end once its transaction committed.
        wait_for(
            lambda: f"job {job_id} succeeded" in worker.log_path.read_text(),
            timeout=30,
            what="the worker's record of the job's end",
        )
    finally:
        worker.stop()
        api_process.stop()

    api_records = json_lines(api_process.log_path)
    worker_records = json_lines(worker.log_path)

    submit = [r for r in api_records if r.get("request_id") == "submit-1"]
    access = [r for r in submit if r["logger"] == "app.access"]
    assert access and access[0]["route"] == "/jobs" and access[0]["status"] == 202
    assert access[0]["method"] == "POST" and access[0]["duration_ms"] >= 0
    assert any(
        r.get("job_id") == job_id and r["event"] == f"job {job_id} submitted" for r in submit
    )
    # A route that names a job binds its id to the request's records.
    read = [r for r in api_records if r["logger"] == "app.access" and r.get("job_id") == job_id]
    assert any(r["route"] == "/jobs/{job_id}" for r in read), read
    assert any(r.get("status") == 401 and r.get("route") == "(unrouted)" for r in api_records)

    mine = [r for r in worker_records if r.get("job_id") == job_id]
    assert mine, worker_records[-5:]
    assert all(r["worker"] == "log-worker" and r["attempt"] == 1 for r in mine)
    assert any(r["event"] == f"job {job_id} succeeded" for r in mine)
    assert {r["level"] for r in worker_records} <= {"DEBUG", "INFO", "WARNING", "ERROR"}

    everything = api_process.log_path.read_text() + worker.log_path.read_text()
    for secret in (API_KEY, NOTIFY_SECRET, METRICS_TOKEN, cookie):
        assert secret not in everything
    assert f"k-{REDACTED}" in everything


def test_a_usable_request_id_is_kept_and_any_other_replaced() -> None:
    assert request_id_from([(b"x-request-id", b"abc-123 / 7")]) == "abc-123 / 7"
    longest = "r" * MAX_REQUEST_ID_CHARS
    assert request_id_from([(b"x-request-id", longest.encode())]) == longest
    for bad in (b"", b" padded", b"tab\there", b"r" * (MAX_REQUEST_ID_CHARS + 1), "é".encode()):
        made = request_id_from([(b"x-request-id", bad)])
        assert made != bad.decode("latin-1") and len(made) == 32, bad
    assert len(request_id_from([])) == 32


def test_secrets_from_the_settings_are_scrubbed_from_any_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(
        api_key='key-with-"quote',
        notify_secret="notify-s3cret",
        metrics_token="scrape-t0ken",
        database_url="postgresql+psycopg://jobs:db-pa%24%24@db/jobs",
        celery_broker_url="redis://:broker-pw@redis:6379/0",
    )
    formatter = JsonLogFormatter(Scrubber(settings_secrets(settings)))
    logger = logging.getLogger("tests.scrub")
    with log_context(job_id=4, request_id="r1"):
        record = logger.makeRecord(
            "tests.scrub", logging.INFO, __file__, 1,
            "connecting with %s %s %s %s %s", (
                'key-with-"quote', "notify-s3cret", "scrape-t0ken", "db-pa$$", "broker-pw"
            ), None,
        )  # fmt: skip
        from jobs.logs import ContextFilter

        ContextFilter().filter(record)
    line = formatter.format(record)
    parsed = json.loads(line)
    assert parsed["event"] == "connecting with " + " ".join([REDACTED] * 5)
    assert parsed["job_id"] == 4 and parsed["request_id"] == "r1"
    for secret in ("quote", "notify-s3cret", "scrape-t0ken", "db-pa", "broker-pw"):
        assert secret not in line


def test_json_records_leave_out_uvicorns_coloured_copy_of_the_message() -> None:
    """uvicorn logs each line twice, plain and with terminal colours (`color_message`); a JSON
    record keeps the plain one only."""
    formatter = JsonLogFormatter(Scrubber([]))
    record = logging.getLogger("uvicorn.error").makeRecord(
        "uvicorn.error", logging.INFO, __file__, 1, "Started server process [%d]", (42,), None,
        extra={"color_message": "Started server process [\x1b[36m%d\x1b[0m]"},
    )  # fmt: skip
    parsed = json.loads(formatter.format(record))
    assert parsed["event"] == "Started server process [42]"
    assert "color_message" not in parsed
    assert "\x1b" not in json.dumps(parsed) and "\\u001b" not in formatter.format(record)
