"""The dashboard with accounts, in a real browser (Debian's chromium under Playwright) against
the API under uvicorn with API_KEY set and two members: a member signs in with a token, sees
who owns what, filters to their own, finds another's cancel button disabled with the reason,
cancels their own job, and signs out. Without API_KEY the pages show none of it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser import Screenshots
from tests.conftest import service_environment
from tests.support import free_port, start_api

pytestmark = pytest.mark.e2e

KEY = "browser-accounts-s3cret"
# The longest name a user may have, with nothing to break it at.
LONG_NAME = "l" * 64
TINY = {"block": "mobile", "hyperparameters": {"epochs": 1}}


def no_horizontal_overflow(page: Any) -> None:
    """At 1280x800 nothing is wider than the window."""
    page.set_viewport_size({"width": 1280, "height": 800})
    widths = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert widths[0] <= widths[1], (page.url, widths)


def submitted(base: str, token: str, path: str, body: dict[str, Any]) -> int:
    headers = {"X-API-Key": token} if token else {}
    answer = httpx.post(f"{base}{path}", json=body, headers=headers, timeout=30)
    assert answer.status_code in (201, 202), answer.text
    return int(answer.json()["id"])


@pytest.fixture(scope="module")
def accounts_dashboard(
    tmp_path_factory: pytest.TempPathFactory, dataset_root: Path
) -> Iterator[tuple[str, dict[str, str]]]:
    """The API with API_KEY and no worker (jobs stay queued), and three members' tokens."""
    from jobs.migrations import upgrade

    root = tmp_path_factory.mktemp("accounts-dashboard")
    env = service_environment(root, f"sqlite:///{root / 'jobs.sqlite3'}", dataset_root, API_KEY=KEY)
    upgrade(env["DATABASE_URL"])
    port = free_port()
    api = start_api(env, root, port)
    base = f"http://127.0.0.1:{port}"
    try:
        tokens = {}
        for name in ("alice", "bob", LONG_NAME):
            made = httpx.post(
                f"{base}/users",
                json={"name": name, "role": "member"},
                headers={"X-API-Key": KEY},
                timeout=30,
            )
            assert made.status_code == 201, made.text
            tokens[name] = made.json()["token"]["token"]
        yield base, tokens
    finally:
        api.stop()


def test_a_member_sees_owners_filters_theirs_and_may_cancel_only_their_own(
    page: Any, accounts_dashboard: tuple[str, dict[str, str]], screenshots: Screenshots
) -> None:
    base, tokens = accounts_dashboard
    alices = submitted(base, tokens["alice"], "/jobs", {**TINY, "name": "alice's job"})
    bobs = submitted(base, tokens["bob"], "/jobs", {**TINY, "name": "bob's job"})
    submitted(base, tokens[LONG_NAME], "/jobs", {**TINY, "name": "a long owner's"})
    grid = {"blocks": ["plain"], "seeds": [0], "hyperparameters": {"epochs": 1}}
    bobs_experiment = submitted(base, tokens["bob"], "/experiments", {**grid, "name": "bob's"})
    alices_experiment = submitted(
        base, tokens["alice"], "/experiments", {**grid, "name": "alice's"}
    )

    page.goto(f"{base}/")
    assert "/ui/login" in page.url
    no_horizontal_overflow(page)
    page.fill("#api-key", tokens["alice"])
    page.click('form.sign-in button[type="submit"]')
    page.wait_for_url(f"{base}/")
    page.wait_for_selector("#signed-in:not([hidden])")
    assert page.inner_text("#signed-in") == "alice (member)"

    # Owners in both lists.
    owners = {
        row.get_attribute("data-job-id"): row.locator("td.owner").inner_text()
        for row in page.locator("#jobs tbody tr[data-job-id]").all()
    }
    assert owners[str(alices)] == "alice" and owners[str(bobs)] == "bob"
    assert page.locator("#jobs thead th").nth(1).inner_text() == "Owner"
    page.wait_for_selector("#experiment-list")
    experiment_owners = {
        row.get_attribute("data-experiment-id"): row.locator("td.owner").inner_text()
        for row in page.locator("#experiment-list tbody tr").all()
    }
    assert experiment_owners[str(bobs_experiment)] == "bob"
    assert experiment_owners[str(alices_experiment)] == "alice"
    no_horizontal_overflow(page)
    screenshots.take(page, "31-accounts-jobs")

    # Only mine: the jobs and the experiments of alice, then everyone's again.
    page.wait_for_selector("#mine-filter:not([hidden])")
    assert page.inner_text("#mine-filter") == "Only mine"
    page.click("#mine-filter")
    page.wait_for_url(re.compile(r"owner=alice"))
    page.wait_for_selector("#experiment-list, #experiments p")
    listed = {row.get_attribute("data-owner") for row in page.locator("#jobs tbody tr").all()}
    assert listed == {"alice"}
    shown = page.locator("#experiment-list tbody tr").all()
    assert [row.get_attribute("data-experiment-id") for row in shown] == [str(alices_experiment)]
    page.wait_for_selector("#mine-filter:not([hidden])")
    assert page.inner_text("#mine-filter") == "Everyone's"
    screenshots.take(page, "32-accounts-mine")

    # Bob's job and experiment: their cancel buttons disabled, with the reason.
    page.goto(f"{base}/ui/jobs/{bobs}")
    assert page.inner_text("#job-owner") == "owned by bob"
    page.wait_for_selector('[data-reason-for="cancel-job"]')
    assert page.is_disabled("#cancel-job")
    assert page.inner_text('[data-reason-for="cancel-job"]') == (
        "Owned by bob: only bob or an admin may cancel it."
    )
    no_horizontal_overflow(page)
    screenshots.take(page, "33-accounts-others-job")
    page.goto(f"{base}/ui/experiments/{bobs_experiment}")
    assert page.inner_text("#experiment-owner") == "owned by bob"
    page.wait_for_selector('[data-reason-for="cancel-experiment"]')
    page.wait_for_selector("#cancel-experiment:not([hidden])")
    assert page.is_disabled("#cancel-experiment")
    assert page.inner_text('[data-reason-for="cancel-experiment"]') == (
        "Owned by bob: only bob or an admin may cancel it."
    )
    no_horizontal_overflow(page)

    # Her own: the button works.
    page.goto(f"{base}/ui/jobs/{alices}")
    assert page.inner_text("#job-owner") == "owned by alice"
    page.wait_for_selector("#signed-in:not([hidden])")
    assert page.is_enabled("#cancel-job")
    assert page.locator("[data-reason-for]").count() == 0
    page.click("#cancel-job")
    page.wait_for_selector("#job-status.status-cancelled")
    job = httpx.get(f"{base}/jobs/{alices}", headers={"X-API-Key": KEY}, timeout=30).json()
    assert job["status"] == "cancelled"
    bob_job = httpx.get(f"{base}/jobs/{bobs}", headers={"X-API-Key": KEY}, timeout=30).json()
    assert bob_job["status"] == "queued"
    screenshots.take(page, "34-accounts-own-job-cancelled")

    page.click("nav form button")  # sign out
    page.wait_for_url(re.compile(r"/ui/login$"))
    assert page.locator("#signed-in").count() == 0
    page.goto(f"{base}/")
    assert "/ui/login?next=" in page.url


def test_an_admin_signed_in_with_the_key_may_cancel_anyones_job(
    page: Any, accounts_dashboard: tuple[str, dict[str, str]]
) -> None:
    base, tokens = accounts_dashboard
    bobs = submitted(base, tokens["bob"], "/jobs", {**TINY, "name": "bob's, for the admin"})
    page.goto(f"{base}/ui/login")
    assert page.locator("#signed-in, nav form").count() == 0  # not on the form itself
    page.fill("#api-key", KEY)
    page.click('form.sign-in button[type="submit"]')
    page.wait_for_url(f"{base}/")
    page.wait_for_selector("#signed-in:not([hidden])")
    assert page.inner_text("#signed-in") == "admin (admin)"
    page.goto(f"{base}/ui/jobs/{bobs}")
    page.wait_for_selector("#signed-in:not([hidden])")
    assert page.is_enabled("#cancel-job")
    assert page.locator("[data-reason-for]").count() == 0
    page.click("#cancel-job")
    page.wait_for_selector("#job-status.status-cancelled")


def test_the_longest_name_signed_in_fits_the_window(
    page: Any, accounts_dashboard: tuple[str, dict[str, str]]
) -> None:
    base, tokens = accounts_dashboard
    job_id = submitted(base, tokens[LONG_NAME], "/jobs", {**TINY, "name": "long"})
    page.goto(f"{base}/ui/login")
    page.fill("#api-key", tokens[LONG_NAME])
    page.click('form.sign-in button[type="submit"]')
    page.wait_for_url(f"{base}/")
    page.wait_for_selector("#signed-in:not([hidden])")
    assert page.inner_text("#signed-in") == f"{LONG_NAME} (member)"
    no_horizontal_overflow(page)
    page.goto(f"{base}/?owner={LONG_NAME}")
    page.wait_for_selector("#experiments p")
    no_horizontal_overflow(page)
    page.goto(f"{base}/ui/jobs/{job_id}")
    page.wait_for_selector("#signed-in:not([hidden])")
    assert page.is_enabled("#cancel-job")
    no_horizontal_overflow(page)


def test_a_revoked_token_signs_the_page_out_and_says_why(
    page: Any, accounts_dashboard: tuple[str, dict[str, str]]
) -> None:
    base, _ = accounts_dashboard
    admin = {"X-API-Key": KEY}
    made = httpx.post(f"{base}/users", json={"name": "carol"}, headers=admin, timeout=30)
    assert made.status_code == 201, made.text
    job_id = submitted(base, made.json()["token"]["token"], "/jobs", {**TINY, "name": "carol's"})
    page.goto(f"{base}/ui/login?next=/ui/jobs/{job_id}")
    page.fill("#api-key", made.json()["token"]["token"])
    page.click('form.sign-in button[type="submit"]')
    page.wait_for_url(f"{base}/ui/jobs/{job_id}")
    page.wait_for_selector("#signed-in:not([hidden])")

    revoked = httpx.delete(f"{base}/users/carol/tokens", headers=admin, timeout=30)
    assert revoked.status_code == 200, revoked.text
    page.click("#cancel-job")
    page.wait_for_selector("#cancel-message:not(:empty)")
    assert page.inner_text("#cancel-message") == (
        "The server no longer takes this sign-in (The token has been revoked.): sign in again "
        "at /ui/login."
    )
    job = httpx.get(f"{base}/jobs/{job_id}", headers=admin, timeout=30).json()
    assert job["status"] == "queued"


def test_without_api_key_the_pages_show_no_accounts(
    page: Any, tmp_path: Path, dataset_root: Path
) -> None:
    from jobs.migrations import upgrade

    env = service_environment(tmp_path, f"sqlite:///{tmp_path / 'jobs.sqlite3'}", dataset_root)
    upgrade(env["DATABASE_URL"])
    port = free_port()
    api = start_api(env, tmp_path, port)
    base = f"http://127.0.0.1:{port}"
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    try:
        job_id = submitted(base, "", "/jobs", TINY)
        page.goto(f"{base}/")
        page.wait_for_selector("#experiments p")
        assert page.locator("#signed-in, #mine-filter, td.owner").count() == 0
        headers = page.locator("#jobs thead th").all_inner_texts()
        assert "Owner" not in headers
        page.goto(f"{base}/ui/jobs/{job_id}")
        assert page.locator("#job-owner").count() == 0
        assert page.is_enabled("#cancel-job")
        assert page.locator("[data-reason-for]").count() == 0
        assert not [url for url in requests if url.endswith("/me")]  # not even asked
        no_horizontal_overflow(page)
    finally:
        api.stop()
