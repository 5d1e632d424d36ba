"""An experiment read a page at a time: its rows in every sort and order, each job once, by
cursor; its curves under a byte cap, in rows or columns; its CSV streamed; its summary from
kept figures, never its epoch rows; and the clear 422s of bad paging input."""

from __future__ import annotations

import csv
import io
import itertools
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jobs.listing import RANKED_VALUES
from jobs.tables import JobStatus
from tests.builders import submit_experiment
from tests.support import drive_job, statements_of
from tests.test_schema_agreement import component_validator, openapi

GRID = {
    "name": "grid",
    "blocks": ["plain", "residual", "mobile"],
    "hyperparameters": {"epochs": 4, "batch_size": 32},
    "grid": {"learning_rate": [0.01, 0.1]},
    "seeds": [0, 1],
    "train_samples": 50,
    "test_samples": 20,
}
SORTS = [
    "job_id",
    "block",
    "status",
    "best_test_accuracy",
    "final_test_accuracy",
    "final_train_loss",
    "seconds_per_epoch",
    "params",
    "macs",
]


def driven(client: TestClient) -> dict[str, Any]:
    """GRID's 12 jobs: some trained to different depths and speeds (ties included), some
    ended, some queued."""
    made = submit_experiment(client, GRID)
    ids = [row["job_id"] for row in made["jobs"]]
    for index, job_id in enumerate(ids[:8]):
        epochs = 1 + index % 3  # accuracies tie across jobs
        finish = ("succeeded", None, "failed")[index % 3]
        drive_job(job_id, epochs, finish=finish, seconds={1: 1.0 + index % 2})
    return made


def expected(rows: list[dict[str, Any]], sort: str, order: str) -> list[int]:
    """The documented order: by the column (block and status in their own order), ties by job
    id, jobs without a value last in either order."""

    def key(row: dict[str, Any]) -> Any:
        value = row[sort]
        return RANKED_VALUES[sort].index(value) if sort in RANKED_VALUES else value

    present = sorted((row for row in rows if row[sort] is not None), key=lambda row: row["job_id"])
    present.sort(key=key, reverse=order == "desc")
    missing = sorted(row["job_id"] for row in rows if row[sort] is None)
    return [row["job_id"] for row in present] + missing


def pages(client: TestClient, path: str, **params: Any) -> tuple[list[int], int]:
    """Every page's job ids in order, following `jobs_next`, and the number of pages."""
    response = client.get(path, params=params)
    ids: list[int] = []
    count = 0
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        ids += [row["job_id"] for row in body["jobs"]]
        count += 1
        if body["jobs_next"] is None:
            assert "Link" not in response.headers
            return ids, count
        assert response.headers["Link"] == f'<{body["jobs_next"]}>; rel="next"'
        response = client.get(body["jobs_next"])


@pytest.mark.slow
def test_every_sort_and_order_pages_every_job_once(client: TestClient) -> None:
    made = driven(client)
    path = f"/experiments/{made['id']}"
    everything = client.get(path, params={"limit": 1000}).json()
    rows = everything["jobs"]
    assert len(rows) == 12 and everything["jobs_next"] is None
    assert any(row["seconds_per_epoch"] == 2.0 for row in rows)
    for sort, order in itertools.product(SORTS, ("asc", "desc")):
        whole = expected(rows, sort, order)
        one = client.get(path, params={"sort": sort, "order": order, "limit": 1000}).json()
        assert [row["job_id"] for row in one["jobs"]] == whole, (sort, order)
        for limit in (1, 5):
            ids, count = pages(client, path, sort=sort, order=order, limit=limit)
            assert ids == whole, (sort, order, limit)
            assert count == -(-12 // limit)


def test_existing_clients_get_a_first_page_of_100(client: TestClient) -> None:
    made = submit_experiment(client, {**GRID, "seeds": list(range(17))})  # 102 jobs
    assert made["job_count"] == 102 and len(made["jobs"]) == 100
    assert made["jobs_next"] is not None
    first = client.get(f"/experiments/{made['id']}").json()
    assert len(first["jobs"]) == 100 and first["status_counts"]["queued"] == 102
    rest = client.get(first["jobs_next"]).json()
    assert [row["job_id"] for row in first["jobs"] + rest["jobs"]] == sorted(
        row["job_id"] for row in first["jobs"] + rest["jobs"]
    )
    assert len(rest["jobs"]) == 2 and rest["jobs_next"] is None


def test_bad_paging_input_is_a_422_naming_the_field(client: TestClient) -> None:
    made = submit_experiment(client, GRID)
    path = f"/experiments/{made['id']}"
    by_status = client.get(path, params={"sort": "status", "limit": 2}).json()["jobs_next"]
    cursor = by_status.split("cursor=")[1]
    cases = [
        (path, {"limit": 0}, "query.limit"),
        (path, {"limit": 1001}, "query.limit"),
        (path, {"cursor": "not-a-cursor"}, "cursor"),
        (path, {"cursor": cursor}, "cursor"),  # another sort's
        (path, {"sort": "status", "order": "desc", "cursor": cursor}, "cursor"),
        (path, {"offset": 10}, "offset"),
        (f"{path}/metrics", {"max_bytes": 100}, "query.max_bytes"),
        (f"{path}/metrics", {"format": "csv"}, "query.format"),
        (f"{path}/metrics", {"cursor": "x"}, "cursor"),
    ]
    for route, params, field in cases:
        response = client.get(route, params=params)
        assert response.status_code == 422, (params, response.text)
        assert response.json()["fields"][0]["field"] == field, params
    assert client.get(path, params={"sort": "status", "cursor": cursor}).status_code == 200


def curves(client: TestClient, path: str, **params: Any) -> tuple[list[dict[str, Any]], int]:
    """Every page's curves, following `next`, each answer within `max_bytes`; the pages."""
    schema = openapi(client)
    name = "ExperimentMetricColumns" if params.get("format") == "columns" else "ExperimentMetrics"
    validator = component_validator(schema, name)
    response = client.get(path, params=params)
    found: list[dict[str, Any]] = []
    count = 0
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        assert validator.is_valid(body), body
        if len(body["jobs"]) > 1:
            assert len(response.content) <= params.get("max_bytes", 1_000_000)
        found += body["jobs"]
        count += 1
        if body["next"] is None:
            return found, count
        assert response.headers["Link"] == f'<{body["next"]}>; rel="next"'
        response = client.get(body["next"])


@pytest.mark.slow
def test_curves_come_in_pages_under_a_byte_cap_as_rows_or_columns(client: TestClient) -> None:
    made = submit_experiment(client, {**GRID, "hyperparameters": {"epochs": 30}})
    ids = [row["job_id"] for row in made["jobs"]]
    for job_id in ids[:9]:
        drive_job(job_id, 30)
    path = f"/experiments/{made['id']}/metrics"
    whole, count = curves(client, path)
    assert count == 1 and [curve["job_id"] for curve in whole] == ids[:9]
    columns, _ = curves(client, path, format="columns")
    for row_curve, column_curve in zip(whole, columns, strict=True):
        assert column_curve["job_id"] == row_curve["job_id"]
        for name, values in column_curve.items():
            if name != "job_id":
                assert values == [point[name] for point in row_curve["metrics"]], name
    capped, count = curves(client, path, max_bytes=10_000)
    assert capped == whole and count > 2
    narrow, count = curves(client, path, max_bytes=10_000, format="columns")
    assert narrow == columns and count < len(capped)
    # Curves longer than max_points are downsampled, shorter ones read whole: each as the
    # job's own metrics give it.
    drive_job(ids[9], 10)
    mixed, _ = curves(client, path, max_points=20)
    assert [curve["job_id"] for curve in mixed] == ids[:10]
    for curve in mixed:
        own = client.get(f"/jobs/{curve['job_id']}/metrics", params={"max_points": 20}).json()
        assert curve["metrics"] == own["metrics"]
    assert len(mixed[0]["metrics"]) <= 20 < 30 and len(mixed[-1]["metrics"]) == 10
    # The rows' order and cursor are the experiment page's.
    by_accuracy, _ = curves(client, path, sort="best_test_accuracy", order="desc", limit=2)
    page = client.get(
        f"/experiments/{made['id']}", params={"sort": "best_test_accuracy", "order": "desc"}
    ).json()
    ranked = [row["job_id"] for row in page["jobs"] if row["epochs_done"]]
    assert len(ranked) == 10
    assert [curve["job_id"] for curve in by_accuracy] == ranked


def test_the_csv_is_streamed_a_page_at_a_time(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.routes.experiments.CSV_JOBS_PER_READ", 5)
    made = driven(client)
    with statements_of(write=False) as seen:
        response = client.get(f"/experiments/{made['id']}/summary.csv")
    assert response.status_code == 200
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [int(row["job_id"]) for row in rows] == [row["job_id"] for row in made["jobs"]]
    assert rows[0]["seconds_per_epoch"] == "1.0"
    pages_read = [sql for sql in seen if sql.startswith("SELECT jobs.id") and "LIMIT" in sql]
    assert len(pages_read) == 3  # 5 + 5 + 2 rows


def test_a_summary_reads_kept_figures_never_epoch_rows(client: TestClient) -> None:
    made = driven(client)
    with statements_of(write=False) as seen:
        summary = client.get(f"/experiments/{made['id']}").json()
        listed = client.get("/experiments").json()
    assert summary["status_counts"][JobStatus.SUCCEEDED] == 3
    assert listed["items"][0]["status_counts"] == summary["status_counts"]
    assert not [sql for sql in seen if "epoch_metrics" in sql or "count(" in sql.lower()], seen
