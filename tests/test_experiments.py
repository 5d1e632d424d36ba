"""The experiments API in process (TestClient) on SQLite and PostgreSQL, with the embedded
broker: expansion into jobs, the report preset, limits, idempotency, the summary (JSON and CSV),
plots and cancelling."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event

from jobs.tables import JobStatus
from tests.builders import submit_experiment
from tests.support import broker_messages, drive_job
from tests.test_api import decode_png

TINY = {"epochs": 3, "batch_size": 32}
SWEEP = {
    "name": "sweep",
    "blocks": ["plain", "mobile"],
    "hyperparameters": TINY,
    "grid": {"learning_rate": [0.01, 0.1]},
    "train_samples": 50,
    "test_samples": 20,
}
PLOTS = (
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "accuracy-vs-macs",
    "accuracy-vs-params",
)


submit = submit_experiment


def refused(client: TestClient, body: dict[str, Any]) -> dict[str, str]:
    """The fields a 422 names, each with its message."""
    response = client.post("/experiments", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_error"
    return {item["field"]: item["message"] for item in response.json()["fields"]}


def nothing_created(client: TestClient) -> bool:
    return (
        len(client.get("/experiments").json()["items"]) == 0
        and len(client.get("/jobs").json()["items"]) == 0
    )


def queued_messages() -> int:
    from jobs.settings import get_settings

    return broker_messages(get_settings().var_dir)


def test_grid_times_seeds_makes_one_named_job_each(client: TestClient) -> None:
    experiment = submit(client, {**SWEEP, "seeds": [0, 1], "tags": ["sweep"]})
    assert experiment["job_count"] == 8 and experiment["status"] == "queued"
    assert experiment["status_counts"]["queued"] == 8
    assert experiment["varying"] == ["block", "learning_rate", "seed"]
    jobs = client.get("/jobs", params={"experiment_id": experiment["id"], "limit": 20}).json()
    assert len(jobs["items"]) == 8
    by_id = sorted(jobs["items"], key=lambda job: job["id"])
    assert [job["name"] for job in by_id] == [
        f"sweep / {block} learning_rate={rate} seed={seed}"
        for block in ("plain", "mobile")
        for rate in ("0.01", "0.1")
        for seed in (0, 1)
    ]
    assert {job["experiment_id"] for job in by_id} == {experiment["id"]}
    assert [row["job_id"] for row in experiment["jobs"]] == [job["id"] for job in by_id]
    assert experiment["jobs"][3]["varied"] == {"block": "plain", "learning_rate": 0.1, "seed": 1}
    assert experiment["jobs"][3]["seed"] == 1
    # Every job is stored exactly as POST /jobs would store its spec.
    last = by_id[-1]
    alone = client.post("/jobs", json=last["spec"]).json()
    assert alone["spec"] == last["spec"] and alone["experiment_id"] is None
    assert last["spec"]["hyperparameters"] == {
        **alone["spec"]["hyperparameters"],
        "learning_rate": 0.1,
        "seed": 1,
        "epochs": 3,
    }
    assert last["tags"] == ["sweep"] and last["spec"]["train_samples"] == 50
    assert (last["params"], last["macs"]) == (1_326_052, 71_919_716)
    assert queued_messages() == 9  # each job's id was sent once the transaction committed
    assert len(client.get("/jobs", params={"experiment_id": 999}).json()["items"]) == 0


def test_each_bad_value_is_named_and_nothing_is_created(client: TestClient) -> None:
    problems = refused(
        client,
        {
            **SWEEP,
            "grid": {"learning_rate": [0.1, -1, 0.1], "optimizer": ["sgd", "rmsprop"]},
            "seeds": [1, 2**31],
        },
    )
    assert set(problems) == {
        "grid.learning_rate[1]",
        "grid.learning_rate[2]",
        "grid.optimizer[1]",
        "seeds[1]",
    }
    assert problems["grid.learning_rate[1]"] == "Input should be greater than 0"
    assert problems["grid.learning_rate[2]"] == "the same value as grid.learning_rate[0]"
    assert "not a hyperparameter" in refused(client, {**SWEEP, "grid": {"x": [1]}})["grid.x"]
    assert "seeds" in refused(client, {**SWEEP, "grid": {"seed": [1, 2]}})["grid.seed"]
    assert set(refused(client, {**SWEEP, "grid": {"epochs": [2.5]}})) == {"grid.epochs[0]"}
    assert set(refused(client, {**SWEEP, "blocks": ["plain", "plain"]})) == {"blocks"}
    # Stored once (one row per tag) and shown twice: refused as blocks are.
    duplicate_tags = refused(client, {**SWEEP, "tags": ["dup", "dup"]})
    assert set(duplicate_tags) == {"tags"} and "tags must be distinct" in duplicate_tags["tags"]
    assert set(refused(client, {**SWEEP, "blocks": None})) == {"blocks"}
    assert set(refused(client, {**SWEEP, "grid": {"learning_rate": []}})) == {"grid.learning_rate"}
    assert set(refused(client, {**SWEEP, "surprise": 1})) == {"surprise"}
    assert nothing_created(client)


def test_the_report_preset_runs_the_three_blocks_with_the_reports_settings(
    client: TestClient,
) -> None:
    body = {
        "name": "report",
        "preset": "report",
        "hyperparameters": {"epochs": 2},
        "train_samples": 40,
        "test_samples": 20,
        "seeds": [3],
    }
    experiment = submit(client, body)
    assert experiment["preset"] == "report" and experiment["varying"] == ["block"]
    assert experiment["spec"]["blocks"] == ["plain", "residual", "mobile"]
    rows = experiment["jobs"]
    assert [row["block"] for row in rows] == ["plain", "residual", "mobile"]
    assert rows[0]["report"] == {
        "params": 11_050_000,
        "macs": 550_000_000,
        "final_test_accuracy": 0.7055,
        "final_train_loss": 0.014,
    }
    assert rows[1]["report"] == {
        "params": None,
        "macs": None,
        "final_test_accuracy": 0.7256,
        "final_train_loss": 0.005,
    }
    assert rows[2]["report"]["final_test_accuracy"] == 0.6149
    for row in rows:
        job = client.get(f"/jobs/{row['job_id']}").json()
        assert job["name"] == f"report / {row['block']}"
        hyperparameters = job["spec"]["hyperparameters"]
        assert (hyperparameters["batch_size"], hyperparameters["learning_rate"]) == (128, 0.01)
        assert (hyperparameters["optimizer"], hyperparameters["momentum"]) == ("sgd", 0.9)
        assert (hyperparameters["scheduler"], hyperparameters["augment"]) == ("none", True)
        assert (hyperparameters["epochs"], hyperparameters["seed"]) == (2, 3)
        assert (job["spec"]["train_samples"], job["spec"]["test_samples"]) == (40, 20)
    # Giving the report's own values changes nothing; anything else is refused, named.
    same = {
        **body,
        "name": "again",
        "dataset": "cifar100",
        "blocks": ["mobile", "plain", "residual"],
    }
    assert submit(client, {**same, "hyperparameters": {"epochs": 2, "batch_size": 128}})
    for change, field in (
        ({"hyperparameters": {"epochs": 2, "learning_rate": 0.1}}, "hyperparameters.learning_rate"),
        ({"hyperparameters": {"scheduler": "cosine"}}, "hyperparameters.scheduler"),
        ({"grid": {"batch_size": [64, 128]}}, "grid.batch_size"),
        ({"dataset": "cifar10"}, "dataset"),
        ({"blocks": ["plain", "residual"]}, "blocks"),
    ):
        problems = refused(client, {**body, **change})
        assert list(problems) == [field], change
        assert "preset report" in problems[field]
    sweep = submit(client, {**SWEEP, "seeds": [0]})
    assert all(row["report"] is None for row in sweep["jobs"])


@pytest.mark.slow
def test_an_experiment_is_capped_at_1000_jobs_made_in_one_transaction(client: TestClient) -> None:
    too_many = {
        **SWEEP,
        "grid": {"learning_rate": [0.01, 0.02, 0.05, 0.1]},
        "seeds": list(range(126)),
    }
    response = client.post("/experiments", json=too_many)
    assert response.status_code == 422
    assert response.json()["error"] == "too_many_jobs"
    assert response.json()["detail"] == "experiment would create 1008 jobs; the limit is 1000."
    assert {item["field"] for item in response.json()["fields"]} == {"blocks", "grid", "seeds"}
    assert nothing_created(client)
    # Its time is measured in docs/benchmarks.md, not here: a shared machine's load decides it.
    made = submit(client, {**too_many, "seeds": list(range(125))})
    assert made["job_count"] == 1000 and made["status_counts"]["queued"] == 1000
    # The answer's rows are the first page; the rest follow it.
    rows = made["jobs"]
    assert (
        len(rows) == 100
        and made["jobs_next"]
        == f"/experiments/{made['id']}?cursor=" + (made["jobs_next"].split("cursor=")[1])
    )
    following = made["jobs_next"]
    while following is not None:
        page = client.get(following, params={"limit": 1000}).json()
        rows += page["jobs"]
        following = page["jobs_next"]
    assert len({row["job_id"] for row in rows}) == 1000


@pytest.fixture
def small_queue_client(configure, database_url: str) -> Iterator[TestClient]:
    configure(database_url, MAX_QUEUED_JOBS="4")
    from app.main import create_app

    with TestClient(create_app()) as test_client:
        yield test_client


def test_a_full_queue_refuses_the_whole_experiment(small_queue_client: TestClient) -> None:
    client = small_queue_client
    assert client.post("/jobs", json={"block": "mobile"}).status_code == 202
    response = client.post("/experiments", json={**SWEEP, "blocks": ["plain", "residual"]})
    assert response.status_code == 503 and response.json()["error"] == "queue_full"
    assert int(response.headers["retry-after"]) > 0
    assert "1 jobs are already queued and this request adds 4 (limit 4)" in response.text
    assert len(client.get("/experiments").json()["items"]) == 0
    assert len(client.get("/jobs").json()["items"]) == 1 and queued_messages() == 1
    assert submit(client, {**SWEEP, "blocks": ["plain"], "seeds": [0]})["job_count"] == 2
    assert submit(client, {**SWEEP, "blocks": ["mobile"], "grid": {}})["job_count"] == 1
    assert len(client.get("/jobs").json()["items"]) == 4 and queued_messages() == 4


def test_a_repeated_idempotency_key_replays_or_conflicts(client: TestClient) -> None:
    first = submit(client, SWEEP, **{"Idempotency-Key": "exp-1"})
    again = client.post("/experiments", json=SWEEP, headers={"Idempotency-Key": "exp-1"})
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first["id"] and again.json()["jobs"] == first["jobs"]
    assert again.headers["location"] == f"/experiments/{first['id']}"
    assert len(client.get("/jobs").json()["items"]) == 4 and queued_messages() == 4
    other = client.post(
        "/experiments", json={**SWEEP, "name": "other"}, headers={"Idempotency-Key": "exp-1"}
    )
    assert other.status_code == 409 and other.json()["error"] == "idempotency_key_reused"
    new_key = client.post("/experiments", json=SWEEP, headers={"Idempotency-Key": "exp-2"})
    assert new_key.status_code == 202 and "idempotent-replayed" not in new_key.headers
    assert len(client.get("/experiments").json()["items"]) == 2


def drive_sweep(client: TestClient) -> dict[str, Any]:
    """SWEEP with job 1 succeeded (3 epochs, the first of them slow), job 2 running (2
    epochs), jobs 3 and 4 queued."""
    experiment = submit(client, SWEEP)
    ids = [row["job_id"] for row in experiment["jobs"]]
    drive_job(ids[0], 3, finish="succeeded", seconds={1: 5.0})
    drive_job(ids[1], 2)
    return experiment


def test_the_summary_has_each_jobs_figures_sorted_nulls_last(client: TestClient) -> None:
    experiment = drive_sweep(client)
    ids = [row["job_id"] for row in experiment["jobs"]]
    summary = client.get(f"/experiments/{experiment['id']}").json()
    assert summary["status"] == "running" and summary["varying"] == ["block", "learning_rate"]
    # Every status the core has is counted, the absent ones as 0.
    assert summary["status_counts"] == {
        **dict.fromkeys(JobStatus, 0),
        "queued": 2,
        "running": 1,
        "succeeded": 1,
    }
    first, second, third = summary["jobs"][:3]
    assert first["varied"] == {"block": "plain", "learning_rate": 0.01}
    assert (first["status"], first["epochs_done"], first["epochs_total"]) == ("succeeded", 3, 3)
    assert first["best_test_accuracy"] == pytest.approx(0.15)
    assert first["final_test_accuracy"] == pytest.approx(0.15)
    assert first["final_train_loss"] == pytest.approx(4 / 3)
    assert first["seconds_per_epoch"] == pytest.approx(3.0)  # (5 + 2 + 2) / 3
    assert second["seconds_per_epoch"] == pytest.approx(2.0)
    assert second["best_test_accuracy"] == pytest.approx(0.10)
    assert third["seconds_per_epoch"] is None and third["best_test_accuracy"] is None
    assert (third["params"], third["macs"]) == (1_326_052, 71_919_716)

    def order(**params: str) -> list[int]:
        response = client.get(f"/experiments/{experiment['id']}", params=params)
        assert response.status_code == 200, response.text
        return [row["job_id"] for row in response.json()["jobs"]]

    assert order() == ids
    assert order(sort="best_test_accuracy") == [ids[1], ids[0], ids[2], ids[3]]
    assert order(sort="best_test_accuracy", order="desc") == [ids[0], ids[1], ids[2], ids[3]]
    assert order(sort="seconds_per_epoch", order="desc") == [ids[0], ids[1], ids[2], ids[3]]
    assert order(sort="final_train_loss") == [ids[0], ids[1], ids[2], ids[3]]
    assert order(sort="block", order="desc") == [ids[2], ids[3], ids[0], ids[1]]
    assert order(sort="params") == [ids[2], ids[3], ids[0], ids[1]]
    assert order(sort="status") == [ids[2], ids[3], ids[1], ids[0]]
    assert order(sort="job_id", order="desc") == ids[::-1]
    bad = client.get(f"/experiments/{experiment['id']}", params={"sort": "name"})
    assert bad.status_code == 422 and bad.json()["fields"][0]["field"] == "query.sort"
    missing = client.get("/experiments/999")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": "experiment_not_found",
        "detail": "No experiment with id 999.",
    }


def test_reading_an_experiment_takes_the_same_queries_whatever_its_size(
    client: TestClient,
) -> None:
    from jobs.db import get_engine

    small = submit(client, {**SWEEP, "blocks": ["mobile"], "grid": {}})
    large = submit(client, {**SWEEP, "seeds": [0, 1, 2]})
    for row in small["jobs"] + large["jobs"]:
        drive_job(row["job_id"], 2)
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    engine: Engine = get_engine(write=False)
    event.listen(engine, "before_cursor_execute", count)
    try:
        counts = []
        for experiment in (small, large):
            statements.clear()
            body = client.get(f"/experiments/{experiment['id']}").json()
            assert all(row["seconds_per_epoch"] == 2.0 for row in body["jobs"])
            counts.append(len(statements))
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(large["jobs"]) == 12 and counts[0] == counts[1]


def test_the_summary_csv_has_a_row_per_job(client: TestClient) -> None:
    experiment = drive_sweep(client)
    response = client.get(f"/experiments/{experiment['id']}/summary.csv")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == (
        f'attachment; filename="experiment-{experiment["id"]}-summary.csv"'
    )
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == [
        "job_id",
        "block",
        "learning_rate",
        "seed",
        "status",
        "epochs_done",
        "epochs_total",
        "params",
        "macs",
        "best_test_accuracy",
        "final_test_accuracy",
        "final_train_loss",
        "seconds_per_epoch",
    ]
    assert len(rows) == 5
    first = dict(zip(rows[0], rows[1], strict=True))
    assert first["job_id"] == str(experiment["jobs"][0]["job_id"])
    assert (first["block"], first["learning_rate"], first["seed"]) == ("plain", "0.01", "0")
    assert (first["status"], first["epochs_done"], first["epochs_total"]) == ("succeeded", "3", "3")
    assert (first["params"], first["macs"]) == ("11050212", "551979108")
    assert float(first["best_test_accuracy"]) == pytest.approx(0.15)
    assert float(first["final_train_loss"]) == pytest.approx(4 / 3)
    assert float(first["seconds_per_epoch"]) == pytest.approx(3.0)
    last = dict(zip(rows[0], rows[4], strict=True))
    assert (last["block"], last["learning_rate"], last["status"]) == ("mobile", "0.1", "queued")
    assert last["best_test_accuracy"] == "" and last["seconds_per_epoch"] == ""
    assert client.get("/experiments/999/summary.csv").status_code == 404


def test_a_report_experiments_csv_has_the_reports_figures(client: TestClient) -> None:
    """The figures the report published, shown beside each block on the experiment's page,
    are columns of its CSV too (empty where the report prints none); other experiments have no
    such columns."""
    body = {"name": "report", "preset": "report", "hyperparameters": {"epochs": 1}}
    experiment = submit(client, body)
    response = client.get(f"/experiments/{experiment['id']}/summary.csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert list(rows[0])[-4:] == [
        "report_params",
        "report_macs",
        "report_final_test_accuracy",
        "report_final_train_loss",
    ]
    figures = {
        row["block"]: (
            row["report_params"],
            row["report_macs"],
            row["report_final_test_accuracy"],
            row["report_final_train_loss"],
        )
        for row in rows
    }
    assert figures == {
        "plain": ("11050000", "550000000", "0.7055", "0.014"),
        "residual": ("", "", "0.7256", "0.005"),
        "mobile": ("1330000", "70000000", "0.6149", "0.1"),
    }
    sweep = submit(client, {**SWEEP, "seeds": [0]})
    columns = next(csv.reader(io.StringIO(client.get(sweep["links"]["summary_csv"]).text)))
    assert not any(column.startswith("report_") for column in columns)


def test_every_plot_is_a_png(client: TestClient) -> None:
    experiment = drive_sweep(client)
    empty = submit(client, {**SWEEP, "name": "not started"})
    for plot in PLOTS:
        for target in (experiment, empty):
            response = client.get(f"/experiments/{target['id']}/plots/{plot}.png")
            assert response.status_code == 200, (plot, response.text)
            assert response.headers["content-type"] == "image/png"
            height, width = decode_png(response.content).shape[:2]
            assert 300 <= height <= 1000 and 500 <= width <= 1500, (plot, height, width)
        assert experiment["links"]["plots"][plot.replace("-", "_")] == (
            f"/experiments/{experiment['id']}/plots/{plot}.png"
        )
        assert (
            client.get(f"/experiments/999/plots/{plot}.png").json()["error"]
            == "experiment_not_found"
        )
    unknown = client.get(f"/experiments/{experiment['id']}/plots/loss.png")
    assert unknown.status_code == 404 and "train_loss.png" in unknown.json()["detail"]


def test_the_size_plots_label_each_point_and_name_the_jobs_left_out() -> None:
    from app.plots import Point, scatter_chart

    figure = scatter_chart(
        [Point("plain", 552.0, 15.0), Point("mobile", 72.0, 12.5), Point("residual", 558.0, None)],
        x_label="MACs",
        y_label="Best test accuracy (%)",
        title="t",
        empty_note="no epochs recorded yet",
    )
    axes = figure.axes[0]
    assert axes.get_xscale() == "log"
    assert [text.get_text() for text in axes.texts] == [
        "plain",
        "mobile",
        "no epochs recorded yet: residual",
    ]
    [points] = axes.collections
    assert points.get_offsets().tolist() == [[552.0, 15.0], [72.0, 12.5]]
    nothing = scatter_chart([Point("plain", 1.0, None)], x_label="x", y_label="y", title="t")
    assert [text.get_text() for text in nothing.axes[0].texts] == ["no epochs recorded yet"]


def test_cancel_stops_every_job_that_has_not_ended(client: TestClient) -> None:
    experiment = drive_sweep(client)
    ids = [row["job_id"] for row in experiment["jobs"]]
    response = client.post(f"/experiments/{experiment['id']}/cancel")
    assert response.status_code == 200
    body = response.json()
    assert [row["status"] for row in body["jobs"]] == [
        "succeeded",
        "running",
        "cancelled",
        "cancelled",
    ]
    assert client.get(f"/jobs/{ids[1]}").json()["cancel_requested"] is True
    assert client.get(f"/jobs/{ids[0]}").json()["cancel_requested"] is False
    assert body["status"] == "running" and body["status_counts"]["cancelled"] == 2
    # The running job has not stopped yet: cancelling again is harmless.
    assert client.post(f"/experiments/{experiment['id']}/cancel").status_code == 200

    queued = submit(client, {**SWEEP, "name": "queued"})
    assert client.post(f"/experiments/{queued['id']}/cancel").json()["status"] == "cancelled"
    ended = client.post(f"/experiments/{queued['id']}/cancel")
    assert ended.status_code == 409 and ended.json()["error"] == "not_cancellable"
    assert client.post("/experiments/999/cancel").status_code == 404


def test_experiments_are_listed_newest_first_without_job_rows(client: TestClient) -> None:
    ids = [submit(client, {**SWEEP, "name": f"e{n}"})["id"] for n in range(3)]
    client.post(f"/experiments/{ids[1]}/cancel")
    listing = client.get("/experiments").json()
    assert [item["id"] for item in listing["items"]] == ids[::-1] and listing["next"] is None
    assert all(item["jobs"] == [] and item["job_count"] == 4 for item in listing["items"])
    assert [item["status"] for item in listing["items"]] == ["queued", "cancelled", "queued"]
    assert listing["items"][1]["status_counts"]["cancelled"] == 4
    pages = [client.get("/experiments", params={"limit": 2}).json()]
    pages.append(client.get(pages[0]["next"]).json())
    assert [[item["id"] for item in page["items"]] for page in pages] == [ids[:0:-1], [ids[0]]]
    assert pages[1]["next"] is None
    assert client.get("/jobs").json()["items"][0]["experiment_id"] == ids[2]


def test_openapi_lists_the_plot_names_and_sort_columns(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]

    def parameter(path: str, name: str) -> dict[str, Any]:
        [found] = [p for p in paths[path]["get"]["parameters"] if p["name"] == name]
        return found["schema"]

    assert parameter("/experiments/{experiment_id}/plots/{plot}.png", "plot")["enum"] == list(PLOTS)
    assert "final_test_accuracy" in parameter("/experiments/{experiment_id}", "sort")["enum"]
    assert parameter("/experiments/{experiment_id}", "order")["enum"] == ["asc", "desc"]
    csv_response = paths["/experiments/{experiment_id}/summary.csv"]["get"]["responses"]["200"]
    assert "text/csv" in csv_response["content"]
    submit_responses = paths["/experiments"]["post"]["responses"]
    assert {"202", "409", "422", "503"} <= set(submit_responses)
