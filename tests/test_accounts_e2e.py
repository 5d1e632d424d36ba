"""Accounts against real API processes (uvicorn) on SQLite and PostgreSQL: a revoked token, a
disabled user and a new API_KEY take effect on the very next request (the dashboard's cookie
too), concurrent submissions through two API processes never take a user past their quota, and
no token reaches the logs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import service_environment
from tests.support import Process, free_port, start_api

pytestmark = pytest.mark.e2e

KEY = "e2e-admin-key"
ADMIN = {"X-API-Key": KEY}
JOB = {"block": "mobile", "hyperparameters": {"epochs": 1}, "train_samples": 40}
GRID = {"name": "pair", "blocks": ["mobile", "plain"], "hyperparameters": {"epochs": 1}}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def environment(tmp_path: Path, dataset_root: Path, database_url: str) -> dict[str, str]:
    return service_environment(
        tmp_path, database_url, dataset_root, API_KEY=KEY, LOG_FORMAT="json", LOG_LEVEL="DEBUG"
    )


@pytest.fixture
def two_apis(environment: dict[str, str], tmp_path: Path) -> Iterator[list[str]]:
    """Two API processes on one database: their base URLs."""
    processes: list[Process] = []
    try:
        for _ in range(2):
            port = free_port()
            processes.append(start_api(environment, tmp_path, port))
        yield [f"http://127.0.0.1:{process_port(p)}" for p in processes]
    finally:
        for process in processes:
            process.stop()


def process_port(process: Process) -> str:
    return process.log_path.stem.removeprefix("api-")


def sign_in(base_url: str, secret: str) -> httpx.Response:
    return httpx.post(
        f"{base_url}/ui/login",
        content=f"api_key={secret}&next=/".encode(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )


def test_revocation_disabling_and_a_new_key_take_effect_at_once(
    environment: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    api = start_api(environment, tmp_path, port)
    base = f"http://127.0.0.1:{port}"
    secrets: list[str] = []
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            made = client.post("/users", json={"name": "ada"}, headers=ADMIN)
            assert made.status_code == 201, made.text
            token = made.json()["token"]["token"]
            secrets.append(token)
            assert client.get("/me", headers=bearer(token)).json()["name"] == "ada"
            job = client.post("/jobs", json=JOB, headers=bearer(token)).json()
            assert job["owner"] == "ada"

            # The dashboard's sign-in with the token: a cookie holding neither it nor its hash.
            signed_in = sign_in(base, token)
            assert signed_in.status_code == 303, signed_in.text
            cookie = signed_in.cookies["dashboard_sign_in"]
            secrets.append(cookie)
            from jobs.accounts import token_sha256

            secrets.append(token_sha256(token))
            assert token not in cookie and token_sha256(token) not in cookie
            assert cookie.split(".")[0] == str(made.json()["token"]["id"])
            browser = httpx.Client(base_url=base, timeout=30, cookies={"dashboard_sign_in": cookie})
            assert browser.get("/me").json()["name"] == "ada"
            assert browser.get("/").status_code == 200
            assert browser.post(f"/jobs/{job['id']}/cancel").status_code == 200
            # A wrong token at the form: the form again, saying so.
            refused = sign_in(base, "cj_" + "A" * 43)
            assert refused.status_code == 401 and "not one this service issued" in refused.text

            # Revoked: the very next request fails, by header and by cookie.
            token_id = made.json()["token"]["id"]
            assert client.delete(f"/users/ada/tokens/{token_id}", headers=ADMIN).json() == {
                "revoked": [token_id]
            }
            gone = client.get("/me", headers=bearer(token))
            assert gone.status_code == 401 and gone.json()["error"] == "token_revoked"
            assert browser.get("/me").json()["error"] == "token_revoked"
            page = browser.get("/", follow_redirects=False)
            assert page.status_code == 303 and page.headers["location"].startswith("/ui/login")
            assert sign_in(base, token).status_code == 401

            # A new token; the user disabled: it and its cookie fail at once; enabled, work.
            second = client.post("/users/ada/tokens", json={"label": "laptop"}, headers=ADMIN)
            fresh = second.json()["token"]
            secrets.append(fresh)
            new_cookie = sign_in(base, fresh).cookies["dashboard_sign_in"]
            browser.cookies.set("dashboard_sign_in", new_cookie)
            assert browser.get("/me").json()["name"] == "ada"
            client.patch("/users/ada", json={"disabled": True}, headers=ADMIN)
            assert client.get("/jobs", headers=bearer(fresh)).json()["error"] == "user_disabled"
            assert browser.get("/jobs").json()["error"] == "user_disabled"
            client.patch("/users/ada", json={"disabled": False}, headers=ADMIN)
            assert client.get("/me", headers=bearer(fresh)).json()["name"] == "ada"
            assert browser.get("/me").json()["name"] == "ada"
            # Signing out still works: the cookie is deleted.
            out = browser.post("/ui/logout", follow_redirects=False)
            assert out.status_code == 303 and 'dashboard_sign_in=""' in out.headers["set-cookie"]
            browser.close()
    finally:
        api.stop()

    # Another API_KEY: the user's cookie (an HMAC under the old key) is dead; the token lives.
    port = free_port()
    api = start_api({**environment, "API_KEY": "another-key"}, tmp_path, port)
    try:
        base = f"http://127.0.0.1:{port}"
        cookies = {"dashboard_sign_in": new_cookie}
        with httpx.Client(base_url=base, timeout=30, cookies=cookies) as browser:
            assert browser.get("/me").json()["error"] == "token_unknown"
        assert httpx.get(f"{base}/me", headers=bearer(fresh)).json()["name"] == "ada"
    finally:
        api.stop()

    # No token, hash or cookie in any log line; the log is JSON lines with the audit's fields.
    logged = "".join(path.read_text() for path in tmp_path.glob("api-*.log"))
    for secret in secrets:
        assert secret not in logged
    records = [json.loads(line) for line in logged.splitlines() if line.startswith("{")]
    audits = [record for record in records if record.get("logger") == "jobs.audit"]
    assert {(r["actor"], r["action"], r["target"]) for r in audits} >= {
        ("admin", "user_created", "user ada"),
        ("ada", "job_submitted", f"job {job['id']}"),
        ("ada", "job_cancelled", f"job {job['id']}"),
        ("admin", "token_revoked", "user ada"),
        ("admin", "user_disabled", "user ada"),
    }
    assert any(record.get("logger") == "app.access" for record in records)


def test_concurrent_submissions_never_pass_the_quota(
    two_apis: list[str], database_url: str
) -> None:
    limit = 7
    made = httpx.post(
        f"{two_apis[0]}/users",
        json={"name": "ada", "max_queued_jobs": limit},
        headers=ADMIN,
        timeout=30,
    )
    assert made.status_code == 201, made.text
    ada = bearer(made.json()["token"]["token"])
    requests = [
        (two_apis[index % 2], "/experiments" if index % 3 == 0 else "/jobs") for index in range(30)
    ]

    def submit(request: tuple[str, str]) -> tuple[str, httpx.Response]:
        base, path = request
        body = GRID if path == "/experiments" else JOB
        return path, httpx.post(f"{base}{path}", json=body, headers=ada, timeout=60)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(submit, requests))

    statuses = [response.status_code for _, response in answers]
    assert set(statuses) <= {202, 429}, [r.text for _, r in answers if r.status_code >= 500]
    accepted = sum(
        2 if path == "/experiments" else 1 for path, r in answers if r.status_code == 202
    )
    refused = [r.json() for _, r in answers if r.status_code == 429]
    assert refused and all(item["error"] == "quota_exceeded" for item in refused)
    assert all(item["quota"]["limit"] == limit for item in refused)
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            queued = connection.execute(
                text("SELECT count(*) FROM jobs WHERE owner = 'ada' AND status = 'queued'")
            ).scalar_one()
            experiments = connection.execute(
                text("SELECT count(*) FROM experiments WHERE owner = 'ada'")
            ).scalar_one()
            empty = connection.execute(
                text(
                    "SELECT count(*) FROM experiments e WHERE NOT EXISTS "
                    "(SELECT 1 FROM jobs j WHERE j.experiment_id = e.id)"
                )
            ).scalar_one()
    finally:
        engine.dispose()
    # Exactly what was accepted is queued, never more than the limit, and no experiment is
    # half made.
    assert queued == accepted <= limit
    assert accepted >= limit - 1  # one 2-job experiment may not fit the last place
    assert experiments == sum(
        1 for path, r in answers if path == "/experiments" and r.status_code == 202
    )
    assert empty == 0
