"""Notifications against a real HTTP receiver (http.server in a thread): the outbox makes the
deliveries from the job event log (after the commit, once each, in commit order on PostgreSQL
too), the signed POST arrives as the README documents it, is retried with the same id until
accepted, survives the kill of the worker that owed it, goes only where it is allowed, and bad
specs are a 422 naming the field."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from jobs import experiments, lifecycle, retention, submission
from jobs.accounts import NO_ACCOUNTS
from jobs.db import session_scope
from jobs.notifications import delivery, outbox
from jobs.settings import get_settings
from jobs.specs import NOTIFY_EVENTS, ExperimentCreate, JobCreate
from jobs.tables import TERMINAL_STATUSES, EventCursor, NotificationDelivery
from tests.conftest import service_environment
from tests.support import drive_job, free_port, start_api, start_worker, wait_for, wait_for_status
from worker.notifier import read_outbox, send_due

SECRET = "notify-test-secret-5e1f"


def verify(secret: str, headers: dict[str, str], body: bytes, max_age: float = 300) -> bool:
    """The receiver's check, as the README gives it."""
    timestamp = headers["X-Notification-Timestamp"]
    expected = (
        "sha256="
        + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    )
    fresh = abs(time.time() - int(timestamp)) <= max_age
    return fresh and hmac.compare_digest(expected, headers["X-Signature-SHA256"])


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A local HTTP server that records each POST and answers with the next status of
    `answers` (then 200). `hold` makes the first request wait, unanswered, until released."""

    answers: list[int] = field(default_factory=list)
    # Headers sent with each answer (a redirect's Location).
    answer_headers: dict[str, str] = field(default_factory=dict)
    hold: bool = False
    received: list[Received] = field(default_factory=list)
    first_arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/cifar?team=ml"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.received.append(Received(dict(self.headers.items()), body))
            if len(state.received) == 1:
                state.first_arrived.set()
                if state.hold:
                    state.release.wait(60)
                    return  # the sender is gone: no answer
            status = state.answers.pop(0) if state.answers else 200
            self.send_response(status)
            for name, value in state.answer_headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    state.release.set()
    server.shutdown()
    server.server_close()


SPEC = {"block": "mobile", "hyperparameters": {"epochs": 2}, "train_samples": 10}


def test_the_events_are_the_final_statuses() -> None:
    assert set(NOTIFY_EVENTS) == {status.value for status in TERMINAL_STATUSES}


def test_bad_notify_specs_are_a_422_naming_the_field(
    configure: Any, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    configure(database_url, NOTIFY_SECRET=SECRET)
    cases = {
        "ftp://hooks.example.org/x": "must be an http or https URL",
        "http://127.0.0.1:9/x": "non-public address",
        "http://10.1.2.3/x": "non-public address",
        "http://169.254.169.254/latest/meta-data": "non-public address",
        "http://[::1]/x": "non-public address",
        "http://[::ffff:192.168.0.1]/x": "non-public address",
        "http://localhost:8000/x": "names this machine",
        "http://localhost./x": "names this machine",
        "http://127.1/x": "non-public address",
        "http://2130706433/x": "non-public address",
        "http://0x7f000001/x": "non-public address",
        "http://0x7f.1/x": "non-public address",
        "http://017700000001/x": "non-public address",
        "http://127.0.0.1./x": "non-public address",
        "http://0/x": "non-public address",
        "http://[0:0:0:0:0:0:0:1]/x": "non-public address",
        "http://[::ffff:7f00:1]/x": "non-public address",
        "http://[2002:7f00:1::]/x": "non-public address",
        "http://10.1/x": "non-public address",
        "http://1.2.3.4.5/x": "neither a host name nor an IPv4 address",
        "https://user:pw@hooks.example.org/x": "credentials",
        "not a url": "http or https",
    }
    with TestClient(create_app()) as client:
        for url, message in cases.items():
            response = client.post("/jobs", json={**SPEC, "notify": {"url": url}})
            assert response.status_code == 422, (url, response.text)
            fields = response.json()["fields"]
            assert fields[0]["field"] == "notify.url" and message in fields[0]["message"], url
        not_final = client.post(
            "/jobs",
            json={**SPEC, "notify": {"url": "https://hooks.example.org/x", "events": ["running"]}},
        )
        assert (
            not_final.status_code == 422
            and not_final.json()["fields"][0]["field"] == "notify.events.0"
        )
        experiment = client.post(
            "/experiments",
            json={"name": "e", "blocks": ["mobile"], "notify": {"url": "gopher://x.org/"}},
        )
        assert experiment.status_code == 422
        assert experiment.json()["fields"][0]["field"] == "notify.url"
        good = client.post("/jobs", json={**SPEC, "notify": {"url": "https://hooks.example.org/x"}})
        assert good.status_code == 202, good.text
        assert good.json()["spec"]["notify"] == {
            "url": "https://hooks.example.org/x",
            "events": ["succeeded", "failed", "cancelled", "pruned"],
        }
        assert "notify" not in client.post("/jobs", json=SPEC).json()["spec"]
    monkeypatch.delenv("NOTIFY_SECRET")
    configure(database_url)  # no NOTIFY_SECRET: the server cannot sign
    with TestClient(create_app()) as client:
        off = client.post("/jobs", json={**SPEC, "notify": {"url": "https://hooks.example.org/x"}})
        assert off.status_code == 422 and off.json()["fields"][0]["field"] == "notify"
        assert "NOTIFY_SECRET" in off.json()["fields"][0]["message"]


def deliveries() -> list[NotificationDelivery]:
    """The deliveries once the outbox has read the log (as the worker's notifier does)."""
    read_outbox()
    with session_scope() as session:
        return list(
            session.execute(
                select(NotificationDelivery).order_by(NotificationDelivery.id)
            ).scalars()
        )


def test_a_receiver_that_fails_twice_gets_the_same_signed_notification_three_times(
    configure: Any, database_url: str, receiver: Receiver
) -> None:
    configure(
        database_url,
        NOTIFY_SECRET=SECRET,
        NOTIFY_ALLOWED_HOSTS="127.0.0.1",
        NOTIFY_BACKOFF_SECONDS="0.2",
    )
    receiver.answers = [500, 503]
    spec = JobCreate.model_validate({**SPEC, "name": "told", "notify": {"url": receiver.url}})
    with session_scope() as session:
        job_id = submission.create_job(session, spec, settings=get_settings()).job.id
    drive_job(job_id, 2, finish="succeeded")
    (row,) = deliveries()
    assert (row.state, row.event, row.subject_id, row.attempts) == (
        "pending",
        "succeeded",
        job_id,
        0,
    )

    settings = get_settings()
    wait_for(
        lambda: send_due(settings) == 0 and len(receiver.received) == 3,
        timeout=20,
        interval=0.1,
        what="three attempts",
    )
    first, second, third = receiver.received
    assert first.body == second.body == third.body
    ids = {item.headers["X-Notification-ID"] for item in receiver.received}
    assert ids == {row.delivery_id}
    for item in receiver.received:
        assert verify(SECRET, item.headers, item.body)
        assert not verify("another-secret", item.headers, item.body)
        assert item.headers["X-Notification-Event"] == "job.succeeded"
        assert item.headers["Content-Type"] == "application/json"
        assert item.headers["Host"] == f"127.0.0.1:{receiver.port}"
    tampered = third.body.replace(b'"succeeded"', b'"failed"', 1)
    assert not verify(SECRET, third.headers, tampered)

    body = json.loads(third.body)
    assert body["event"] == "succeeded" and body["subject"] == "job"
    assert body["delivery_id"] == row.delivery_id
    job = body["job"]
    assert (job["id"], job["name"], job["status"], job["epochs_done"]) == (
        job_id,
        "told",
        "succeeded",
        2,
    )
    assert job["final_test_accuracy"] == pytest.approx(0.1)
    assert job["links"]["self"] == f"/jobs/{job_id}"

    (row,) = deliveries()
    assert (row.state, row.attempts, row.last_status) == ("delivered", 3, 200)
    assert send_due(settings) == 0 and len(receiver.received) == 3  # never again


def test_only_the_asked_events_and_an_experiment_once_when_its_last_job_ends(
    configure: Any, database_url: str, receiver: Receiver
) -> None:
    configure(database_url, NOTIFY_SECRET=SECRET, NOTIFY_ALLOWED_HOSTS="127.0.0.1")
    only_failures = JobCreate.model_validate(
        {**SPEC, "notify": {"url": receiver.url, "events": ["failed"]}}
    )
    experiment_spec = ExperimentCreate.model_validate(
        {
            "name": "grid",
            "blocks": ["mobile", "plain"],
            "hyperparameters": {"epochs": 1},
            "notify": {"url": receiver.url, "events": ["cancelled", "failed"]},
        }
    )
    with session_scope() as session:
        quiet_job = submission.create_job(session, only_failures, settings=get_settings()).job.id
        made = experiments.create_experiment(session, experiment_spec, settings=get_settings())
        experiment_id = made.experiment.id
        members = [job.id for job in made.experiment.jobs]
    drive_job(quiet_job, 1, finish="succeeded")
    drive_job(members[0], 1, finish="succeeded")
    assert deliveries() == []  # one job of two ended; a success was not asked for
    with session_scope() as session:
        lifecycle.cancel_job(session, members[1])
    (row,) = deliveries()
    assert (row.subject, row.subject_id, row.event) == ("experiment", experiment_id, "cancelled")

    send_due(get_settings())
    (received,) = receiver.received
    assert verify(SECRET, received.headers, received.body)
    body = json.loads(received.body)
    assert received.headers["X-Notification-Event"] == "experiment.cancelled"
    summary = body["experiment"]
    assert (summary["id"], summary["name"], summary["status"]) == (
        experiment_id,
        "grid",
        "cancelled",
    )
    assert {job["id"]: job["status"] for job in summary["jobs"]} == {
        members[0]: "succeeded",
        members[1]: "cancelled",
    }


def test_a_name_that_resolves_to_a_private_address_is_refused_when_sending(
    configure: Any, sqlite_url: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The URL passed the check at submission (a public-looking name); when sending, the name
    resolves to loopback (a rebinding DNS answer): nothing is sent, the delivery fails."""
    configure(sqlite_url, NOTIFY_SECRET=SECRET)
    url = f"http://hooks.example.org:{receiver.port}/x"
    spec = JobCreate.model_validate({**SPEC, "notify": {"url": url}})
    with session_scope() as session:
        job_id = submission.create_job(session, spec, settings=get_settings()).job.id
    drive_job(job_id, 1, finish="failed")

    real = socket.getaddrinfo

    def rebinding(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "hooks.example.org":
            return real("127.0.0.1", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    read_outbox()
    assert send_due(get_settings()) == 1
    (row,) = deliveries()
    assert row.state == "failed" and row.attempts == 1
    assert "non-public address (127.0.0.1)" in (row.last_error or "")
    assert receiver.received == []


@pytest.mark.e2e
def test_a_notification_arrives_after_the_worker_that_owed_it_is_killed(
    tmp_path: Path, dataset_root: Path, receiver: Receiver
) -> None:
    """A real job trained by a real worker; its notification's first POST is held by the
    receiver, the worker is killed (SIGKILL) mid-request, and a new worker delivers it: same id,
    same body, signed."""
    from jobs.migrations import upgrade

    receiver.hold = True
    env = service_environment(
        tmp_path,
        f"sqlite:///{tmp_path / 'jobs.sqlite3'}",
        dataset_root,
        NOTIFY_SECRET=SECRET,
        NOTIFY_ALLOWED_HOSTS="127.0.0.1",
        NOTIFY_TIMEOUT_SECONDS="2",
        NOTIFY_BACKOFF_SECONDS="0.5",
    )
    upgrade(env["DATABASE_URL"])
    port = free_port()
    api_process = start_api(env, tmp_path, port)
    first_worker = start_worker(env, tmp_path, name="first")
    second_worker = None
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as api:
            job = {
                "block": "mobile",
                "hyperparameters": {"epochs": 1, "batch_size": 32},
                "train_samples": 64,
                "test_samples": 32,
                "notify": {"url": receiver.url, "events": ["succeeded"]},
            }
            response = api.post("/jobs", json=job)
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]
            assert wait_for_status(api, job_id, ("succeeded", "failed"))["status"] == "succeeded"
        assert receiver.first_arrived.wait(60), first_worker.output()
        first_worker.kill()  # mid-request: the receiver has not answered
        receiver.release.set()
        (row,) = deliveries_at(env["DATABASE_URL"])
        assert (row.state, row.attempts) == ("pending", 1)

        second_worker = start_worker(env, tmp_path, name="second")
        wait_for(lambda: len(receiver.received) >= 2, timeout=90, what="the second attempt")
        wait_for(
            lambda: deliveries_at(env["DATABASE_URL"])[0].state == "delivered",
            timeout=30,
            what="the delivery recorded",
        )
    finally:
        if second_worker is not None:
            second_worker.stop()
        first_worker.stop()
        api_process.stop()
    first, second = receiver.received[:2]
    assert first.body == second.body
    assert first.headers["X-Notification-ID"] == second.headers["X-Notification-ID"]
    assert verify(SECRET, second.headers, second.body)
    assert json.loads(second.body)["job"]["id"] == job_id
    assert "delivered to 127.0.0.1" in second_worker.output()


def deliveries_at(database_url: str) -> list[NotificationDelivery]:
    with session_scope(database_url) as session:
        return list(session.execute(select(NotificationDelivery)).scalars())


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"event":"succeeded"}'
    signature = delivery.sign("k", "1700000000", body)
    assert (
        signature == "sha256=" + hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    )


def stored_deliveries() -> list[NotificationDelivery]:
    """The deliveries as they are, without reading the log first."""
    with session_scope() as session:
        return list(session.execute(select(NotificationDelivery)).scalars())


def notified_job(url: str, **fields: Any) -> int:
    spec = JobCreate.model_validate({**SPEC, **fields, "notify": {"url": url}})
    with session_scope() as session:
        return submission.create_job(session, spec, settings=get_settings()).job.id


def test_the_outbox_makes_each_delivery_from_the_log_once_and_not_the_lifecycle(
    configure: Any, database_url: str
) -> None:
    configure(database_url, NOTIFY_SECRET=SECRET, NOTIFY_ALLOWED_HOSTS="hooks.example.org")
    job_id = notified_job("https://hooks.example.org/x")
    drive_job(job_id, 1, finish="succeeded")
    assert stored_deliveries() == []  # ending the job made none: the outbox does
    with session_scope() as session:
        assert outbox.consume(session) == 3  # queued, running, succeeded
    (row,) = stored_deliveries()
    assert (row.subject, row.subject_id, row.event) == ("job", job_id, "succeeded")
    with session_scope() as session:
        assert outbox.consume(session) == 0  # the cursor moved past them
    with session_scope() as session:  # read again from the start: nothing new is made
        session.execute(update(EventCursor).values(event_id=0))
    read_outbox()
    assert [item.delivery_id for item in stored_deliveries()] == [row.delivery_id]


def test_a_pass_that_fails_midway_makes_nothing_and_keeps_its_cursor(
    configure: Any, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deliveries and the cursor commit together: a consumer that dies after making some
    leaves neither, and the next pass makes them all."""
    configure(database_url, NOTIFY_SECRET=SECRET, NOTIFY_ALLOWED_HOSTS="hooks.example.org")
    first, second = (notified_job("https://hooks.example.org/x") for _ in range(2))
    drive_job(first, 1, finish="succeeded")
    drive_job(second, 1, finish="failed")
    real = outbox._add_delivery
    made: list[int] = []

    def dies_after_the_first(session: Any, subject: str, subject_id: int, *args: Any) -> None:
        if made:
            raise ConnectionError("killed")
        real(session, subject, subject_id, *args)
        made.append(subject_id)

    monkeypatch.setattr(outbox, "_add_delivery", dies_after_the_first)
    with pytest.raises(ConnectionError):
        read_outbox()
    assert made == [first] and stored_deliveries() == []
    monkeypatch.setattr(outbox, "_add_delivery", real)
    assert {(row.subject_id, row.event) for row in deliveries()} == {
        (first, "succeeded"),
        (second, "failed"),
    }


def test_an_end_committed_after_a_later_one_is_still_delivered(
    configure: Any, database_url: str
) -> None:
    """On PostgreSQL an event's id is handed out before its commit: job A's end takes the lower
    id but commits after job B's. A reader that went by id alone would move past A's id with
    B's and never make A's delivery."""
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite's one writer commits events in id order: the race cannot happen")
    configure(database_url, NOTIFY_SECRET=SECRET, NOTIFY_ALLOWED_HOSTS="hooks.example.org")
    slow, fast = (notified_job("https://hooks.example.org/x") for _ in range(2))
    claims = {job_id: drive_job(job_id, 1) for job_id in (slow, fast)}
    with session_scope() as held:
        assert lifecycle.finish_job(held, claims[slow], lifecycle.JobStatus.SUCCEEDED)
        held.flush()
        with session_scope() as session:
            assert lifecycle.finish_job(session, claims[fast], lifecycle.JobStatus.FAILED)
        read_outbox()  # sees B's end committed, A's still being written
        assert stored_deliveries() == []
    read_outbox()
    assert {(row.subject_id, row.event) for row in stored_deliveries()} == {
        (slow, "succeeded"),
        (fast, "failed"),
    }


def test_a_long_transaction_in_another_database_does_not_hold_the_outbox_back(
    configure: Any, database_url: str
) -> None:
    """The outbox waits only for this database's writers of the log: a transaction left open
    in another database of the same server (a backup, a report) delays nothing."""
    if database_url.startswith("sqlite"):
        pytest.skip("a PostgreSQL server's other databases")
    from sqlalchemy import create_engine, text

    from tests.conftest import POSTGRES_ADMIN_URL

    configure(database_url, NOTIFY_SECRET=SECRET, NOTIFY_ALLOWED_HOSTS="hooks.example.org")
    job_id = notified_job("https://hooks.example.org/x")
    drive_job(job_id, 1, finish="succeeded")
    other = create_engine(POSTGRES_ADMIN_URL)
    try:
        with other.connect() as connection:
            connection.execute(text("SELECT txid_current()"))  # holds a transaction id, open
            (row,) = deliveries()
            assert (row.subject_id, row.event) == (job_id, "succeeded")
    finally:
        other.dispose()


def test_a_job_deleted_before_the_outbox_read_its_end_is_still_notified(
    configure: Any, database_url: str
) -> None:
    configure(database_url, NOTIFY_SECRET=SECRET, NOTIFY_ALLOWED_HOSTS="hooks.example.org")
    job_id = notified_job("https://hooks.example.org/x")
    drive_job(job_id, 1, finish="succeeded")
    retention.delete_job_now(get_settings(), job_id, actor=NO_ACCOUNTS)
    (row,) = deliveries()
    assert (row.subject_id, row.event) == (job_id, "succeeded")
    assert json.loads(row.body)["job"]["id"] == job_id


def test_a_receiver_that_redirects_fails_at_once_saying_why(
    configure: Any, database_url: str, receiver: Receiver
) -> None:
    configure(database_url, NOTIFY_SECRET=SECRET, NOTIFY_ALLOWED_HOSTS="127.0.0.1")
    receiver.answers = [302]
    receiver.answer_headers = {"Location": "https://elsewhere.example.org/hook"}
    drive_job(notified_job(receiver.url), 1, finish="succeeded")
    read_outbox()
    assert send_due(get_settings()) == 1
    (row,) = deliveries()
    assert (row.state, row.attempts, row.last_status) == ("failed", 1, 302)
    assert "redirect to elsewhere.example.org" in (row.last_error or "")
    assert send_due(get_settings()) == 0 and len(receiver.received) == 1
