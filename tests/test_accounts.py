"""Accounts in process, on SQLite and PostgreSQL: users and their tokens, who may change what
(every write route of the app's route table, for a member on someone else's job, experiment or
user), owner filters, the queued-jobs quota, and the audit trail."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.support import drive_job

KEY = "s3cret-key"
ADMIN = {"X-API-Key": KEY}
JOB = {"block": "mobile", "hyperparameters": {"epochs": 2}, "train_samples": 40}
GRID = {"name": "grid", "blocks": ["mobile", "plain"], "hyperparameters": {"epochs": 2}}
SEARCH = {
    "name": "search",
    "blocks": ["mobile"],
    "hyperparameters": {"epochs": 2},
    "search": {
        "space": {"learning_rate": {"loguniform": [0.001, 0.1]}},
        "max_trials": 6,
        "max_concurrent": 3,
    },
}


@pytest.fixture
def api(configure, database_url: str) -> Iterator[TestClient]:
    """An in-process API with API_KEY set, on each database."""
    configure(database_url, API_KEY=KEY)
    from app.main import create_app

    with TestClient(create_app()) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_user(api: TestClient, name: str, **fields: Any) -> dict[str, str]:
    """A new user's headers (their first token)."""
    response = api.post("/users", json={"name": name, "role": "member", **fields}, headers=ADMIN)
    assert response.status_code == 201, response.text
    return bearer(response.json()["token"]["token"])


def audit_count() -> int:
    from jobs.db import session_scope
    from jobs.tables import AuditEvent

    with session_scope(write=False) as session:
        return session.execute(select(func.count()).select_from(AuditEvent)).scalar_one()


def assert_error(response: Any, status: int, code: str, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code, body
    for word in words:
        assert word in body["detail"], (word, body)
    return body


# --- users and tokens -------------------------------------------------------------------------


def test_users_and_their_tokens(api: TestClient) -> None:
    made = api.post("/users", json={"name": "ada", "role": "member", "max_queued_jobs": 5},
                    headers=ADMIN)  # fmt: skip
    assert made.status_code == 201, made.text
    assert made.headers["location"] == "/users/ada"
    body = made.json()
    assert body["user"]["name"] == "ada" and body["user"]["role"] == "member"
    assert body["user"]["max_queued_jobs"] == 5 and body["user"]["max_running_jobs"] is None
    token = body["token"]["token"]
    assert re.fullmatch(r"cj_[A-Za-z0-9_-]{43}", token)
    ada = bearer(token)
    # The token, as either header.
    assert api.get("/me", headers=ada).json() == {"name": "ada", "role": "member", "accounts": True}
    assert api.get("/me", headers={"X-API-Key": token}).json()["name"] == "ada"
    assert api.get("/me", headers=ADMIN).json() == {
        "name": "admin",
        "role": "admin",
        "accounts": True,
    }

    # Only the hash is kept.
    from jobs.accounts import token_sha256
    from jobs.db import session_scope
    from jobs.tables import UserToken

    with session_scope(write=False) as session:
        stored = session.execute(select(UserToken.token_sha256)).scalars().all()
    assert stored == [token_sha256(token)] and token not in stored

    # Another token of their own, labelled; the list never shows a token or a hash.
    second = api.post("/users/ada/tokens", json={"label": "laptop"}, headers=ada)
    assert second.status_code == 201, second.text
    assert second.json()["label"] == "laptop" and second.json()["token"] != token
    listed = api.get("/users/ada/tokens", headers=ada).json()["items"]
    assert [item["label"] for item in listed] == ["first", "laptop"]
    assert all(set(item) == {"id", "label", "created_at", "last_used_at", "revoked_at"}
               for item in listed)  # fmt: skip
    assert listed[0]["last_used_at"] is not None  # used above
    assert token not in api.get("/users/ada/tokens", headers=ADMIN).text

    # Revoking the first: it fails on the very next request; the second still works.
    first_id = listed[0]["id"]
    assert api.delete(f"/users/ada/tokens/{first_id}", headers=ada).json() == {
        "revoked": [first_id]
    }
    assert_error(api.get("/me", headers=ada), 401, "token_revoked", "revoked")
    laptop = bearer(second.json()["token"])
    assert api.get("/me", headers=laptop).json()["name"] == "ada"
    # Revoking all of them (again harmless).
    assert api.delete("/users/ada/tokens", headers=ADMIN).json() == {
        "revoked": [second.json()["id"]]
    }
    assert api.delete("/users/ada/tokens", headers=ADMIN).json() == {"revoked": []}
    assert_error(api.get("/jobs", headers=laptop), 401, "token_revoked")

    # The admin makes her a new one; PATCH changes role and limits, only what is sent.
    fresh = api.post("/users/ada/tokens", headers=ADMIN)
    assert fresh.status_code == 201, fresh.text
    ada = bearer(fresh.json()["token"])
    changed = api.patch("/users/ada", json={"max_running_jobs": 2}, headers=ADMIN)
    assert changed.status_code == 200, changed.text
    assert changed.json()["max_running_jobs"] == 2 and changed.json()["max_queued_jobs"] == 5
    assert [user["name"] for user in api.get("/users", headers=ADMIN).json()["items"]] == ["ada"]
    assert api.get("/users/ada", headers=ada).json()["name"] == "ada"  # herself

    # Disabled: every token stops at once; enabled again, they work again.
    disabled = api.patch("/users/ada", json={"disabled": True}, headers=ADMIN)
    assert disabled.json()["disabled"] is True and disabled.json()["disabled_at"] is not None
    assert_error(api.get("/me", headers=ada), 401, "user_disabled", "ada is disabled")
    api.patch("/users/ada", json={"disabled": False}, headers=ADMIN)
    assert api.get("/me", headers=ada).status_code == 200

    # An admin user may do what the key may.
    boss = make_user(api, "boss", role="admin")
    assert api.post("/users", json={"name": "cy"}, headers=boss).status_code == 201
    assert api.get("/audit", headers=boss).status_code == 200


def test_bad_requests_change_nothing(api: TestClient) -> None:
    ada = make_user(api, "ada")
    bob = make_user(api, "bob")
    before = audit_count()
    users_before = api.get("/users", headers=ADMIN).json()

    assert_error(api.post("/users", json={"name": "ada"}, headers=ADMIN), 409, "user_exists")
    assert_error(api.post("/users", json={"name": "admin"}, headers=ADMIN), 409, "user_exists")
    for body, field in (
        ({"name": "Ada Lovelace"}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 65}, "name"),
        ({"name": "eve", "role": "root"}, "role"),
        ({"name": "eve", "max_queued_jobs": -1}, "max_queued_jobs"),
        ({"name": "eve", "token": "cj_mine"}, "token"),
    ):
        refused = assert_error(api.post("/users", json=body, headers=ADMIN), 422,
                               "validation_error")  # fmt: skip
        assert [item["field"] for item in refused["fields"]] == [field], refused
    assert_error(api.patch("/users/ada", json={"role": "root"}, headers=ADMIN), 422,
                 "validation_error", "role")  # fmt: skip
    assert_error(api.get("/users/nobody", headers=ADMIN), 404, "user_not_found", "nobody")
    assert_error(api.patch("/users/nobody", json={"disabled": True}, headers=ADMIN), 404,
                 "user_not_found")  # fmt: skip
    assert_error(api.delete("/users/ada/tokens/999", headers=ada), 404, "token_not_found")
    # A member manages neither users nor anyone else's tokens, nor reads the trail.
    assert_error(api.post("/users", json={"name": "eve"}, headers=ada), 403, "forbidden")
    assert_error(api.patch("/users/bob", json={"role": "admin"}, headers=ada), 403, "forbidden")
    assert_error(api.patch("/users/ada", json={"role": "admin"}, headers=ada), 403, "forbidden")
    assert_error(api.get("/users", headers=ada), 403, "forbidden")
    assert_error(api.get("/users/bob", headers=ada), 403, "forbidden")
    assert_error(api.post("/users/bob/tokens", headers=ada), 403, "forbidden")
    assert_error(api.get("/users/bob/tokens", headers=ada), 403, "forbidden")
    assert_error(api.delete("/users/bob/tokens", headers=ada), 403, "forbidden")
    bob_token = api.get("/users/bob/tokens", headers=bob).json()["items"][0]["id"]
    assert_error(api.delete(f"/users/bob/tokens/{bob_token}", headers=ada), 403, "forbidden")
    # Bob's token id is no token of Ada's.
    assert_error(api.delete(f"/users/ada/tokens/{bob_token}", headers=ada), 404,
                 "token_not_found")  # fmt: skip
    assert_error(api.get("/audit", headers=ada), 403, "forbidden")

    # Credentials that are no good: 401 naming the problem, never another token.
    for headers, code in (
        ({"X-API-Key": "cj_short"}, "token_malformed"),
        (bearer("cj_" + "A" * 43), "token_unknown"),
        (bearer("cj_" + "A" * 42 + "!"), "token_malformed"),
        ({"X-API-Key": "not-a-token"}, "unauthorized"),
        ({"Authorization": "Basic abc"}, "unauthorized"),
        ({"Cookie": "dashboard_sign_in=1." + "0" * 64}, "token_unknown"),
        ({"Cookie": "dashboard_sign_in=junk"}, "token_malformed"),
    ):
        refused = assert_error(api.post("/users", json={"name": "eve"}, headers=headers), 401, code)
        assert "cj_" + "A" * 43 not in refused["detail"]

    assert audit_count() == before
    assert api.get("/users", headers=ADMIN).json() == users_before


def test_without_api_key_there_are_no_accounts(client: TestClient) -> None:
    assert client.get("/me").json() == {"name": None, "role": "admin", "accounts": False}
    assert_error(client.post("/users", json={"name": "ada"}), 409, "accounts_off", "API_KEY")
    assert client.get("/users").json() == {"items": []}
    job = client.post("/jobs", json=JOB).json()
    assert job["owner"] is None
    # Everyone may do everything, and the trail records it without a name.
    assert client.post(f"/jobs/{job['id']}/cancel").status_code == 200
    actions = [(item["actor"], item["action"]) for item in client.get("/audit").json()["items"]]
    assert actions == [(None, "job_cancelled"), (None, "job_submitted")]
    # A token means nothing here (and hides nothing).
    assert client.get("/me", headers=bearer("cj_" + "A" * 43)).json()["accounts"] is False


# --- who may change what ----------------------------------------------------------------------

WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# Write routes that change no job, experiment or user of someone else's: submissions (owned by
# the caller) and the dashboard's sign-in and sign-out (open). A new write route must either
# name what it changes in its path (and be refused to others below) or be listed here.
UNSCOPED_WRITES = {
    ("POST", "/jobs"),
    ("POST", "/experiments"),
    ("POST", "/users"),  # admins only: refused to members above
    ("POST", "/ui/login"),
    ("POST", "/ui/logout"),
}
# A valid body for the write routes that need one, so that the refusal is the permission's.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("PATCH", "/jobs/{job_id}"): {"priority": 3},
    ("PATCH", "/experiments/{experiment_id}"): {"priority": 3},
    ("PATCH", "/users/{name}"): {"role": "admin"},
    ("POST", "/users/{name}/tokens"): {"label": "mine now"},
}


def write_routes(api: TestClient) -> set[tuple[str, str]]:
    """(method, path) of every route of the app that may change something: its route table,
    the routes of included routers included (FastAPI keeps those behind a router entry)."""
    found = set()
    for entry in api.app.routes:  # type: ignore[attr-defined]
        included = getattr(entry, "effective_route_contexts", None)
        for route in included() if included is not None else [entry]:
            methods = getattr(route, "methods", None) or set()
            found |= {(method, route.path) for method in methods & WRITE_METHODS}
    return found


def test_every_write_route_refuses_a_member_on_what_is_not_theirs(api: TestClient) -> None:
    ada = make_user(api, "ada")
    bob = make_user(api, "bob")
    job = api.post("/jobs", json=JOB, headers=ada).json()
    experiment = api.post("/experiments", json=SEARCH, headers=ada).json()
    assert job["owner"] == "ada" and experiment["owner"] == "ada"
    trial = api.get(f"/jobs?experiment_id={experiment['id']}", headers=ada).json()["items"][0]
    assert trial["owner"] == "ada"
    token_id = api.get("/users/ada/tokens", headers=ada).json()["items"][0]["id"]
    values = {
        "job_id": job["id"],
        "experiment_id": experiment["id"],
        "name": "ada",
        "token_id": token_id,
    }

    routes = write_routes(api)
    scoped = sorted(routes - UNSCOPED_WRITES)
    assert routes >= UNSCOPED_WRITES
    assert len(scoped) == 11, scoped
    before_audit = audit_count()
    before_job = api.get(f"/jobs/{job['id']}", headers=bob).json()
    before_experiment = api.get(f"/experiments/{experiment['id']}", headers=bob).json()
    for method, template in scoped:
        names = re.findall(r"\{([^}]+)\}", template)
        assert names, (method, template)
        path = template.format(**{name: values[name] for name in names})
        body = BODIES.get((method, template))
        refused = api.request(method, path, headers=bob, json=body)
        assert_error(refused, 403, "forbidden")
        # The trial of ada's search is hers too.
        if "{job_id}" in template:
            other = api.request(method, template.replace("{job_id}", str(trial["id"])),
                                headers=bob, json=body)  # fmt: skip
            assert_error(other, 403, "forbidden")
    # Nothing changed.
    assert audit_count() == before_audit
    assert api.get(f"/jobs/{job['id']}", headers=bob).json() == before_job
    after = api.get(f"/experiments/{experiment['id']}", headers=bob).json()
    assert {**after, "last_event_id": None} == {**before_experiment, "last_event_id": None}
    assert api.get("/me", headers=ada).status_code == 200  # her token was not revoked

    # Reading is everyone's.
    assert api.get(f"/jobs/{job['id']}/metrics", headers=bob).status_code == 200
    # The owner may, and so may an admin.
    assert api.patch(f"/jobs/{job['id']}", json={"priority": 2}, headers=ada).status_code == 200
    assert api.patch(f"/jobs/{job['id']}", json={"priority": 4}, headers=ADMIN).status_code == 200
    assert api.post(f"/experiments/{experiment['id']}/cancel", headers=ada).status_code == 200
    assert api.post(f"/jobs/{job['id']}/cancel", headers=ADMIN).status_code == 200
    assert api.delete(f"/jobs/{job['id']}", headers=ada).status_code == 204
    assert api.delete(f"/experiments/{experiment['id']}", headers=ADMIN).status_code == 204


def test_owner_filters_page_with_cursors(api: TestClient) -> None:
    ada = make_user(api, "ada")
    bob = make_user(api, "bob")
    mine = [api.post("/jobs", json={**JOB, "name": f"a{i}"}, headers=ada).json()["id"]
            for i in range(5)]  # fmt: skip
    theirs = [api.post("/jobs", json=JOB, headers=bob).json()["id"] for _ in range(3)]
    keyed = api.post("/jobs", json=JOB, headers=ADMIN).json()
    assert keyed["owner"] == "admin"
    api.post(f"/jobs/{mine[1]}/cancel", headers=ada)

    def pages(url: str) -> list[int]:
        ids: list[int] = []
        while url:
            page = api.get(url, headers=bob).json()
            ids += [item["id"] for item in page["items"]]
            assert all(item["owner"] == "ada" for item in page["items"])
            url = page["next"]
        return ids

    assert pages("/jobs?owner=ada&limit=2") == sorted(mine, reverse=True)
    assert pages("/jobs?owner=ada&status=queued&limit=2") == sorted(
        set(mine) - {mine[1]}, reverse=True
    )
    assert pages("/jobs?owner=ada&block=mobile&limit=3") == sorted(mine, reverse=True)
    assert pages("/jobs?owner=ada&sort=best_test_accuracy&limit=2") == sorted(mine, reverse=True)
    assert api.get("/jobs?owner=admin", headers=ada).json()["items"][0]["id"] == keyed["id"]
    assert api.get("/jobs?owner=nobody", headers=ada).json()["items"] == []
    assert [item["id"] for item in api.get("/jobs?owner=bob", headers=ada).json()["items"]] == (
        sorted(theirs, reverse=True)
    )
    assert_error(api.get("/jobs?owner=Not%20A%20Name", headers=ada), 422, "validation_error",
                 "owner")  # fmt: skip

    grids = [api.post("/experiments", json=GRID, headers=ada).json()["id"] for _ in range(3)]
    api.post("/experiments", json=GRID, headers=bob)
    listed: list[int] = []
    url = "/experiments?owner=ada&limit=2"
    while url:
        page = api.get(url, headers=bob).json()
        assert all(item["owner"] == "ada" for item in page["items"])
        listed += [item["id"] for item in page["items"]]
        url = page["next"]
    assert listed == sorted(grids, reverse=True)
    one = api.get(f"/experiments/{grids[0]}", headers=bob).json()
    assert one["owner"] == "ada"
    assert {row["job_id"] for row in one["jobs"]} <= {
        item["id"] for item in api.get("/jobs?owner=ada&limit=200", headers=bob).json()["items"]
    }


# --- the quota ----------------------------------------------------------------------------------


def queued_of(owner: str) -> int:
    from jobs.db import session_scope
    from jobs.tables import Experiment, Job

    with session_scope(write=False) as session:
        experiments = session.execute(
            select(func.count()).select_from(Experiment).where(Experiment.owner == owner)
        ).scalar_one()
        jobs = session.execute(
            select(func.count()).select_from(Job).where(Job.owner == owner, Job.status == "queued")
        ).scalar_one()
    return jobs + 1000 * experiments


def test_queued_jobs_quota(api: TestClient, configure, database_url: str) -> None:
    ada = make_user(api, "ada", max_queued_jobs=3)
    first = api.post("/jobs", json=JOB, headers=ada)
    assert first.status_code == 202
    # A grid of 2 fits (3 queued); the next job does not.
    assert api.post("/experiments", json=GRID, headers=ada).status_code == 202
    assert queued_of("ada") == 1003
    refused = assert_error(api.post("/jobs", json=JOB, headers=ada), 429, "quota_exceeded",
                           "limit of 3")  # fmt: skip
    assert refused["quota"] == {"limit": 3, "queued": 3, "adding": 1}
    # An experiment is made whole or not at all.
    refused = assert_error(api.post("/experiments", json=GRID, headers=ada), 429,
                           "quota_exceeded")  # fmt: skip
    assert refused["quota"] == {"limit": 3, "queued": 3, "adding": 2}
    assert queued_of("ada") == 1003
    # Cancelling makes room; a search's first trials count (3 of them: over 3 - 2 = 1 room).
    api.post(f"/jobs/{first.json()['id']}/cancel", headers=ada)
    api.patch("/users/ada", json={"max_queued_jobs": 4}, headers=ADMIN)
    refused = assert_error(api.post("/experiments", json=SEARCH, headers=ada), 429,
                           "quota_exceeded")  # fmt: skip
    assert refused["quota"] == {"limit": 4, "queued": 2, "adding": 3}
    assert queued_of("ada") == 1002
    # Back to the setting (none: no limit) when the user's own limit is cleared.
    api.patch("/users/ada", json={"max_queued_jobs": None}, headers=ADMIN)
    assert api.post("/experiments", json=SEARCH, headers=ada).status_code == 202
    # The API key's holder has no user row, and no per-user limit.
    assert api.post("/jobs", json=JOB, headers=ADMIN).status_code == 202


def test_quota_setting_applies_to_users_without_their_own(configure, database_url: str) -> None:
    configure(database_url, API_KEY=KEY, MAX_QUEUED_JOBS_PER_USER="1")
    from app.main import create_app

    with TestClient(create_app()) as api:
        bob = make_user(api, "bob")
        ada = make_user(api, "ada", max_queued_jobs=2)
        assert api.post("/jobs", json=JOB, headers=bob).status_code == 202
        assert_error(api.post("/jobs", json=JOB, headers=bob), 429, "quota_exceeded", "limit of 1")
        assert [api.post("/jobs", json=JOB, headers=ada).status_code for _ in range(3)] == [
            202,
            202,
            429,
        ]
        assert api.post("/jobs", json=JOB, headers=ADMIN).status_code == 202


# --- the audit trail ----------------------------------------------------------------------------


def test_audit_trail_outlives_what_it_names(api: TestClient) -> None:
    ada = make_user(api, "ada")
    job = api.post("/jobs", json=JOB, headers=ada).json()["id"]
    claim = drive_job(job, 1)  # running, with an epoch
    api.patch(f"/jobs/{job}", json={"priority": 1}, headers=ada)  # 409: running, not audited
    assert api.post(f"/jobs/{job}/cancel", headers=ADMIN).status_code == 200
    from jobs.db import session_scope
    from jobs.lifecycle import finish_job
    from jobs.tables import Job, JobEvent, JobStatus

    with session_scope() as session:
        # The cancel request's status event names who asked.
        data = (
            session.execute(
                select(JobEvent.data).where(JobEvent.job_id == job).order_by(JobEvent.seq.desc())
            )
            .scalars()
            .first()
        )
        assert data is not None and data["cancel_requested"] and data["by"] == "admin"
        # The worker stops it.
        assert finish_job(session, claim, JobStatus.CANCELLED)
    experiment = api.post("/experiments", json=GRID, headers=ada).json()["id"]
    api.patch(f"/experiments/{experiment}", json={"priority": 2}, headers=ada)
    api.post(f"/experiments/{experiment}/cancel", headers=ada)
    with session_scope(write=False) as session:
        # Each of its jobs' cancel event names who cancelled the experiment.
        cancels = (
            session.execute(
                select(JobEvent.data)
                .join(Job, Job.id == JobEvent.job_id)
                .where(Job.experiment_id == experiment, JobEvent.seq > 1)
            )
            .scalars()
            .all()
        )
    assert len(cancels) == 2 and {data["by"] for data in cancels} == {"ada"}
    assert api.delete(f"/jobs/{job}", headers=ada).status_code == 204
    assert api.delete(f"/experiments/{experiment}", headers=ada).status_code == 204
    assert api.get(f"/jobs/{job}", headers=ada).status_code == 404

    def actions(query: str) -> list[tuple[str | None, str]]:
        page = api.get(f"/audit?{query}", headers=ADMIN).json()
        return [(item["actor"], item["action"]) for item in page["items"]]

    assert actions(f"job_id={job}") == [
        ("ada", "job_deleted"),
        ("admin", "job_cancelled"),
        ("ada", "job_submitted"),
    ]
    assert actions(f"experiment_id={experiment}") == [
        ("ada", "experiment_deleted"),
        ("ada", "experiment_cancelled"),
        ("ada", "experiment_priority_changed"),
        ("ada", "experiment_submitted"),
    ]
    by_ada = actions("actor=ada")
    assert len(by_ada) == 6 and ("ada", "job_submitted") in by_ada
    # Pages with cursors, newest first, every row once.
    seen: list[int] = []
    url = "/audit?limit=2"
    while url:
        page = api.get(url, headers=ADMIN).json()
        seen += [item["id"] for item in page["items"]]
        url = page["next"]
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen)) == audit_count()
    users = actions("actor=admin")
    assert ("admin", "user_created") in users and ("admin", "token_created") in users
    assert_error(api.get("/audit?cursor=bogus", headers=ADMIN), 422, "validation_error", "cursor")


def test_a_resumed_search_counts_against_the_quota(api: TestClient) -> None:
    ada = make_user(api, "ada", max_queued_jobs=3)
    search = api.post("/experiments", json=SEARCH, headers=ada).json()["id"]
    assert api.post(f"/experiments/{search}/cancel", headers=ada).status_code == 200
    api.patch("/users/ada", json={"max_queued_jobs": 2}, headers=ADMIN)
    before = audit_count()
    refused = assert_error(api.post(f"/experiments/{search}/resume", headers=ada), 429,
                           "quota_exceeded")  # fmt: skip
    assert refused["quota"] == {"limit": 2, "queued": 0, "adding": 3}
    assert queued_of("ada") == 1000 and audit_count() == before
    # Still cancelled: nothing of the resume was kept.
    api.patch("/users/ada", json={"max_queued_jobs": 3}, headers=ADMIN)
    resumed = api.post(f"/experiments/{search}/resume", headers=ada)
    assert resumed.status_code == 200, resumed.text
    assert queued_of("ada") == 1003
