"""A search's decisions, in process on SQLite and PostgreSQL, through the lifecycle calls a worker
makes: no trial is stopped on a difference its evaluation cannot resolve; Hyperband's trials
pause at a rung and are resumed or stopped once their bracket has arrived; every decision is
kept and shown with its cutoff and noise margin; a rung that could not separate the trials
warns; trials take the experiment's priority and tags; a search can be extended and a cancelled
one resumed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jobs.db import session_scope
from jobs.events import events_after
from jobs.lifecycle import (
    StopReason,
    claim_job,
    finish_job,
    pause_job,
    reap_expired_leases,
    record_epoch,
)
from jobs.tables import Job, JobStatus, utcnow

# The objective of a trial at an epoch, from its params.
Curve = Callable[[dict[str, Any], int], float]

BODY: dict[str, Any] = {
    "name": "decisions",
    "blocks": ["mobile"],
    "hyperparameters": {"epochs": 4, "batch_size": 32},
    "train_samples": 50,
    "test_samples": 1000,
    "tags": ["sweep"],
    "search": {
        "space": {"learning_rate": {"choice": [0.1, 0.2, 0.3, 0.4]}},
        "sampler": "grid",
        "max_concurrent": 4,
        "seed": 0,
        "pruner": {"type": "hyperband", "min_epochs": 1, "reduction_factor": 2},
    },
}


def body(**search: Any) -> dict[str, Any]:
    return {**BODY, "search": {**BODY["search"], **search}}


def figures(epoch: int, accuracy: float, test_images: int | None = None) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "train_loss": 1.0,
        "train_accuracy": 0.5,
        "test_loss": 1.0,
        "test_accuracy": accuracy,
        "learning_rate": 0.01,
        "seconds": 1.0,
        "images_per_second": 50.0,
        **({} if test_images is None else {"test_images": test_images}),
    }


def train(job_id: int, curve: Curve) -> tuple[str, int]:
    """One attempt of a worker: claim, record epochs from where the trial stands until the
    decision says stop, then end, pause or finish it as the runner does. (outcome, epoch)."""
    with session_scope() as session:
        claim = claim_job(session, job_id, worker="test-worker", lease_seconds=600)
        assert claim is not None
        job = session.get(Job, job_id)
        assert job is not None
        params, start, epochs = dict(job.trial_params or {}), job.epochs_done, job.epochs_total
    for epoch in range(start + 1, epochs + 1):
        with session_scope() as session:
            decision = record_epoch(
                session, claim, figures(epoch, curve(params, epoch)), lease_seconds=600
            )
        if decision.stop == StopReason.PAUSED:
            with session_scope() as session:
                assert pause_job(session, claim)
            return "paused", epoch
        if decision.stop == StopReason.PRUNED:
            with session_scope() as session:
                assert finish_job(session, claim, JobStatus.PRUNED)
            return "pruned", epoch
        assert decision.go_on
    with session_scope() as session:
        assert finish_job(session, claim, JobStatus.SUCCEEDED)
    return "succeeded", epochs


def jobs_of(client: TestClient, experiment_id: int) -> list[dict[str, Any]]:
    items = client.get(f"/jobs?experiment_id={experiment_id}&limit=200").json()["items"]
    return sorted(items, key=lambda job: job["trial"]["number"])


def queued(client: TestClient, experiment_id: int) -> list[dict[str, Any]]:
    return [job for job in jobs_of(client, experiment_id) if job["status"] == "queued"]


def drive(client: TestClient, experiment_id: int, curve: Curve) -> list[tuple[int, str, int]]:
    """Train queued trials, one attempt each, until none is queued."""
    ran = []
    while batch := queued(client, experiment_id):
        for job in batch:
            outcome, epoch = train(job["id"], curve)
            ran.append((job["trial"]["number"], outcome, epoch))
    return ran


def by_rate(params: dict[str, Any], epoch: int) -> float:
    return float(params["learning_rate"]) * 2 + 0.01 * epoch


def test_hyperband_pauses_at_a_rung_and_resumes_the_best_of_its_bracket(
    client: TestClient,
) -> None:
    created = client.post("/experiments", json=body(max_trials=4))
    assert created.status_code == 202, created.text
    experiment_id = created.json()["id"]
    settings = created.json()["search"]["settings"]
    assert settings["pruner"]["type"] == "hyperband"
    # epochs 4, reduction factor 2: brackets starting at 1, 2 and 4 epochs; 4 trials fill the
    # first, whose rungs are at 1 and 2 epochs.
    assert [b["first_rung_epochs"] for b in settings["brackets"]] == [1, 2, 4]
    assert [b["trials"] for b in settings["brackets"]] == [4, 3, 3]

    first = queued(client, experiment_id)
    assert len(first) == 4
    for job in first[:3]:
        assert train(job["id"], by_rate) == ("paused", 1)
    waiting = client.get(f"/experiments/{experiment_id}").json()
    assert waiting["status_counts"]["paused"] == 3 and waiting["search"]["paused"] == 3
    assert waiting["status"] == "running" or waiting["status_counts"]["queued"] == 1
    paused = client.get(f"/jobs/{first[0]['id']}").json()
    assert paused["status"] == "paused" and not paused["ended"]
    assert paused["worker"] is None and paused["attempt"] == 0  # holds no worker, no attempt
    assert paused["trial"]["decisions"][-1]["outcome"] == "paused"

    # The last of the bracket arrives: the best half go on, the rest stop, at once.
    assert train(first[3]["id"], by_rate) == ("paused", 1)
    after = {job["trial"]["params"]["learning_rate"]: job for job in jobs_of(client, experiment_id)}
    assert {rate: job["status"] for rate, job in after.items()} == {
        0.1: "pruned",
        0.2: "pruned",
        0.3: "queued",
        0.4: "queued",
    }
    stopped = after[0.2]["trial"]
    assert stopped["cutoff"] == pytest.approx(by_rate({"learning_rate": 0.3}, 1))
    last = stopped["decisions"][-1]
    assert last["outcome"] == "stopped" and last["rung"] == 0 and last["epoch"] == 1
    assert last["compared_with"] == 4 and 0 < last["margin"] < 0.2 - 0.0
    assert after[0.3]["trial"]["decisions"][-1]["outcome"] == "promoted"

    # The promoted resume where they stopped and pause again at 2 epochs; one goes on.
    ran = drive(client, experiment_id, by_rate)
    assert sorted(outcome for _, outcome, _ in ran) == ["paused", "paused", "succeeded"]
    final = {job["trial"]["params"]["learning_rate"]: job for job in jobs_of(client, experiment_id)}
    assert final[0.4]["status"] == "succeeded" and final[0.4]["epochs_done"] == 4
    assert final[0.3]["status"] == "pruned" and final[0.3]["epochs_done"] == 2
    read = client.get(f"/experiments/{experiment_id}").json()
    assert read["status"] == "succeeded"
    assert read["search"]["epochs_spent"] == 1 + 1 + 2 + 4 == 8
    rungs = [
        (r["bracket"], r["epochs"], r["reached"], r["promoted"], r["stopped"])
        for r in read["search"]["rungs"]
    ]
    assert rungs == [(0, 1, 4, 2, 2), (0, 2, 2, 1, 1)]
    with session_scope() as session:
        kinds = [event.kind for event in events_after(session, job_ids=[final[0.4]["id"]])]
    assert kinds.count("trial_paused") == 2 and kinds.count("trial_resumed") == 2


def test_a_paused_trial_makes_room_for_the_next_one(client: TestClient) -> None:
    """max_concurrent counts the trials queued or running: one waiting at a rung holds no
    worker, so the search makes its next trial when it pauses."""
    experiment_id = client.post("/experiments", json=body(max_trials=4, max_concurrent=1)).json()[
        "id"
    ]
    ran = drive(client, experiment_id, by_rate)
    assert [outcome for _, outcome, _ in ran].count("paused") == 4 + 2
    assert ran[-1][1] == "succeeded"
    read = client.get(f"/experiments/{experiment_id}").json()
    assert read["ended"] and read["status_counts"]["succeeded"] == 1


def test_trials_within_the_noise_of_the_cutoff_all_go_on(client: TestClient) -> None:
    """150 test images: one image is 0.67 points. Trials a few images apart tie; only one far
    below is stopped."""
    created = client.post("/experiments", json={**body(max_trials=4), "test_samples": 150})
    experiment_id = created.json()["id"]
    images = {0.1: 17, 0.2: 18, 0.3: 20, 0.4: 60}  # right answers at each epoch, of 150

    def curve(params: dict[str, Any], epoch: int) -> float:
        return images[params["learning_rate"]] / 150

    for job in queued(client, experiment_id):
        train(job["id"], curve)
    statuses = {
        job["trial"]["params"]["learning_rate"]: job["status"]
        for job in jobs_of(client, experiment_id)
    }
    # The cutoff is the better half's last (0.3: 20 images); 17 and 18 are within its noise.
    assert statuses == {0.1: "queued", 0.2: "queued", 0.3: "queued", 0.4: "queued"}
    decision = jobs_of(client, experiment_id)[0]["trial"]["decisions"][-1]
    assert decision["outcome"] == "promoted"
    assert decision["cutoff"] == pytest.approx(20 / 150)
    assert decision["margin"] > (20 - 17) / 150


def test_asha_never_stops_a_trial_one_image_below_the_cutoff(client: TestClient) -> None:
    """The case that lost the best setting: 12.67 % against a cutoff of 13.33 % on 150 test
    images (one image apart)."""
    spec = {
        **body(max_trials=3, max_concurrent=1, pruner={"type": "asha", "min_epochs": 1}),
        "hyperparameters": {"epochs": 6, "batch_size": 32},
        "test_samples": 150,
    }
    experiment_id = client.post("/experiments", json=spec).json()["id"]
    rights = iter([20, 21, 19])  # first trials 20 and 21 of 150, then one at 19

    values: dict[float, float] = {}

    def curve(params: dict[str, Any], epoch: int) -> float:
        rate = params["learning_rate"]
        if rate not in values:
            values[rate] = next(rights) / 150
        return values[rate]

    ran = drive(client, experiment_id, curve)
    assert [outcome for _, outcome, _ in ran] == ["succeeded"] * 3
    last = jobs_of(client, experiment_id)[-1]["trial"]["decisions"]
    assert [d["outcome"] for d in last] == ["went_on", "went_on"]
    assert last[0]["value"] < last[0]["cutoff"] <= last[0]["value"] + last[0]["margin"]


def test_a_trial_far_below_the_cutoff_is_stopped_and_the_decision_is_explained(
    client: TestClient,
) -> None:
    spec = body(max_trials=3, max_concurrent=1, pruner={"type": "asha", "min_epochs": 1})
    experiment_id = client.post("/experiments", json=spec).json()["id"]
    ran = drive(client, experiment_id, lambda params, epoch: params["learning_rate"])
    # Grid order (seed 0) decides which rate comes first; the lowest of three is stopped if it
    # does not arrive first.
    pruned = [number for number, outcome, _ in ran if outcome == "pruned"]
    assert pruned
    job = jobs_of(client, experiment_id)[pruned[0]]
    assert job["status"] == "pruned"
    decision = job["trial"]["decisions"][-1]
    assert decision["outcome"] == "stopped"
    assert job["trial"]["cutoff"] == decision["cutoff"]
    assert decision["cutoff"] - decision["value"] > decision["margin"] > 0
    with session_scope() as session:
        (event,) = [
            event.data
            for event in events_after(session, job_ids=[job["id"]])
            if event.kind == "trial_pruned"
        ]
    assert event["cutoff"] == decision["cutoff"] and event["margin"] == decision["margin"]
    assert event["compared_with"] == decision["compared_with"] >= 2


def test_a_rung_whose_cutoff_is_at_chance_warns(client: TestClient) -> None:
    """cifar100 has 100 classes: a cutoff of 1 % is no better than guessing."""
    experiment_id = client.post("/experiments", json=body(max_trials=4)).json()["id"]
    for job in queued(client, experiment_id):
        train(job["id"], lambda params, epoch: 0.01 if epoch == 1 else params["learning_rate"])
    warnings = client.get(f"/experiments/{experiment_id}").json()["search"]["warnings"]
    assert [warning["code"] for warning in warnings] == ["cutoff_at_chance"]
    assert warnings[0]["rung_epochs"] == 1 and "chance" in warnings[0]["message"]


def test_most_trials_tied_at_a_rung_warns(client: TestClient) -> None:
    experiment_id = client.post(
        "/experiments", json={**body(max_trials=4), "test_samples": 100}
    ).json()["id"]
    for job in queued(client, experiment_id):
        train(job["id"], lambda params, epoch: 0.3 + params["learning_rate"] / 100)
    codes = [
        w["code"] for w in client.get(f"/experiments/{experiment_id}").json()["search"]["warnings"]
    ]
    assert codes == ["trials_tie"]


def test_a_pause_decision_outlives_the_worker(client: TestClient) -> None:
    """The pause is stored with its epoch: a worker killed before pausing leaves the trial to
    the reaper, which pauses it (not re-queued to train past its rung)."""
    experiment_id = client.post("/experiments", json=body(max_trials=4)).json()["id"]
    doomed, *others = queued(client, experiment_id)
    with session_scope() as session:
        claim = claim_job(session, doomed["id"], worker="doomed", lease_seconds=600)
    assert claim is not None
    with session_scope() as session:
        assert (
            record_epoch(session, claim, figures(1, 0.9), lease_seconds=600).stop
            == StopReason.PAUSED
        )
    for job in others:
        train(job["id"], by_rate)
    with session_scope() as session:
        assert reap_expired_leases(session, now=utcnow() + timedelta(seconds=601)) == []
    statuses = {job["id"]: job["status"] for job in jobs_of(client, experiment_id)}
    # The reaper's pause completed the bracket: decided at once.
    assert statuses[doomed["id"]] == "queued"
    assert sorted(statuses.values()).count("pruned") == 2
    scrape = client.get("/metrics").text
    assert 'cifar_jobs_reconciler_leases_reaped_total{outcome="paused"} 1.0' in scrape


def test_cancelling_a_paused_trial_decides_its_bracket_without_it(client: TestClient) -> None:
    experiment_id = client.post("/experiments", json=body(max_trials=4)).json()["id"]
    trials = queued(client, experiment_id)
    for job in trials[:3]:
        train(job["id"], by_rate)
    assert client.post(f"/jobs/{trials[0]['id']}/cancel").status_code == 200
    train(trials[3]["id"], by_rate)
    statuses = [job["status"] for job in jobs_of(client, experiment_id)]
    assert statuses[0] == "cancelled" and sorted(statuses[1:]).count("queued") >= 1
    assert "paused" not in statuses


def test_trials_take_the_experiments_priority_and_tags_then_and_later(client: TestClient) -> None:
    spec = {**body(max_trials=3, max_concurrent=1, pruner={"type": "none"}), "priority": 7}
    experiment_id = client.post("/experiments", json=spec).json()["id"]
    (first,) = queued(client, experiment_id)
    assert first["priority"] == 7 and first["tags"] == ["sweep"]
    changed = client.patch(f"/experiments/{experiment_id}", json={"priority": -3})
    assert changed.status_code == 200 and changed.json()["priority"] == -3
    assert client.get(f"/jobs/{first['id']}").json()["priority"] == -3
    train(first["id"], by_rate)
    (second,) = queued(client, experiment_id)
    assert second["priority"] == -3 and second["tags"] == ["sweep"]


def test_a_search_is_extended_while_it_runs_and_after_it_ended(client: TestClient) -> None:
    spec = body(max_trials=2, max_concurrent=1, pruner={"type": "none"})
    experiment_id = client.post("/experiments", json=spec).json()["id"]
    drive(client, experiment_id, by_rate)
    ended = client.get(f"/experiments/{experiment_id}").json()
    assert ended["ended"] and ended["job_count"] == 2
    extended = client.patch(f"/experiments/{experiment_id}", json={"max_trials": 4})
    assert extended.status_code == 200, extended.text
    read = extended.json()
    assert read["search"]["max_trials"] == 4 and read["status"] == "queued"
    drive(client, experiment_id, by_rate)
    done = client.get(f"/experiments/{experiment_id}").json()
    assert done["job_count"] == 4 and done["ended"]
    rates = sorted(
        job["trial"]["params"]["learning_rate"] for job in jobs_of(client, experiment_id)
    )
    assert rates == [0.1, 0.2, 0.3, 0.4]  # the grid's four points, each once

    for change, message in (
        ({"max_trials": 3}, "give at least 4"),
        ({"max_trials": 5}, "the grid has 4 points"),
    ):
        refused = client.patch(f"/experiments/{experiment_id}", json=change)
        assert refused.status_code == 422, refused.text
        (field,) = refused.json()["fields"]
        assert field["field"] == "max_trials" and message in field["message"]
    empty = client.patch(f"/experiments/{experiment_id}", json={})
    assert empty.status_code == 422
    grid = client.post(
        "/experiments", json={"name": "g", "blocks": ["mobile"], "hyperparameters": {"epochs": 1}}
    ).json()["id"]
    not_search = client.patch(f"/experiments/{grid}", json={"max_trials": 3})
    assert not_search.status_code == 422
    assert not_search.json()["fields"][0]["field"] == "max_trials"


def test_a_cancelled_search_resumes_with_the_points_its_cancel_stopped(client: TestClient) -> None:
    spec = body(max_trials=4, max_concurrent=2, pruner={"type": "none"})
    experiment_id = client.post("/experiments", json=spec).json()["id"]
    first = queued(client, experiment_id)[0]
    train(first["id"], by_rate)
    not_cancelled = client.post(f"/experiments/{experiment_id}/resume")
    assert not_cancelled.status_code == 409
    assert not_cancelled.json()["error"] == "not_resumable"
    assert client.post(f"/experiments/{experiment_id}/cancel").status_code == 200
    resumed = client.post(f"/experiments/{experiment_id}/resume")
    assert resumed.status_code == 200, resumed.text
    assert not resumed.json()["ended"]
    drive(client, experiment_id, by_rate)
    jobs = jobs_of(client, experiment_id)
    succeeded = sorted(
        job["trial"]["params"]["learning_rate"] for job in jobs if job["status"] == "succeeded"
    )
    assert succeeded == [0.1, 0.2, 0.3, 0.4]  # every point trained once to the end
    assert sum(job["status"] == "cancelled" for job in jobs) == 2


def test_tpe_start_up_trials_are_a_setting_of_tpe_only(client: TestClient) -> None:
    space = {"learning_rate": {"loguniform": [0.001, 0.3]}}
    made = client.post(
        "/experiments", json=body(sampler="tpe", space=space, max_trials=3, startup_trials=2)
    )
    assert made.status_code == 202, made.text
    assert made.json()["search"]["settings"]["startup_trials"] == 2
    refused = client.post("/experiments", json=body(max_trials=3, startup_trials=2))
    assert refused.status_code == 422
    assert refused.json()["fields"][0]["field"] == "search.startup_trials"


def test_the_grid_sampler_orders_points_as_optunas() -> None:
    from optuna.samplers import GridSampler

    from jobs.search.samplers import Grid

    space = {"learning_rate": {"choice": [0.1, 0.2, 0.3]}, "momentum": {"choice": [0.5, 0.9]}}
    for seed in (0, 1, 7):
        ours = Grid({"space": space, "seed": seed})
        theirs = GridSampler({k: v["choice"] for k, v in space.items()}, seed=seed)
        names, points = ours.points()
        assert names == theirs._param_names and points == theirs._all_grids


def test_hyperband_deals_trials_into_brackets_with_later_first_rungs() -> None:
    from jobs.search.pruners import HyperbandPruner

    pruner = HyperbandPruner({"type": "hyperband", "min_epochs": 1, "reduction_factor": 3})
    assert [(b.index, b.size) for b in pruner.layout(9)] == [(2, 9), (1, 5), (0, 3)]
    assert [pruner.rungs(9, bracket) for bracket in range(3)] == [[1, 3], [3], []]
    assert [pruner.bracket_of(n, 9) for n in (0, 8, 9, 13, 14, 16, 17)] == [0, 0, 1, 1, 2, 2, 3]
    assert pruner.bracket_members(1, 9, 100) == range(9, 14)
    assert pruner.bracket_members(3, 9, 20) == range(17, 20)  # max_trials cuts the last one
    assert pruner.rungs(9, 3) == [1, 3]  # the next iteration starts over


@pytest.mark.parametrize(
    ("value", "cutoff", "images", "stopped"),
    [
        (19 / 150, 20 / 150, 150, False),  # one image
        (0.12, 0.18, 150, False),  # 9 images: within 2 standard errors of the difference
        (0.10, 0.20, 150, True),  # 15 images: beyond them
        (0.05, 0.40, 150, True),
        (0.495, 0.505, 10_000, False),
        (0.48, 0.52, 10_000, True),
    ],
)
def test_the_noise_margin_of_an_accuracy(
    value: float, cutoff: float, images: int, stopped: bool
) -> None:
    from jobs.search.noise import measured, worse_beyond_noise

    def at(p: float) -> Any:
        return measured("test_accuracy", p, images=images, loss_standard_error=None)

    worse, margin = worse_beyond_noise(
        at(value), at(cutoff), maximize=True, metric="test_accuracy", images=images
    )
    assert worse is stopped
    assert margin >= 1 / images


def test_the_noise_margin_of_a_loss_comes_from_its_recorded_standard_error() -> None:
    from jobs.search.noise import measured, worse_beyond_noise

    def at(value: float, error: float) -> Any:
        return measured("test_loss", value, images=100, loss_standard_error=error)

    assert worse_beyond_noise(
        at(2.3, 0.05), at(2.1, 0.05), maximize=False, metric="test_loss", images=100
    ) == (True, pytest.approx(2 * (0.05**2 * 2) ** 0.5))
    assert not worse_beyond_noise(
        at(2.3, 0.2), at(2.1, 0.2), maximize=False, metric="test_loss", images=100
    )[0]


def test_every_pruner_in_the_registry_is_accepted_and_refused_otherwise(client: TestClient) -> None:
    from jobs.search.pruners import PRUNER_NAMES

    for name in PRUNER_NAMES:
        response = client.post("/experiments", json=body(max_trials=2, pruner={"type": name}))
        assert response.status_code == 202, (name, response.text)
    unknown = client.post("/experiments", json=body(max_trials=2, pruner={"type": "magic"}))
    assert unknown.status_code == 422
    assert unknown.json()["fields"][0]["field"] == "search.pruner.type"
