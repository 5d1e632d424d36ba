"""The job event log and the event streams (Server-Sent Events).

Database tier (SQLite and PostgreSQL): one event per status change and per newly stored epoch,
written with the change, in seq order; the experiment cursor; `events_after`; the in-process
hub (one read per change whatever the number of listeners, a slow listener re-reads, the
LISTEN connection lost). End-to-end: a real API and worker, streams read over HTTP, a
reconnect with Last-Event-ID, PostgreSQL's LISTEN/NOTIFY, and 200 listeners at once."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select, text

from app.streams import (
    WATCHER_APPLICATION_NAME,
    EventHub,
    experiment_event_stream,
    job_event_stream,
)
from jobs import lifecycle, metrics
from jobs.db import get_engine, session_scope
from jobs.events import (
    STATUS_FIELDS,
    decode_cursor,
    decode_job_event_id,
    encode_cursor,
    events_after,
    last_experiment_event,
    record_event,
)
from jobs.lifecycle import (
    claim_job,
    finish_job,
    reap_expired_leases,
    record_epoch,
    release_job,
    repair_history,
)
from jobs.tables import Job, JobEvent, experiment_status, utcnow
from tests.builders import new_job_id, new_jobs
from tests.conftest import service_environment
from tests.support import (
    add_experiment,
    drive_job,
    epoch_row,
    free_port,
    listen_to_events,
    read_event_stream,
    start_api,
    start_worker,
    wait_for,
)

STATUS_KEYS = {"job_id", "ended", *STATUS_FIELDS}
EPOCH_KEYS = {"job_id", *metrics.METRIC_NAMES}


def create_job() -> int:
    return new_job_id()


def logged(job_id: int) -> list[tuple[int, str, dict[str, Any]]]:
    """(seq, kind, data) of the job's events, in id order."""
    with session_scope(write=False) as session:
        rows = session.execute(
            select(JobEvent.seq, JobEvent.kind, JobEvent.data)
            .where(JobEvent.job_id == job_id)
            .order_by(JobEvent.id)
        ).all()
        event_seq = session.execute(select(Job.event_seq).where(Job.id == job_id)).scalar_one()
    assert [row.seq for row in rows] == list(range(1, len(rows) + 1))
    assert event_seq == len(rows)
    return [(row.seq, row.kind, row.data) for row in rows]


def events_of(job_id: int) -> list[Any]:
    with session_scope(write=False) as session:
        return events_after(session, job_ids=[job_id])


def statuses(job_id: int) -> list[str]:
    return [data["status"] for _, kind, data in logged(job_id) if kind == "status"]


@pytest.fixture
def db_settings() -> dict[str, str]:
    return {"MAX_ATTEMPTS": "2"}


# --- the log -------------------------------------------------------------------------------


def test_each_change_of_a_job_is_logged_once_in_order(db: str) -> None:
    job_id = create_job()
    with session_scope() as session:
        claim = claim_job(session, job_id, worker="a", lease_seconds=30)
    assert claim is not None
    for _ in range(2):  # recording an epoch again stores nothing and logs nothing
        with session_scope() as session:
            record_epoch(session, claim, epoch_row(1, 0.3), lease_seconds=30)
    with session_scope() as session:
        record_epoch(session, claim, epoch_row(2, 0.6), lease_seconds=30)
    with session_scope() as session:
        assert finish_job(session, claim, "succeeded")
    with session_scope() as session:  # a second finish changes nothing: no event either
        assert not finish_job(session, claim, "succeeded")

    events = logged(job_id)
    assert [(kind, data.get("status") or data.get("epoch")) for _, kind, data in events] == [
        ("status", "queued"),
        ("status", "running"),
        ("epoch", 1),
        ("epoch", 2),
        ("status", "succeeded"),
    ]
    for _, kind, data in events:
        assert set(data) == (STATUS_KEYS if kind == "status" else EPOCH_KEYS)
        assert data["job_id"] == job_id
    assert events[1][2]["attempt"] == 1
    assert events[2][2] == {"job_id": job_id, **epoch_row(1, 0.3)}
    assert events[4][2] | {"job_id": 0} == {
        "job_id": 0,
        "status": "succeeded",
        "ended": True,
        "epochs_done": 2,
        "epochs_total": 3,
        "attempt": 1,
        "cancel_requested": False,
        "error_reason": None,
        "error": None,
        "best_test_accuracy": 0.6,
        "final_test_accuracy": 0.6,
        "final_train_loss": 0.5,
    }


def test_cancel_is_logged_once(db: str) -> None:
    queued = create_job()
    for _ in range(2):  # cancelling twice is harmless and logs one change
        with session_scope() as session:
            lifecycle.cancel_job(session, queued)
    assert statuses(queued) == ["queued", "cancelled"]

    running = create_job()
    with session_scope() as session:
        claim = claim_job(session, running, worker="a", lease_seconds=30)
    assert claim is not None
    for _ in range(2):
        with session_scope() as session:
            lifecycle.cancel_job(session, running)
    with session_scope() as session:
        assert release_job(session, claim) == "cancelled"
    events = logged(running)
    assert [(data["status"], data["cancel_requested"]) for _, _, data in events] == [
        ("queued", False),
        ("running", False),
        ("running", True),
        ("cancelled", True),
    ]


def test_release_and_the_reaper_are_logged(db: str) -> None:
    job_id = create_job()
    with session_scope() as session:
        claim = claim_job(session, job_id, worker="a", lease_seconds=30)
    assert claim is not None
    with session_scope() as session:
        assert release_job(session, claim) == "queued"
    for attempt in (1, 2):  # MAX_ATTEMPTS=2: re-queued once, then failed
        with session_scope() as session:
            assert claim_job(session, job_id, worker=f"w{attempt}", lease_seconds=0.01)
        with session_scope() as session:
            reap_expired_leases(session, now=utcnow() + timedelta(seconds=1))
    events = logged(job_id)
    assert statuses(job_id) == ["queued", "running", "queued", "running", "queued", "running",
                                "failed"]  # fmt: skip
    assert events[-1][2]["error_reason"] == "worker_lost"
    with session_scope() as session:  # an ended job is not reaped again
        assert reap_expired_leases(session, now=utcnow() + timedelta(days=1)) == []
    assert len(logged(job_id)) == len(events)


def test_repaired_epochs_are_logged_in_order_and_only_when_added(db: str) -> None:
    job_id = create_job()
    with session_scope() as session:
        claim = claim_job(session, job_id, worker="a", lease_seconds=30)
        assert claim is not None
        record_epoch(session, claim, epoch_row(2), lease_seconds=30)
    with session_scope() as session:
        added = repair_history(session, claim, [epoch_row(3), epoch_row(1), epoch_row(2, 0.9)])
    assert added == [1, 3]
    epochs = [data["epoch"] for _, kind, data in logged(job_id) if kind == "epoch"]
    assert epochs == [2, 1, 3]
    with session_scope() as session:
        assert repair_history(session, claim, [epoch_row(1), epoch_row(3)]) == []
    assert len(logged(job_id)) == 5


def test_a_diverged_loss_is_logged_as_null(db: str) -> None:
    """Infinity and NaN are not JSON (PostgreSQL's json type refuses them): null in the event,
    while the metrics row keeps the number."""
    job_id = create_job()
    with session_scope() as session:
        claim = claim_job(session, job_id, worker="a", lease_seconds=30)
        assert claim is not None
        record_epoch(session, claim, {**epoch_row(1), "train_loss": math.inf}, lease_seconds=30)
    _, kind, data = logged(job_id)[-1]
    assert kind == "epoch" and data["train_loss"] is None and data["test_accuracy"] == 0.5
    with session_scope(write=False) as session:
        assert metrics.epoch_metrics(session, job_id)[0].train_loss == math.inf


def test_concurrent_writers_of_one_job_get_consecutive_seqs(db: str) -> None:
    """The UPDATE that takes the next seq serialises a job's writers: 4 threads x 10 events
    give seqs 1..41 with no conflict, and id order is seq order."""
    job_id = create_job()
    write_at_once([job_id] * 4, events=10)
    assert len(logged(job_id)) == 41  # the check inside: seqs 1..41 in id order


def write_at_once(job_ids: list[int], *, events: int) -> None:
    """One thread per entry of `job_ids`, each logging `events` events of its job, one
    transaction each, all at once."""
    errors: list[BaseException] = []

    def write(job_id: int) -> None:
        try:
            for index in range(events):
                with session_scope() as session:
                    record_event(session, job_id, "status", {"n": index})
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(job_id,)) for job_id in job_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_an_experiments_events_are_numbered_in_the_order_they_commit(db: str) -> None:
    """Job events take their ids when written, experiment_seq when their transaction commits:
    a transaction that wrote first but commits last gets the later number, so reading "after
    N" never skips one that commits late. 4 threads x 10 events over 4 jobs give 1..41 in
    commit order."""
    jobs = [create_job() for _ in range(4)]
    experiment_id = add_experiment(jobs)  # numbers their first events 1..4
    if db.startswith("postgresql"):
        opened, written = threading.Event(), threading.Event()

        def slow() -> None:
            with session_scope() as session:
                record_event(session, jobs[0], "status", {"slow": True})
                opened.set()
                assert written.wait(30)

        thread = threading.Thread(target=slow)
        thread.start()
        assert opened.wait(30)
        with session_scope() as session:
            record_event(session, jobs[1], "status", {"slow": False})
        written.set()
        thread.join()
        with session_scope(write=False) as session:
            rows = session.execute(
                select(JobEvent.id, JobEvent.experiment_seq, JobEvent.data)
                .where(JobEvent.experiment_id == experiment_id, JobEvent.experiment_seq > 4)
                .order_by(JobEvent.experiment_seq)
            ).all()
        assert [row.data["slow"] for row in rows] == [False, True]
        assert rows[0].id > rows[1].id  # written second, committed first
    write_at_once(jobs, events=10)
    slow_pair = 2 if db.startswith("postgresql") else 0
    with session_scope(write=False) as session:
        numbers = session.execute(
            select(JobEvent.experiment_seq)
            .where(JobEvent.experiment_id == experiment_id)
            .order_by(JobEvent.experiment_seq)
        ).scalars()
        assert list(numbers) == list(range(1, len(jobs) + slow_pair + 40 + 1))


def test_events_after_reads_on_from_a_cursor(db: str) -> None:
    first, second, alone = create_job(), create_job(), create_job()
    drive_job(first, 2, finish="succeeded")  # seqs 1-5
    drive_job(second, 1)  # seqs 1-3
    experiment_id = add_experiment([first, second])
    with session_scope(write=False) as session:
        everything = events_after(session, experiment_id=experiment_id)
        assert [(e.job_id, e.seq) for e in everything if e.job_id == first] == [
            (first, seq) for seq in range(1, 6)
        ]
        assert {e.job_id for e in everything} == {first, second}  # not the third job
        assert all(e.data["job_id"] == e.job_id for e in everything)
        later = events_after(session, experiment_id=experiment_id, cursor={first: 4, second: 1})
        assert [(e.job_id, e.seq) for e in later] == [(first, 5), (second, 2), (second, 3)]
        assert events_after(session, job_ids=[first], cursor={first: 5}) == []
        assert [e.seq for e in events_after(session, job_ids=[alone])] == [1]
        assert everything[-1].ended_status is None
        [finished] = [e for e in everything if e.ended_status is not None]
        assert (finished.job_id, finished.seq, finished.ended_status) == (first, 5, "succeeded")
    with session_scope() as session:  # later events carry the experiment id
        record_event(session, second, "status", {"status": "running"})
    with session_scope(write=False) as session:
        [newest] = events_after(session, experiment_id=experiment_id, cursor={first: 5, second: 3})
        assert (newest.job_id, newest.seq) == (second, 4)


def test_experiment_cursor_encoding() -> None:
    assert encode_cursor({5: 3, 4: 7, 9: 0}) == "4:7.5:3"
    assert decode_cursor("4:7.5:3") == {4: 7, 5: 3}
    assert decode_cursor(encode_cursor({12: 1, 3: 10_000})) == {3: 10_000, 12: 1}
    for malformed in ("", "4", "4:", ":7", "4:7.", "4:7..5:3", "04:7", "4:07", "4:-1", "a:b",
                      "4:7 ", "4:7.4:8", "4;7", "1:99999999999"):  # fmt: skip
        with pytest.raises(ValueError):
            decode_cursor(malformed)
    assert decode_job_event_id("0") == 0 and decode_job_event_id("17") == 17
    for malformed in ("", "07", "-1", "1.0", "+1", " 1", "1:2", "99999999999"):
        with pytest.raises(ValueError):
            decode_job_event_id(malformed)


def test_experiment_status_from_its_jobs() -> None:
    assert experiment_status(["succeeded", "running", "queued"]) == "running"
    assert experiment_status(["succeeded", "queued", "failed"]) == "queued"
    assert experiment_status(["succeeded", "succeeded"]) == "succeeded"
    assert experiment_status(["succeeded", "failed", "cancelled"]) == "failed"
    assert experiment_status(["succeeded", "cancelled"]) == "cancelled"


# --- the routes, in process ----------------------------------------------------------------


def stream_text(client: Any, path: str, **kwargs: Any) -> list[tuple[str, str | None, Any]]:
    """(event, id, data) of a stream that ends (the job has ended), read in process."""
    response = client.get(path, **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = []
    for block in response.text.replace("\r\n", "\n").strip().split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(": ")
            fields[name] = value
        events.append((fields["event"], fields.get("id"), json.loads(fields["data"])))
    return events


def test_a_finished_job_streams_its_history_then_end(client: Any) -> None:
    job_id = client.post("/jobs", json={"block": "mobile"}).json()["id"]
    drive_job(job_id, 2, finish="succeeded")
    events = stream_text(client, f"/jobs/{job_id}/events")
    assert [(name, event_id) for name, event_id, _ in events] == [
        ("status", "1"),
        ("status", "2"),
        ("epoch", "3"),
        ("epoch", "4"),
        ("status", "5"),
        ("end", None),
    ]
    assert events[-1][2] == {"job_id": job_id, "status": "succeeded"}
    assert events[3][2]["epoch"] == 2 and events[4][2]["final_train_loss"] == 2.0

    # Resuming sends only what came later, from the header or the query string.
    later = stream_text(client, f"/jobs/{job_id}/events", headers={"Last-Event-ID": "3"})
    assert [event_id for _, event_id, _ in later] == ["4", "5", None]
    by_query = stream_text(client, f"/jobs/{job_id}/events", params={"last_event_id": "4"})
    assert [event_id for _, event_id, _ in by_query] == ["5", None]
    up_to_date = stream_text(client, f"/jobs/{job_id}/events", headers={"Last-Event-ID": "5"})
    assert up_to_date == [("end", None, {"job_id": job_id, "status": "succeeded"})]

    head = client.head(f"/jobs/{job_id}/events")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"].startswith("text/event-stream")


def test_stream_errors_are_json_and_name_the_header(client: Any) -> None:
    job_id = client.post("/jobs", json={"block": "mobile"}).json()["id"]
    for path in ("/jobs/999/events", "/experiments/999/events", "/jobs/01/events"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"] in ("job_not_found", "experiment_not_found", "not_found")
    # Not in the form of the stream's ids: 400; in that form but naming no event: 409.
    for value, problem, status in (("x", "is not an event id", 400), ("2", "beyond job", 409)):
        response = client.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": value})
        assert response.status_code == status
        body = response.json()
        assert body["error"] == "invalid_last_event_id"
        assert "Last-Event-ID header" in body["detail"] and problem in body["detail"]
    response = client.get(f"/jobs/{job_id}/events", params={"last_event_id": "1.0"})
    assert response.status_code == 400
    assert "last_event_id parameter" in response.json()["detail"]
    experiment_id = add_experiment([job_id])
    for cursor, status in (
        ("x", 400),
        ("1.0", 400),
        ("2", 409),  # beyond the experiment's one event
        (f"{job_id}:9", 409),
        (f"{job_id + 1}:1", 409),
        (f"{job_id}:1.{job_id}:1", 409),
    ):
        response = client.get(
            f"/experiments/{experiment_id}/events", headers={"Last-Event-ID": cursor}
        )
        assert response.status_code == status, cursor
        assert response.json()["error"] == "invalid_last_event_id"


def test_a_finished_experiment_streams_every_job_with_numbered_ids(client: Any) -> None:
    first = client.post("/jobs", json={"block": "mobile"}).json()["id"]
    second = client.post("/jobs", json={"block": "plain"}).json()["id"]
    drive_job(first, 1, finish="succeeded")
    drive_job(second, 1, finish="failed")
    experiment_id = add_experiment([first, second])
    events = stream_text(client, f"/experiments/{experiment_id}/events")
    assert events[-1] == ("end", None, {"experiment_id": experiment_id, "status": "failed"})
    ids = [event_id for _, event_id, _ in events[:-1]]
    assert ids == [str(number) for number in range(1, 9)]
    with session_scope(write=False) as session:
        assert last_experiment_event(session, experiment_id) == 8
    # From any event's id, a reconnect gets exactly the events after it; so it does from the
    # per-job cursor the stream's ids were before (job: its last event seen).
    seen: dict[int, int] = {}
    for index, event_id in enumerate(ids):
        job_id = events[index][2]["job_id"]
        seen[job_id] = seen.get(job_id, 0) + 1
        for resume in (event_id, encode_cursor(seen)):
            rest = stream_text(
                client, f"/experiments/{experiment_id}/events", headers={"Last-Event-ID": resume}
            )
            assert rest == events[index + 1 :], resume


def test_an_experiments_last_event_id_follows_only_what_happens_next(client: Any) -> None:
    """The dashboard's way in: read the experiment, then stream from its last_event_id."""
    body = {"name": "two", "blocks": ["mobile", "plain"], "hyperparameters": {"epochs": 1}}
    experiment = client.post("/experiments", json=body).json()
    jobs = [job["job_id"] for job in experiment["jobs"]]
    read = client.get(f"/experiments/{experiment['id']}").json()
    assert read["last_event_id"] == "2"  # each job's first status
    assert client.get("/experiments").json()["items"][0]["last_event_id"] is None
    for job_id in jobs:
        drive_job(job_id, 1, finish="succeeded")
    everything = stream_text(client, f"/experiments/{experiment['id']}/events")
    since = stream_text(
        client,
        f"/experiments/{experiment['id']}/events",
        params={"last_event_id": read["last_event_id"]},
    )
    assert since == everything[2:] and len(since) == 2 * 3 + 1


@pytest.mark.slow
def test_an_experiment_id_stays_one_number_however_many_jobs(client: Any) -> None:
    """130 jobs with 4 events each, read in two pages: every id is the event's number, not a
    cursor of every job seen."""
    jobs = new_jobs(130)
    experiment_id = add_experiment(jobs)
    for job_id in jobs:
        drive_job(job_id, 1, finish="succeeded")
    events = stream_text(client, f"/experiments/{experiment_id}/events")
    ids = [int(event_id) for _, event_id, _ in events[:-1]]
    assert ids == list(range(1, 521))
    assert events[-1] == ("end", None, {"experiment_id": experiment_id, "status": "succeeded"})


# --- the hub, in process ----------------------------------------------------------------------


class StatementCounter:
    """Counts this process's SELECTs that read job events (the watcher's and the streams')."""

    def __init__(self) -> None:
        self.reads = 0

    def __call__(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().upper().startswith("SELECT JOB_EVENTS.JOB_ID"):
            self.reads += 1


@pytest.fixture
def count_event_reads(db: str) -> Iterator[StatementCounter]:
    counter = StatementCounter()
    engine = get_engine(write=False)
    event.listen(engine, "before_cursor_execute", counter)
    yield counter
    event.remove(engine, "before_cursor_execute", counter)


async def collect(
    stream: AsyncIterator[Any], into: list[tuple[str, str | None, Any]], first: asyncio.Event
) -> None:
    async for sse in stream:
        into.append((sse.event, sse.id, json.loads(sse.data)))
        first.set()


async def follow_all(
    hub: EventHub, job_id: int, listeners: int
) -> tuple[list[list[Any]], list[asyncio.Task[None]]]:
    """Start listeners on the job's stream; return once each has its catch-up."""
    received: list[list[Any]] = [[] for _ in range(listeners)]
    firsts = [asyncio.Event() for _ in range(listeners)]
    tasks = [
        asyncio.create_task(collect(job_event_stream(hub, job_id, 0), into, first))
        for into, first in zip(received, firsts, strict=True)
    ]
    await asyncio.wait_for(asyncio.gather(*(first.wait() for first in firsts)), 30)
    return received, tasks


def expected_stream(job_id: int) -> list[tuple[str, str | None, Any]]:
    with session_scope(write=False) as session:
        history = events_after(session, job_ids=[job_id])
    ended = history[-1].ended_status
    assert ended is not None
    return [(e.kind, str(e.seq), e.data) for e in history] + [
        ("end", None, {"job_id": job_id, "status": ended})
    ]


def test_one_read_per_change_serves_every_listener(count_event_reads: StatementCounter) -> None:
    job_id = create_job()
    listeners = 30

    async def scenario() -> list[list[Any]]:
        hub = EventHub(sqlite_poll_seconds=0.05)
        received, tasks = await follow_all(hub, job_id, listeners)
        catch_up_reads = count_event_reads.reads
        assert catch_up_reads >= listeners  # each listener read its own history once
        await asyncio.to_thread(drive_job, job_id, 3, finish="succeeded")
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        live_reads = count_event_reads.reads - catch_up_reads
        # 5 events written (claim, 3 epochs, finish), read at most once each by the watcher
        # (fewer when one read finds several) and by no listener: not 30 x 5.
        assert 1 <= live_reads <= 8, live_reads
        await hub.stop()
        return received

    received = asyncio.run(scenario())
    expected = expected_stream(job_id)
    assert len(expected) == 7
    for events in received:
        assert events == expected


def test_a_listener_that_falls_behind_reads_again(db: str) -> None:
    job_id = create_job()

    async def scenario() -> list[Any]:
        hub = EventHub(sqlite_poll_seconds=0.05, backlog=1)
        stream = job_event_stream(hub, job_id, 0)
        received = [await anext(stream)]  # the history; then this client reads nothing
        await asyncio.to_thread(drive_job, job_id, 3, finish="succeeded")
        # The hub hands out all 5 new events (more than the backlog of 1) meanwhile.
        deadline = time.monotonic() + 20
        while hub._handed_out.get(job_id) != 6:
            assert time.monotonic() < deadline, "the hub never read the new events"
            await asyncio.sleep(0.05)
        received += [sse async for sse in stream]
        await hub.stop()
        return [(sse.event, sse.id, json.loads(sse.data)) for sse in received]

    assert asyncio.run(scenario()) == expected_stream(job_id)


def test_an_experiment_stream_follows_all_its_jobs_live(db: str) -> None:
    first, second = create_job(), create_job()
    experiment_id = add_experiment([first, second])

    async def scenario() -> list[Any]:
        hub = EventHub(sqlite_poll_seconds=0.05)
        received: list[Any] = []
        ready = asyncio.Event()
        task = asyncio.create_task(
            collect(experiment_event_stream(hub, experiment_id, 0), received, ready)
        )
        await asyncio.wait_for(ready.wait(), 30)
        await asyncio.to_thread(drive_job, first, 2, finish="succeeded")
        await asyncio.sleep(0.3)
        assert not task.done()  # the second job has not ended
        await asyncio.to_thread(drive_job, second, 1, finish="cancelled")
        await asyncio.wait_for(task, 30)
        await hub.stop()
        return received

    received = asyncio.run(scenario())
    assert received[-1] == ("end", None, {"experiment_id": experiment_id, "status": "cancelled"})
    ids = [int(event_id) for _, event_id, _ in received[:-1]]
    assert ids == list(range(1, 5 + 4 + 1))  # each job's history and live events, once each
    per_job = [(data["job_id"], data) for _, _, data in received[:-1]]
    assert [data for job_id, data in per_job if job_id == first] == [
        event.data for event in events_of(first)
    ]
    assert [data for job_id, data in per_job if job_id == second] == [
        event.data for event in events_of(second)
    ]


def test_the_listener_reconnects_and_nothing_is_lost_meanwhile(db: str) -> None:
    if not db.startswith("postgresql"):
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; SQLite is polled")
    job_id = create_job()
    watcher_connections = (
        "SELECT {} FROM pg_stat_activity WHERE application_name = "
        f"'{WATCHER_APPLICATION_NAME}' AND datname = current_database()"
    )

    def listening() -> int:
        with session_scope(write=False) as session:
            return int(session.execute(text(watcher_connections.format("count(*)"))).scalar_one())

    def cut_the_listener() -> None:
        with session_scope() as session:
            session.execute(text(watcher_connections.format("pg_terminate_backend(pid)")))

    async def scenario() -> list[list[Any]]:
        hub = EventHub()
        received, tasks = await follow_all(hub, job_id, 3)
        await asyncio.to_thread(wait_for, listening, timeout=10, what="the LISTEN connection")
        await asyncio.to_thread(cut_the_listener)
        await asyncio.to_thread(drive_job, job_id, 2)  # while it is down or reconnecting
        await asyncio.to_thread(wait_for, listening, timeout=20, what="a new LISTEN connection")
        await asyncio.to_thread(cancel_with_a_dead_worker, job_id)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        await hub.stop()
        return received

    received = asyncio.run(scenario())
    expected = expected_stream(job_id)
    assert [name for name, _, _ in expected][-2:] == ["status", "end"]
    for events in received:
        assert events == expected


def cancel_with_a_dead_worker(job_id: int) -> None:
    """Cancel the running job, then let the reaper end it as its worker's lease ran out."""
    with session_scope() as session:
        session.execute(
            text("UPDATE jobs SET lease_expires_at = :past WHERE id = :id"),
            {"past": utcnow() - timedelta(seconds=1), "id": job_id},
        )
    with session_scope() as session:
        lifecycle.cancel_job(session, job_id)
    with session_scope() as session:
        reap_expired_leases(session)  # the cancelled job's dead worker: cancelled


# --- end to end ------------------------------------------------------------------------------

STREAMED_JOB = {
    "block": "mobile",
    "dataset": "cifar100",
    "hyperparameters": {"epochs": 3, "batch_size": 16, "seed": 3},
    "train_samples": 32,
    "test_samples": 16,
    "name": "streamed",
}


def check_complete(events: list[Any], job_id: int) -> None:
    """A whole job stream: contiguous ids from 1, every epoch once, then end."""
    assert [e.event for e in events][-1] == "end"
    assert [e.id for e in events[:-1]] == [str(seq) for seq in range(1, len(events))]
    assert [e.json()["epoch"] for e in events if e.event == "epoch"] == [1, 2, 3]
    statuses = [e.json()["status"] for e in events if e.event == "status"]
    assert statuses[0] == "queued" and statuses[-1] == "succeeded" and "running" in statuses
    assert events[-1].json() == {"job_id": job_id, "status": "succeeded"}


def stream_a_job_with_a_reconnect(env: dict[str, str], tmp_path: Path) -> None:
    from jobs.migrations import upgrade

    upgrade(env["DATABASE_URL"])
    port = free_port()
    api = start_api(env, tmp_path, port)
    worker = None
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            job_id = client.post("/jobs", json=STREAMED_JOB).json()["id"]
            results: dict[str, list[Any]] = {}

            def whole() -> None:
                results["whole"] = read_event_stream(client, f"/jobs/{job_id}/events")

            reader = threading.Thread(target=whole)
            reader.start()
            if env["DATABASE_URL"].startswith("postgresql"):
                # The API follows the job through LISTEN, not by polling.
                wait_for(
                    lambda: watcher_listens(env["DATABASE_URL"]),
                    timeout=20,
                    what="the API's LISTEN connection",
                )
            worker = start_worker(env, tmp_path)
            # Disconnect after the first epoch, then resume from the last id received.
            first_part = read_event_stream(
                client, f"/jobs/{job_id}/events", stop=lambda e: e.event == "epoch"
            )
            assert first_part[-1].json()["epoch"] == 1
            rest = read_event_stream(
                client, f"/jobs/{job_id}/events", headers={"Last-Event-ID": first_part[-1].id}
            )
            reader.join(timeout=120)
            assert not reader.is_alive(), worker.output()
            check_complete(results["whole"], job_id)
            resumed = first_part + rest
            check_complete(resumed, job_id)
            assert [(e.id, e.event, e.data) for e in resumed] == [
                (e.id, e.event, e.data) for e in results["whole"]
            ]
            # After the end, a new client gets the same history and end at once.
            replay = read_event_stream(client, f"/jobs/{job_id}/events")
            assert [(e.id, e.data) for e in replay] == [(e.id, e.data) for e in resumed]
    finally:
        if worker is not None:
            worker.stop()
        api.stop()


def watcher_listens(database_url: str) -> bool:
    from sqlalchemy import create_engine

    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return bool(
                connection.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                        f"'{WATCHER_APPLICATION_NAME}' AND datname = current_database()"
                    )
                ).scalar_one()
            )
    finally:
        engine.dispose()


@pytest.mark.e2e
def test_a_job_streams_live_on_the_embedded_default(tmp_path: Path, dataset_root: Path) -> None:
    env = service_environment(tmp_path, f"sqlite:///{tmp_path / 'jobs.sqlite3'}", dataset_root)
    stream_a_job_with_a_reconnect(env, tmp_path)


@pytest.mark.e2e
@pytest.mark.redis
@pytest.mark.postgres
def test_a_job_streams_live_on_postgres_with_listen_notify(
    tmp_path: Path, dataset_root: Path, redis_url: str, postgres_template: str
) -> None:
    from tests.conftest import _postgres_copy

    for database_url in _postgres_copy(postgres_template):
        env = service_environment(tmp_path, database_url, dataset_root, broker_url=redis_url)
        stream_a_job_with_a_reconnect(env, tmp_path)


@pytest.mark.e2e
def test_two_hundred_listeners_see_every_event_once(tmp_path: Path, dataset_root: Path) -> None:
    from jobs.migrations import upgrade

    env = service_environment(tmp_path, f"sqlite:///{tmp_path / 'jobs.sqlite3'}", dataset_root)
    upgrade(env["DATABASE_URL"])
    port = free_port()
    api = start_api(env, tmp_path, port)
    worker = None
    try:
        base_url = f"http://127.0.0.1:{port}"
        job_id = httpx.post(f"{base_url}/jobs", json=STREAMED_JOB).json()["id"]
        results: list[list[Any]] = []
        errors: list[BaseException] = []
        connected = threading.Event()

        def run() -> None:
            try:
                streams = asyncio.run(
                    listen_to_events(base_url, f"/jobs/{job_id}/events", 200, connected)
                )
                results.extend([event for _, event in stream] for stream in streams)
            except BaseException as error:
                errors.append(error)

        listening = threading.Thread(target=run)
        listening.start()
        # Every client is listening before the job starts.
        assert connected.wait(timeout=60), errors
        worker = start_worker(env, tmp_path)
        listening.join(timeout=180)
        assert not listening.is_alive() and errors == [], (errors, worker.output())
        assert len(results) == 200
        for events in results:
            check_complete(events, job_id)
        assert len({tuple((e.id, e.data) for e in events) for events in results}) == 1
        assert api.alive()
    finally:
        if worker is not None:
            worker.stop()
        api.stop()
