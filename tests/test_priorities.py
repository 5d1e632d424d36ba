"""Priorities and fair share: a free worker takes the highest priority first, experiments and
lone jobs take turns at equal priority, queue positions tell that order, a queued job's
priority can be changed; in the core on SQLite and PostgreSQL and end to end with a real
worker process."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from jobs import dispatch, experiments, submission
from jobs.db import session_scope
from jobs.lifecycle import claim_next_job
from jobs.listing import list_jobs
from jobs.queue import broker_priority
from jobs.settings import get_settings
from jobs.specs import ExperimentCreate, JobCreate
from tests.conftest import service_environment
from tests.support import free_port, start_api, start_worker, wait_for_status

SPEC = {"block": "mobile", "hyperparameters": {"epochs": 1}, "train_samples": 10}


@pytest.fixture
def db_settings() -> dict[str, str]:
    return {"MAX_QUEUED_JOBS": "2000"}


def lone(priority: int = 0) -> int:
    with session_scope() as session:
        spec = JobCreate.model_validate({**SPEC, "priority": priority})
        return submission.create_job(session, spec, settings=get_settings()).job.id


def experiment(jobs: int, priority: int = 0) -> list[int]:
    spec = ExperimentCreate.model_validate(
        {
            "name": "sweep",
            "blocks": ["mobile"],
            "hyperparameters": {"epochs": 1},
            "seeds": list(range(jobs)),
            "priority": priority,
        }
    )
    with session_scope() as session:
        made = experiments.create_experiment(session, spec, settings=get_settings())
        return [job.id for job in made.experiment.jobs]


def positions_then_claims(count: int) -> tuple[list[int], list[int]]:
    """The queue in queue_position order, then the ids `count` claims take in turn."""
    queued: list[int] = []
    cursor = None
    with session_scope(write=False) as session:
        while True:
            page, cursor = list_jobs(session, status="queued", limit=200, cursor=cursor)
            queued += [job.id for job in page]
            if cursor is None:
                break
        positions = dispatch.queue_positions(session, queued)
    assert sorted(positions.values()) == list(range(1, len(positions) + 1))
    claimed = []
    for _ in range(count):
        with session_scope() as session:
            claim = claim_next_job(session, worker="w", lease_seconds=60)
            assert claim is not None
            claimed.append(claim.job_id)
    return sorted(positions, key=positions.__getitem__), claimed


@pytest.mark.slow
def test_a_lone_job_waits_for_one_job_of_a_1000_job_experiment(db: str) -> None:
    big = experiment(1000)
    with session_scope() as session:
        claim_next_job(session, worker="busy", lease_seconds=60)  # the first one runs
    single = lone()
    with session_scope(write=False) as session:
        assert dispatch.queue_position(session, single) == 2
    order, claimed = positions_then_claims(3)
    assert claimed == [big[1], single, big[2]] == order[:3]


def test_experiments_take_turns_and_priority_goes_first(db: str) -> None:
    first = experiment(3)
    second = experiment(3)
    urgent = lone(priority=10)
    late = lone()
    order, claimed = positions_then_claims(8)
    assert (
        claimed
        == order
        == [
            urgent,
            first[0],
            second[0],
            late,
            first[1],
            second[1],
            first[2],
            second[2],
        ]
    )


def places(job_ids: list[int]) -> dict[int, dispatch.QueuePlace | None]:
    with session_scope(write=False) as session:
        found = {job_id: dispatch.queue_place(session, job_id) for job_id in job_ids}
        positions = dispatch.queue_positions(session, job_ids)
    # The place's position is the one lists show.
    assert {i: p.position for i, p in found.items() if p is not None} == positions
    return found


def test_a_place_that_gets_worse_says_why(db: str) -> None:
    """An experiment's job at 2nd drops to 3rd when another experiment is queued (one job of
    each per turn), to 4th behind a job of higher priority, to 5th behind a lone job queued
    later (it takes the turn at the head of the queue); each time the reason says why."""
    turns = "(experiments and lone jobs take turns, one job each per turn)."
    first = experiment(3)
    with session_scope() as session:
        claim_next_job(session, worker="busy", lease_seconds=60)  # first[0] runs
    now = places(first)
    assert now[first[0]] is None  # running: no place
    assert now[first[1]] is not None
    assert now[first[1]].reason == "1st: a free worker takes it next."
    assert now[first[2]] is not None
    assert now[first[2]].reason == f"2nd: after 1 job at priority 0 with an earlier turn {turns}"

    experiment(2)  # another experiment, queued after it
    last = places([first[2]])[first[2]]
    assert last is not None
    assert (last.position, last.higher_priority, last.earlier_turns, last.same_turn) == (3, 0, 2, 0)
    assert last.reason == f"3rd: after 2 jobs at priority 0 with an earlier turn {turns}"

    lone(priority=5)
    last = places([first[2]])[first[2]]
    assert last is not None
    assert last.reason == (
        f"4th: after 1 job of higher priority and 2 jobs at priority 0 with an earlier turn {turns}"
    )

    late = lone()
    found = places([first[2], late])
    last, waiting = found[first[2]], found[late]
    assert last is not None
    assert last.reason == (
        f"5th: after 1 job of higher priority and 3 jobs at priority 0 with an earlier turn {turns}"
    )
    assert waiting is not None
    assert waiting.reason == (
        "4th: after 1 job of higher priority and 2 jobs queued before it for the same turn " + turns
    )


def test_the_reason_comes_with_one_job_not_with_a_list(client: TestClient) -> None:
    waiting = client.post("/jobs", json=SPEC).json()
    assert waiting["queue_reason"] == "1st: a free worker takes it next."
    urgent = client.post("/jobs", json={**SPEC, "priority": 3}).json()
    read = client.get(f"/jobs/{waiting['id']}").json()
    assert (read["queue_position"], read["queue_reason"]) == (
        2,
        "2nd: after 1 job of higher priority.",
    )
    lowered = client.patch(f"/jobs/{urgent['id']}", json={"priority": -1}).json()
    assert lowered["queue_reason"] == "2nd: after 1 job of higher priority."
    listed = client.get("/jobs", params={"status": "queued"}).json()["items"]
    assert [item["queue_reason"] for item in listed] == [None, None]
    client.post(f"/jobs/{waiting['id']}/cancel")
    assert client.get(f"/jobs/{waiting['id']}").json()["queue_reason"] is None


def test_broker_priorities_keep_the_order_of_job_priorities() -> None:
    steps = [broker_priority(p) for p in (100, 50, 0, -50, -100)]
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == 9


def test_priority_changes_while_queued_and_shows_in_positions(client: TestClient) -> None:
    ids = [client.post("/jobs", json=SPEC).json()["id"] for _ in range(3)]
    assert client.get(f"/jobs/{ids[2]}").json()["queue_position"] == 3
    raised = client.patch(f"/jobs/{ids[2]}", json={"priority": 5})
    assert raised.status_code == 200, raised.text
    assert (raised.json()["priority"], raised.json()["queue_position"]) == (5, 1)
    listed = client.get("/jobs", params={"status": "queued"}).json()["items"]
    assert {item["id"]: item["queue_position"] for item in listed} == {
        ids[2]: 1,
        ids[0]: 2,
        ids[1]: 3,
    }
    for bad in ({"priority": 101}, {"priority": "5"}, {"priority": 1, "name": "x"}, {}):
        response = client.patch(f"/jobs/{ids[0]}", json=bad)
        assert response.status_code == 422, bad
    assert (
        client.patch(f"/jobs/{ids[0]}", json={"priority": 101})
        .json()["fields"][0]["field"]
        .endswith("priority")
    )
    client.post(f"/jobs/{ids[1]}/cancel")
    ended = client.patch(f"/jobs/{ids[1]}", json={"priority": 1})
    assert ended.status_code == 409 and ended.json()["error"] == "job_not_queued"
    assert client.patch("/jobs/999", json={"priority": 1}).status_code == 404

    made = client.post(
        "/experiments",
        json={
            "name": "e",
            "blocks": ["mobile", "plain"],
            "priority": -5,
            **{"hyperparameters": {"epochs": 1}},
        },
    ).json()
    assert made["priority"] == -5
    members = client.get("/jobs", params={"experiment_id": made["id"]}).json()["items"]
    assert [item["priority"] for item in members] == [-5, -5]
    assert all(item["queue_position"] > 2 for item in members)  # behind the priority-0 job
    changed = client.patch(f"/experiments/{made['id']}", json={"priority": 20})
    assert changed.status_code == 200 and changed.json()["priority"] == 20
    members = client.get("/jobs", params={"experiment_id": made["id"]}).json()["items"]
    assert sorted(item["queue_position"] for item in members) == [1, 2]


@pytest.mark.e2e
def test_a_real_worker_claims_by_priority_and_fair_share(
    tmp_path: Path, dataset_root: Path
) -> None:
    """Everything is queued before the worker starts; it then runs one job at a time in the
    dispatch order, which the jobs' start times show. Then one is deleted, files and all."""
    from jobs.migrations import upgrade

    database_url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    upgrade(database_url)
    env = service_environment(tmp_path, database_url, dataset_root, WORKER_CONCURRENCY="1")
    port = free_port()
    api_process = start_api(env, tmp_path, port)
    worker = None
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as api:
            sweep = api.post(
                "/experiments",
                json={
                    "name": "sweep",
                    "blocks": ["mobile"],
                    "hyperparameters": {"epochs": 1, "batch_size": 8},
                    "seeds": [0, 1, 2, 3],
                    "train_samples": 16,
                    "test_samples": 8,
                },
            ).json()
            job = {**SPEC, "train_samples": 16, "test_samples": 8}
            single = api.post("/jobs", json=job).json()["id"]
            urgent = api.post("/jobs", json={**job, "priority": 50}).json()["id"]
            members = [row["job_id"] for row in sweep["jobs"]]
            expected = [urgent, members[0], single, *members[1:]]
            positions = {
                job_id: api.get(f"/jobs/{job_id}").json()["queue_position"] for job_id in expected
            }
            assert [positions[job_id] for job_id in expected] == [1, 2, 3, 4, 5, 6]
            worker = start_worker(env, tmp_path)
            done = [wait_for_status(api, job_id, ("succeeded",)) for job_id in expected]
            started = sorted(done, key=lambda item: item["started_at"])
            assert [item["id"] for item in started] == expected, worker.output()
            assert api.get("/jobs", params={"status": "queued"}).json()["items"] == []
            # A finished job deleted through the real server takes its checkpoint files along.
            files = tmp_path / "var" / "artifacts" / "jobs" / str(single)
            assert files.is_dir()
            assert api.delete(f"/jobs/{single}").status_code == 204
            assert api.get(f"/jobs/{single}").status_code == 404 and not files.exists()
    finally:
        if worker is not None:
            worker.stop()
        api_process.stop()
