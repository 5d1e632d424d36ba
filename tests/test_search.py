"""Searches in process on SQLite and PostgreSQL: the request's checks, trials made as jobs (at
most max_concurrent at once, the next in the transaction that ends one), the pruner's decision
after each epoch, cancelling, and what GET /experiments/{id}, its CSV and its events show. Trials
are driven through the same lifecycle calls a worker makes."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jobs.tables import JobStatus

Accuracy = Callable[[dict[str, Any], int], float]

SEARCH: dict[str, Any] = {
    "name": "lr search",
    "blocks": ["plain"],
    "hyperparameters": {"epochs": 9, "batch_size": 32},
    "train_samples": 50,
    "test_samples": 20,
    "search": {
        "space": {
            "learning_rate": {"loguniform": [0.001, 0.3]},
            "weight_decay": {"choice": [0, 0.0005, 0.005]},
        },
        "sampler": "random",
        "max_trials": 6,
        "max_concurrent": 1,
        "seed": 0,
        "pruner": {"type": "asha", "min_epochs": 1, "reduction_factor": 3},
    },
}


def search_body(**search: Any) -> dict[str, Any]:
    return {**SEARCH, "search": {**SEARCH["search"], **search}}


def by_learning_rate(params: dict[str, Any], epoch: int) -> float:
    """A trial's accuracy: higher for a higher learning rate, growing with the epochs."""
    return min(0.99, params["learning_rate"] * epoch)


def run_trial(job_id: int, accuracy: Accuracy) -> tuple[JobStatus, int]:
    """Train the trial as a worker would: record epochs until the decision says stop or the
    budget is spent, then end it as the runner maps the decision. (final status, epochs)."""
    from jobs.db import session_scope
    from jobs.lifecycle import StopReason, claim_job, finish_job, record_epoch
    from jobs.tables import Job

    with session_scope() as session:
        claim = claim_job(session, job_id, worker="test-worker", lease_seconds=600)
        assert claim is not None
        job = session.get(Job, job_id)
        assert job is not None
        params, epochs = dict(job.trial_params or {}), job.epochs_total
    status = JobStatus.SUCCEEDED
    epoch = 0
    for epoch in range(1, epochs + 1):
        figures = {
            "epoch": epoch,
            "train_loss": 1.0 / epoch,
            "train_accuracy": 0.5,
            "test_loss": 1.0,
            "test_accuracy": accuracy(params, epoch),
            "learning_rate": params.get("learning_rate", 0.01),
            "seconds": 1.0,
            "images_per_second": 50.0,
        }
        with session_scope() as session:
            decision = record_epoch(session, claim, figures, lease_seconds=600)
        if decision.stop == StopReason.PRUNED:
            status = JobStatus.PRUNED
            break
        assert decision.go_on
    with session_scope() as session:
        assert finish_job(session, claim, status)
    return status, epoch


def active_trials(client: TestClient, experiment_id: int) -> list[dict[str, Any]]:
    jobs = client.get(f"/experiments/{experiment_id}").json()["jobs"]
    return [job for job in jobs if not job["ended"]]


def run_search(
    client: TestClient, experiment_id: int, accuracy: Accuracy = by_learning_rate
) -> list[tuple[int, JobStatus, int]]:
    """Run queued trials one by one until the search has none left: (job, status, epochs)."""
    ran = []
    while True:
        queued = [job for job in active_trials(client, experiment_id) if job["status"] == "queued"]
        if not queued:
            return ran
        job_id = queued[0]["job_id"]
        status, epochs = run_trial(job_id, accuracy)
        ran.append((job_id, status, epochs))


def trial_params(client: TestClient, experiment_id: int) -> list[dict[str, Any]]:
    jobs = client.get(f"/jobs?experiment_id={experiment_id}&limit=200").json()["items"]
    return [job["trial"]["params"] for job in sorted(jobs, key=lambda job: job["id"])]


def test_a_search_makes_max_concurrent_trials_within_its_space(client: TestClient) -> None:
    body = search_body(max_trials=5, max_concurrent=2)
    created = client.post("/experiments", json=body)
    assert created.status_code == 202, created.text
    experiment = created.json()
    assert experiment["job_count"] == 2
    assert experiment["status"] == "queued"
    search = experiment["search"]
    assert search["max_trials"] == 5 and search["trials_created"] == 2
    assert search["epochs_full"] == 5 * 9 and search["epochs_spent"] == 0
    assert search["best"] is None
    assert [rung["epochs"] for rung in search["rungs"]] == [1, 3]
    assert experiment["varying"] == ["learning_rate", "weight_decay"]
    for job in experiment["jobs"]:
        read = client.get(f"/jobs/{job['job_id']}").json()
        params = read["trial"]["params"]
        assert 0.001 <= params["learning_rate"] <= 0.3
        assert params["weight_decay"] in (0.0, 0.0005, 0.005)
        assert read["spec"]["hyperparameters"]["learning_rate"] == params["learning_rate"]
        assert read["spec"]["hyperparameters"]["epochs"] == 9
        assert job["varied"] == params
    stored = experiment["spec"]["search"]
    assert stored["objective"] == {"metric": "test_accuracy", "mode": "max"}
    assert stored["space"]["weight_decay"] == {"choice": [0.0, 0.0005, 0.005]}


def test_ending_a_trial_makes_the_next_until_the_budget_is_spent(client: TestClient) -> None:
    experiment_id = client.post(
        "/experiments", json=search_body(max_trials=4, max_concurrent=2, pruner={"type": "none"})
    ).json()["id"]
    first = active_trials(client, experiment_id)
    assert len(first) == 2
    run_trial(first[0]["job_id"], by_learning_rate)
    # The trial that ended was replaced in its own transaction: two active again.
    assert len(active_trials(client, experiment_id)) == 2
    assert client.get(f"/experiments/{experiment_id}").json()["search"]["trials_created"] == 3
    run_search(client, experiment_id)
    read = client.get(f"/experiments/{experiment_id}").json()
    assert read["job_count"] == 4
    assert read["status"] == "succeeded" and read["ended"]
    assert read["search"]["epochs_spent"] == 4 * 9 == read["search"]["epochs_full"]
    best = read["search"]["best"]
    rates = {job["job_id"]: job["varied"]["learning_rate"] for job in read["jobs"]}
    best_job = max(rates, key=lambda job_id: by_learning_rate({"learning_rate": rates[job_id]}, 9))
    assert best["job_id"] == best_job
    assert best["value"] == pytest.approx(min(0.99, rates[best_job] * 9))
    assert best["params"]["learning_rate"] == rates[best_job]


def test_asha_prunes_trials_below_the_rung_cutoff(client: TestClient) -> None:
    experiment_id = client.post("/experiments", json=search_body(max_trials=6)).json()["id"]
    ran = run_search(client, experiment_id)
    assert len(ran) == 6
    pruned = [item for item in ran if item[1] == JobStatus.PRUNED]
    assert pruned, ran
    for job_id, _, epochs in pruned:
        assert epochs in (1, 3)  # pruned at a rung, never after it
        job = client.get(f"/jobs/{job_id}").json()
        assert job["status"] == "pruned" and job["ended"]
        assert job["trial"]["rung"] in (0, 1)
        assert len(client.get(f"/jobs/{job_id}/metrics").json()["metrics"]) == epochs
    read = client.get(f"/experiments/{experiment_id}").json()
    assert read["status"] == "succeeded"
    assert read["status_counts"]["pruned"] == len(pruned)
    search = read["search"]
    assert search["epochs_spent"] == sum(epochs for _, _, epochs in ran) < search["epochs_full"]
    rung0 = search["rungs"][0]
    assert rung0["epochs"] == 1 and rung0["reached"] == 6
    assert rung0["promoted"] == 6 - sum(1 for *_, epochs in pruned if epochs == 1)
    assert rung0["cutoff"] is not None
    # The first trial is promoted at every rung (nothing to compare with yet): ASHA.
    assert ran[0][1] == JobStatus.SUCCEEDED


def test_the_same_seed_gives_the_same_trials(client: TestClient) -> None:
    sequences = []
    for _ in range(2):
        experiment_id = client.post("/experiments", json=search_body(max_trials=4)).json()["id"]
        run_search(client, experiment_id)
        sequences.append(trial_params(client, experiment_id))
    assert sequences[0] == sequences[1]
    assert len({params["learning_rate"] for params in sequences[0]}) == 4
    other = client.post("/experiments", json=search_body(max_trials=4, seed=1)).json()["id"]
    run_search(client, other)
    assert trial_params(client, other) != sequences[0]


def test_grid_search_visits_each_point_once(client: TestClient) -> None:
    body = search_body(
        sampler="grid",
        max_trials=None,
        max_concurrent=2,
        space={"learning_rate": {"choice": [0.01, 0.1]}, "momentum": {"choice": [0.5, 0.9]}},
        pruner={"type": "none"},
    )
    body["blocks"] = ["plain", "mobile"]
    experiment = client.post("/experiments", json=body).json()
    assert experiment["spec"]["search"]["max_trials"] == 8
    assert experiment["varying"] == ["block", "learning_rate", "momentum"]
    run_search(client, experiment["id"])
    read = client.get(f"/experiments/{experiment['id']}").json()
    points = {tuple(sorted(job["varied"].items())) for job in read["jobs"]}
    assert len(points) == read["job_count"] == 8
    assert {job["block"] for job in read["jobs"]} == {"plain", "mobile"}


def test_cancelling_a_search_leaves_no_trial_behind(client: TestClient) -> None:
    experiment_id = client.post(
        "/experiments", json=search_body(max_trials=10, max_concurrent=3)
    ).json()["id"]
    trials = active_trials(client, experiment_id)
    run_trial(trials[0]["job_id"], by_learning_rate)
    cancelled = client.post(f"/experiments/{experiment_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    read = client.get(f"/experiments/{experiment_id}").json()
    assert read["ended"] and read["status"] == "cancelled"
    assert read["search"]["trials_created"] == read["job_count"] == 4
    assert read["status_counts"]["cancelled"] == 3


def test_a_pruning_decision_outlives_the_worker(client: TestClient) -> None:
    """The decision is stored with its epoch: a worker killed before ending the trial leaves it
    to the reaper, which ends it pruned (not re-queued to train on)."""
    from datetime import timedelta

    from jobs.db import session_scope
    from jobs.events import events_after
    from jobs.lifecycle import StopReason, claim_job, reap_expired_leases, record_epoch
    from jobs.tables import utcnow

    experiment_id = client.post(
        "/experiments", json=search_body(max_trials=3, max_concurrent=1)
    ).json()["id"]
    first = active_trials(client, experiment_id)[0]["job_id"]
    run_trial(first, lambda params, epoch: 0.9)
    second = active_trials(client, experiment_id)[0]["job_id"]
    with session_scope() as session:
        claim = claim_job(session, second, worker="doomed", lease_seconds=600)
    assert claim is not None
    figures = {
        "epoch": 1,
        "train_loss": 1.0,
        "train_accuracy": 0.1,
        "test_loss": 2.0,
        "test_accuracy": 0.1,
        "learning_rate": 0.01,
        "seconds": 1.0,
        "images_per_second": 1.0,
    }
    with session_scope() as session:
        assert record_epoch(session, claim, figures, lease_seconds=600).stop == StopReason.PRUNED
    # Recorded again (a retried transaction): decided once, the same answer.
    with session_scope() as session:
        assert record_epoch(session, claim, figures, lease_seconds=600).stop == StopReason.PRUNED
    with session_scope() as session:
        assert reap_expired_leases(session, now=utcnow() + timedelta(seconds=601)) == []
    job = client.get(f"/jobs/{second}").json()
    assert job["status"] == "pruned"
    with session_scope() as session:
        kinds = [event.kind for event in events_after(session, job_ids=[second])]
    assert kinds.count("trial_pruned") == 1
    assert kinds == ["status", "trial_created", "status", "epoch", "trial_pruned", "status"]
    assert len(active_trials(client, experiment_id)) == 1  # its successor, made by the reaper
    # Counted as what it was: a trial its pruner stopped, not a cancelled job.
    scrape = client.get("/metrics").text
    assert 'cifar_jobs_reconciler_leases_reaped_total{outcome="pruned"} 1.0' in scrape
    assert 'cifar_jobs_reconciler_leases_reaped_total{outcome="cancelled"} 0.0' in scrape


def test_csv_has_a_column_per_searched_parameter(client: TestClient) -> None:
    experiment_id = client.post(
        "/experiments", json=search_body(max_trials=2, max_concurrent=2)
    ).json()["id"]
    run_search(client, experiment_id)
    response = client.get(f"/experiments/{experiment_id}/summary.csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 2
    assert {"learning_rate", "weight_decay", "trial", "rung"} <= set(rows[0])
    jobs = {
        job["job_id"]: job for job in client.get(f"/experiments/{experiment_id}").json()["jobs"]
    }
    for row in rows:
        params = jobs[int(row["job_id"])]["varied"]
        assert float(row["learning_rate"]) == params["learning_rate"]


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (
            {"space": {"learning_rate": {"loguniform": [0, 0.1]}}},
            "search.space.learning_rate.loguniform[0]",
            "above 0",
        ),
        (
            {"space": {"learning_rate": {"uniform": [0.2, 0.1]}}},
            "search.space.learning_rate.uniform",
            "above high",
        ),
        (
            {"space": {"weight_decay": {"choice": []}}},
            "search.space.weight_decay.choice",
            "at least one",
        ),
        (
            {"space": {"dropout": {"uniform": [0, 1]}}},
            "search.space.dropout",
            "not a hyperparameter",
        ),
        ({"space": {"epochs": {"int": [1, 5]}}}, "search.space.epochs", "budget"),
        (
            {"space": {"momentum": {"uniform": [0.5, 1.5]}}},
            "search.space.momentum.uniform[1]",
            "less than 1",
        ),
        (
            {"space": {"batch_size": {"uniform": [32, 64]}}},
            "search.space.batch_size.uniform",
            "int or choice",
        ),
        ({"max_trials": 1001}, "search.max_trials", "1000"),
        ({"max_trials": None}, "search.max_trials", "number of trials"),
        ({"sampler": "grid"}, "search.sampler", "choice dimensions only"),
        ({"pruner": {"type": "asha", "min_epochs": 9}}, "search.pruner.min_epochs", "below"),
        (
            {"space": {"block": {"choice": ["residual"]}}},
            "search.space.block.choice[0]",
            "not among blocks",
        ),
    ],
)
def test_bad_searches_are_refused_naming_the_field(
    client: TestClient, change: dict[str, Any], field: str, words: str
) -> None:
    response = client.post("/experiments", json=search_body(**change))
    assert response.status_code == 422, response.text
    fields = {item["field"]: item["message"] for item in response.json()["fields"]}
    assert field in fields, fields
    assert words in fields[field]
    assert client.get("/experiments").json()["items"] == []


def test_the_experiment_stream_follows_every_trial_to_the_end(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream of a search picks up the trials made after it opened (in the transaction that
    ended one), sends trial_created, trial_pruned and best_changed as the schema documents them,
    and ends once the last trial has."""
    from tests.test_schema_agreement import (
        check_documented,
        openapi,
        parse_event_stream,
        stream_while,
    )

    monkeypatch.setattr("app.routes.events.KEEP_ALIVE_SECONDS", 0.1)
    schema = openapi(client)
    experiment_id = client.post(
        "/experiments", json=search_body(max_trials=5, max_concurrent=2)
    ).json()["id"]

    text = stream_while(
        client, f"/experiments/{experiment_id}/events", lambda: run_search(client, experiment_id)
    )
    events, _ = parse_event_stream(text)
    kinds = check_documented(schema, "/experiments/{experiment_id}/events", events)
    assert {"trial_created", "trial_pruned", "best_changed", "status", "epoch", "end"} == kinds
    created = [json.loads(event["data"]) for event in events if event["event"] == "trial_created"]
    assert sorted(item["trial"] for item in created) == [0, 1, 2, 3, 4]
    ended = {
        json.loads(event["data"])["job_id"]
        for event in events
        if event["event"] == "status" and json.loads(event["data"])["ended"]
    }
    assert len(ended) == 5
    assert json.loads(events[-1]["data"]) == {"experiment_id": experiment_id, "status": "succeeded"}


def test_best_changed_names_each_new_best_and_the_one_it_beat(client: TestClient) -> None:
    """A trial that succeeds with a better objective than every earlier one is announced with
    the best it beat; a tie keeps the earlier trial, a worse value announces nothing."""
    from jobs.db import session_scope
    from jobs.events import events_after

    value = {0.1: 0.5, 0.2: 0.4, 0.3: 0.5, 0.4: 0.7, 0.5: 0.6}
    body = {
        **search_body(
            space={"learning_rate": {"choice": sorted(value)}},
            sampler="grid",
            max_trials=5,
            pruner={"type": "none"},
        ),
        "hyperparameters": {"epochs": 1, "batch_size": 32},
    }
    experiment_id = client.post("/experiments", json=body).json()["id"]
    ran = run_search(client, experiment_id, lambda params, epoch: value[params["learning_rate"]])
    assert [status for _, status, _ in ran] == [JobStatus.SUCCEEDED] * 5
    lr = {
        job["id"]: job["trial"]["params"]["learning_rate"]
        for job in client.get(f"/jobs?experiment_id={experiment_id}&limit=10").json()["items"]
    }
    expected, best = [], None
    for job_id, _, _ in ran:
        now = value[lr[job_id]]
        if best is None or now > best[1]:
            expected.append(
                (job_id, now, None if best is None else best[0], None if best is None else best[1])
            )
            best = (job_id, now)
    with session_scope() as session:
        announced = [
            (e.data["job_id"], e.data["value"], e.data["previous_job_id"], e.data["previous_value"])
            for e in events_after(session, experiment_id=experiment_id)
            if e.kind == "best_changed"
        ]
        params = [
            e.data["params"]
            for e in events_after(session, experiment_id=experiment_id)
            if e.kind == "best_changed"
        ]
    assert announced == expected and len(expected) >= 2
    assert [p["learning_rate"] for p in params] == [lr[job_id] for job_id, *_ in expected]


def test_trials_ending_at_once_make_each_successor_once(client: TestClient) -> None:
    """Two workers end two trials in the same instant: each ending makes one successor, under
    the experiment's row lock, and no trial number is given twice."""
    import threading

    from jobs.db import session_scope
    from jobs.lifecycle import claim_job, finish_job, record_epoch

    experiment_id = client.post(
        "/experiments",
        json=search_body(max_trials=4, max_concurrent=2, pruner={"type": "none"}),
    ).json()["id"]
    claims = []
    for job in active_trials(client, experiment_id):
        with session_scope() as session:
            claim = claim_job(session, job["job_id"], worker=f"w{job['job_id']}", lease_seconds=60)
        assert claim is not None
        figures = {
            "epoch": 1,
            "train_loss": 1.0,
            "train_accuracy": 0.5,
            "test_loss": 1.0,
            "test_accuracy": 0.5,
            "learning_rate": 0.01,
            "seconds": 1.0,
            "images_per_second": 1.0,
        }
        with session_scope() as session:
            record_epoch(session, claim, figures, lease_seconds=60)
        claims.append(claim)
    start = threading.Barrier(len(claims))
    failures: list[BaseException] = []

    def end(claim: Any) -> None:
        try:
            start.wait()
            with session_scope() as session:
                assert finish_job(session, claim, JobStatus.SUCCEEDED)
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=end, args=(claim,)) for claim in claims]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    read = client.get(f"/experiments/{experiment_id}").json()
    assert read["search"]["trials_created"] == read["job_count"] == 4
    assert sorted(job["trial"] for job in read["jobs"]) == [0, 1, 2, 3]
    assert len(active_trials(client, experiment_id)) == 2
