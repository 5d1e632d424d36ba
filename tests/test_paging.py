"""Cursor pages of /jobs and /experiments: every job exactly once while jobs are added and
finished, each sort and filter, the Link header, and a clear error for a damaged cursor."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.builders import submit_job
from tests.support import drive_job


def submit(client: TestClient, **fields: Any) -> int:
    return int(submit_job(client, **fields)["id"])


def read_all(client: TestClient, params: dict[str, Any], between: Any = None) -> list[int]:
    """Every page's ids in order, following `next`; `between(page_number)` runs between
    pages."""
    ids: list[int] = []
    response = client.get("/jobs", params=params)
    number = 0
    while True:
        assert response.status_code == 200, response.text
        page = response.json()
        ids += [item["id"] for item in page["items"]]
        if page["next"] is None:
            assert "Link" not in response.headers
            return ids
        assert response.headers["Link"] == f'<{page["next"]}>; rel="next"'
        number += 1
        if between is not None:
            between(number)
        response = client.get(page["next"])


def test_every_job_once_while_jobs_are_added_and_finished(client: TestClient) -> None:
    existing = [submit(client, tags=["sweep"] if n % 2 else []) for n in range(9)]
    added: list[int] = []

    def churn(page_number: int) -> None:
        added.append(submit(client))  # newer than every cursor: lands on pages already read
        drive_job(existing[page_number], 2, finish="succeeded")  # queued -> succeeded

    ids = read_all(client, {"limit": 2}, churn)
    assert ids == existing[::-1]  # newest first, each exactly once, none added mid-way
    assert read_all(client, {"limit": 4}) == [*added[::-1], *existing[::-1]]
    # A status filter: jobs that leave it while paging never push another across the cursor.
    queued = read_all(client, {"status": "queued", "limit": 2}, lambda n: drive_job(added[n], 1))
    assert set(queued) >= set(added[4:]) and len(queued) == len(set(queued))
    tagged = read_all(client, {"tag": "sweep", "limit": 2})
    assert tagged == [job for job in existing[::-1] if existing.index(job) % 2]
    assert read_all(client, {"tag": "nothing"}) == []


def test_best_accuracy_pages_highest_first_then_untested_newest_first(client: TestClient) -> None:
    ids = [submit(client, block=block) for block in ("mobile", "plain") * 4]
    epochs = {ids[0]: 3, ids[1]: 1, ids[2]: 3, ids[3]: 2, ids[5]: 1}  # ties at 0.15 and 0.05
    for job_id, count in epochs.items():
        drive_job(job_id, count, finish="succeeded")
    expected = sorted(epochs, key=lambda job: (-epochs[job], -job)) + sorted(
        (job for job in ids if job not in epochs), reverse=True
    )
    for limit in (1, 2, 3, 50):
        assert read_all(client, {"sort": "best_test_accuracy", "limit": limit}) == expected
    plain = read_all(client, {"sort": "best_test_accuracy", "block": "plain", "limit": 2})
    assert plain == [job for job in expected if ids.index(job) % 2]
    page = client.get("/jobs", params={"sort": "best_test_accuracy", "limit": 1}).json()
    assert page["items"][0]["best_test_accuracy"] == pytest.approx(0.15)


def test_a_damaged_cursor_is_a_422_naming_it(client: TestClient) -> None:
    for n in range(3):
        submit(client, name=f"j{n}")
    following = client.get("/jobs", params={"limit": 1}).json()["next"]
    cursor = following.split("cursor=")[1]
    by_accuracy = client.get("/jobs", params={"limit": 1, "sort": "best_test_accuracy"}).json()

    def encoded(data: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    for bad in (
        "not-a-cursor",
        cursor[:-3],
        cursor + "!",
        encoded({"of": "jobs:created", "id": "3"}),
        encoded({"of": "jobs:created", "id": 0}),
        encoded({"of": "jobs:created", "id": 3, "extra": 1}),
        encoded({"of": "experiments", "id": 3}),
        encoded([1, 2]),
        by_accuracy["next"].split("cursor=")[1],  # another sort's
    ):
        response = client.get("/jobs", params={"limit": 1, "cursor": bad})
        assert response.status_code == 422, bad
        assert response.json()["fields"][0]["field"] == "cursor", bad
    experiments = client.get("/experiments", params={"cursor": cursor})
    assert experiments.status_code == 422 and experiments.json()["fields"][0]["field"] == "cursor"
    assert client.get(following).status_code == 200
