"""The dashboard in a real browser: Debian's chromium driven by Playwright against the API under
uvicorn and a real worker process. Forms are filled in and buttons clicked as a person would;
pages must update from the event streams (or, on a server without them, by polling) without
being reloaded. Screenshots go to the test's tmp dir, and to $DASHBOARD_SCREENSHOTS if set."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser import Screenshots
from tests.conftest import service_environment
from tests.support import Process, epoch_figures, free_port, start_api, start_worker

pytestmark = pytest.mark.e2e

KEY = "browser-s3cret"


@pytest.fixture(scope="module")
def dashboard(
    tmp_path_factory: pytest.TempPathFactory, dataset_root: Path
) -> Iterator[tuple[str, Process]]:
    """The API and one worker on the embedded default (SQLite + SQLite broker): (URL, worker)."""
    from jobs.migrations import upgrade

    root = tmp_path_factory.mktemp("dashboard")
    env = service_environment(root, f"sqlite:///{root / 'jobs.sqlite3'}", dataset_root)
    upgrade(env["DATABASE_URL"])
    port = free_port()
    api = start_api(env, root, port)
    worker = start_worker(env, root)
    try:
        yield f"http://127.0.0.1:{port}", worker
    finally:
        worker.stop()
        api.stop()


def has_route(base: str, path: str) -> bool:
    """Whether the server answers GET path (read only up to the status: it may be a stream)."""
    with httpx.Client(base_url=base, timeout=30) as client, client.stream("GET", path) as answer:
        return answer.status_code == 200


def fill_job_form(page: Any, **values: str) -> None:
    page.check('input[name="kind"][value="job"]')
    page.select_option('[data-field="block"]', values.pop("block"))
    for field, value in values.items():
        page.fill(f'[data-field="{field}"]', value)


# Predicates are functions, never expression strings: Playwright polls an expression with eval,
# which the pages' Content-Security-Policy (rightly) refuses.
def wait_for_count(page: Any, selector: str, at_least: int, timeout_ms: int = 180_000) -> int:
    page.wait_for_function(
        "([selector, count]) => document.querySelectorAll(selector).length >= count",
        arg=[selector, at_least],
        timeout=timeout_ms,
    )
    return int(page.locator(selector).count())


def chart_points(page: Any, selector: str) -> int:
    return int(page.get_attribute(selector, "data-points") or 0)


def test_job_page_grows_live_and_cancels(
    page: Any, dashboard: tuple[str, Process], screenshots: Screenshots
) -> None:
    base, worker = dashboard
    page.goto(f"{base}/ui/submit")
    screenshots.take(page, "01-submit-form")

    # A value the API refuses: its message appears beside the input, nothing is created.
    fill_job_form(
        page,
        block="mobile",
        name="<script>alert(1)</script>",
        **{"hyperparameters.epochs": "0", "hyperparameters.learning_rate": "fast"},
    )
    page.click("#submit-button")
    page.wait_for_selector('[data-error-for="hyperparameters.epochs"]:not(:empty)')
    assert "greater than or equal to 1" in page.inner_text(
        '[data-error-for="hyperparameters.epochs"]'
    )
    assert page.inner_text('[data-error-for="hyperparameters.learning_rate"]')
    assert page.get_attribute('[data-field="hyperparameters.epochs"]', "aria-invalid") == "true"
    assert "/ui/submit" in page.url
    screenshots.take(page, "02-submit-422")
    assert len(httpx.get(f"{base}/jobs").json()["items"]) == 0

    fill_job_form(
        page,
        block="mobile",
        **{
            "hyperparameters.epochs": "4",
            "hyperparameters.learning_rate": "",
            "hyperparameters.batch_size": "32",
            "train_samples": "64",
            "test_samples": "32",
        },
    )
    page.click("#submit-button")
    page.wait_for_url(re.compile(r"/ui/jobs/\d+$"))
    job_id = int(page.url.rsplit("/", 1)[1])
    page.evaluate("window.__sameDocument = true")
    rows_at_load = page.locator("#metrics-rows tr[data-epoch]").count()
    assert rows_at_load < 4, "the job ended before its page opened; nothing was left to follow"
    assert page.inner_text("h1 .name") == "<script>alert(1)</script>"  # shown as text

    # Epoch rows and curve points arrive without a reload, then the job's end.
    wait_for_count(page, "#metrics-rows tr[data-epoch]", rows_at_load + 1)
    page.wait_for_function("() => Number(document.getElementById('loss-chart').dataset.points) > 0")
    screenshots.take(page, "03-job-running")
    wait_for_count(page, "#metrics-rows tr[data-epoch]", 4)
    page.wait_for_selector("#job-status.status-succeeded", timeout=180_000)
    wait_for_count(page, '#checkpoint-rows tr[data-name="final"]', 1, 30_000)
    assert page.evaluate("window.__sameDocument") is True, "the page was reloaded"
    assert [row.get_attribute("data-epoch") for row in page.locator("#metrics-rows tr").all()] == [
        "1",
        "2",
        "3",
        "4",
    ]
    # Training and test loss, 4 epochs each. The curves are redrawn 50 ms after an epoch
    # arrives, so the last epoch's points may land just after its table row.
    page.wait_for_function(
        "() => document.getElementById('loss-chart').dataset.points === '8'", timeout=5_000
    )
    assert page.inner_text("#job-epochs") == "4/4"
    assert page.get_attribute("#cancel-job", "hidden") is not None
    final_link = page.get_attribute('#checkpoint-rows tr[data-name="final"] a', "href")
    assert final_link == f"/jobs/{job_id}/checkpoints/final"
    # The event stream where the server has it; polling /jobs/{id}/metrics where it has not.
    expected_mode = "live" if has_route(base, f"/jobs/{job_id}/events") else "polling"
    assert expected_mode in page.evaluate("window.__liveModes")
    screenshots.take(page, "04-job-succeeded")

    # A long job, cancelled from its page.
    page.goto(f"{base}/ui/submit")
    fill_job_form(
        page,
        block="mobile",
        name="to cancel",
        **{"hyperparameters.epochs": "500", "train_samples": "64", "test_samples": "32"},
    )
    page.click("#submit-button")
    page.wait_for_url(re.compile(r"/ui/jobs/\d+$"))
    long_job = int(page.url.rsplit("/", 1)[1])
    page.click("#cancel-job")
    page.wait_for_selector("#job-status.status-cancelled", timeout=120_000)
    assert httpx.get(f"{base}/jobs/{long_job}").json()["status"] == "cancelled"
    screenshots.take(page, "05-job-cancelled")

    # The jobs list, filtered in the form.
    page.goto(f"{base}/")
    page.select_option('select[name="status"]', "cancelled")
    page.click(".filters button")
    page.wait_for_url(re.compile(r"status=cancelled"))
    listed = [
        row.get_attribute("data-job-id") for row in page.locator("#jobs tr[data-job-id]").all()
    ]
    assert listed == [str(long_job)]
    screenshots.take(page, "06-jobs-cancelled")
    assert worker.alive()


@pytest.mark.timeout(600)
def test_report_experiment_from_the_dashboard(
    page: Any, dashboard: tuple[str, Process], screenshots: Screenshots
) -> None:
    base, _ = dashboard
    paths = httpx.get(f"{base}/openapi.json").json()["paths"]
    streams = [path for path in paths if re.fullmatch(r"/experiments/\{\w+\}/events", path)]
    if "/experiments" not in paths or not streams:
        pytest.skip("this build has no experiments API or experiment event stream")

    page.goto(f"{base}/ui/submit")
    page.check('input[name="kind"][value="experiment"]')
    page.select_option('[data-field="preset"]', "report")
    # The report's settings are fixed: only epochs, samples, seeds, name and tags are open.
    assert page.is_disabled('[data-field="hyperparameters.batch_size"]')
    assert page.is_disabled('input[data-field="blocks"]')
    page.fill('[data-field="name"]', "report repro")
    page.fill('[data-field="hyperparameters.epochs"]', "2")
    page.fill('[data-field="train_samples"]', "64")
    page.fill('[data-field="test_samples"]', "32")
    screenshots.take(page, "11-submit-report")
    page.click("#submit-button")
    page.wait_for_url(re.compile(r"/ui/experiments/\d+$"))
    experiment_id = int(page.url.rsplit("/", 1)[1])
    page.evaluate("window.__sameDocument = true")

    wait_for_count(page, "#summary tbody tr[data-job-id]", 3)
    blocks = [cell.inner_text() for cell in page.locator("#summary tbody tr td:nth-child(2)").all()]
    assert blocks == ["plain", "residual", "mobile"]
    # The first job's first epoch reaches the overlaid curves live.
    page.wait_for_function(
        "() => Number(document.querySelector('#problem-1 canvas.curve-chart').dataset.points) > 0",
        timeout=240_000,
    )
    screenshots.take(page, "12-experiment-running")

    # One job cancelled from its own page (mobile runs last: it is still waiting).
    mobile_row = page.locator('#summary tbody tr[data-job-id]:has-text("mobile")')
    mobile_job = int(mobile_row.get_attribute("data-job-id") or 0)
    page.goto(f"{base}/ui/jobs/{mobile_job}")
    page.click("#cancel-job")
    page.wait_for_selector("#job-status.status-cancelled", timeout=120_000)
    screenshots.take(page, "13-experiment-job-cancelled")

    page.goto(f"{base}/ui/experiments/{experiment_id}")
    page.evaluate("window.__sameDocument = true")
    page.wait_for_selector('#live-mode[data-mode="ended"]', timeout=300_000)
    page.wait_for_function(
        "() => document.querySelectorAll('#summary tr[data-status=succeeded]').length === 2",
        timeout=30_000,
    )
    statuses = {
        row.get_attribute("data-job-id"): row.get_attribute("data-status")
        for row in page.locator("#summary tbody tr[data-job-id]").all()
    }
    assert statuses[str(mobile_job)] == "cancelled"
    assert page.evaluate("window.__sameDocument") is True

    # The report's figures beside the measured ones, problem by problem.
    def report_row(problem: int, block: str) -> list[str]:
        row = page.locator(f'#problem-{problem} tbody tr[data-block="{block}"]').first
        return [cell.inner_text() for cell in row.locator("td").all()]

    plain = report_row(1, "plain")
    # job, status, epochs, params (measured, report), MACs (measured, report), accuracy, loss
    assert plain[3:6] == ["11.05 M", "11.05 M", "0.55 GMac"] and plain[6] == "0.55 GMac"
    assert plain[8] == "70.55 %" and plain[10] == "0.014"
    assert re.fullmatch(r"\d+\.\d\d %", plain[7]), plain  # measured final test accuracy
    residual = report_row(2, "residual")
    assert residual[4] == "not published" and residual[6] == "not published"
    assert residual[8] == "72.56 %" and residual[10] == "0.005"
    mobile = report_row(3, "mobile")
    assert mobile[3:7] == ["1.33 M", "1.33 M", "0.07 GMac", "0.07 GMac"]
    assert mobile[8] == "61.49 %" and mobile[10] == "0.100"
    for problem in (1, 2, 3):
        assert chart_points(page, f"#problem-{problem} canvas.curve-chart") > 0
    assert chart_points(page, "#accuracy-vs-macs") >= 2 + 2  # two trained jobs, two published
    screenshots.take(page, "14-experiment-report")


def test_sign_in_in_the_browser(
    page: Any, configure: Any, screenshots: Screenshots, tmp_path: Path
) -> None:
    """With API_KEY set: the sign-in form, a wrong key refused, then pages and their calls to
    the API (fetch, EventSource) work on the cookie alone."""
    from jobs.db import session_scope
    from jobs.lifecycle import claim_job, record_epoch
    from jobs.migrations import upgrade

    url = f"sqlite:///{tmp_path / 'keyed.sqlite3'}"
    upgrade(url)
    env = configure(url, API_KEY=KEY)  # this process records epochs in the same database
    port = free_port()
    api = start_api(env, tmp_path, port)
    base = f"http://127.0.0.1:{port}"
    try:
        created = httpx.post(
            f"{base}/jobs",
            json={"block": "mobile", "hyperparameters": {"epochs": 3}, "name": "keyed"},
            headers={"X-API-Key": KEY},
        )
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        # Run the job as a worker would, two epochs now and one once the page is open.
        with session_scope() as session:
            claim = claim_job(session, job_id, worker="browser-test", lease_seconds=600)
        assert claim is not None
        for epoch in (1, 2):
            with session_scope() as session:
                record_epoch(session, claim, epoch_figures(epoch), lease_seconds=600)

        page.goto(f"{base}/ui/jobs/{job_id}")
        assert "/ui/login?next=" in page.url
        page.fill("#api-key", "not the key")
        page.click('form.sign-in button[type="submit"]')
        assert page.inner_text("#sign-in-problem") == "That is not the key."
        screenshots.take(page, "21-sign-in-refused")

        page.fill("#api-key", KEY)
        page.click('form.sign-in button[type="submit"]')
        page.wait_for_url(f"{base}/ui/jobs/{job_id}")
        assert page.evaluate("document.cookie") == ""  # HttpOnly: no script can read it
        assert page.locator("#metrics-rows tr[data-epoch]").count() == 2
        page.evaluate("window.__sameDocument = true")
        # The page's own calls (the event stream, or polling) reach the API on the cookie: the
        # third epoch appears without a reload.
        with session_scope() as session:
            record_epoch(session, claim, epoch_figures(3), lease_seconds=600)
        assert wait_for_count(page, "#metrics-rows tr[data-epoch]", 3, 60_000) == 3
        page.wait_for_function(
            "() => Number(document.getElementById('loss-chart').dataset.points) === 6"
        )
        assert page.evaluate("window.__sameDocument") is True
        page.click("#cancel-job")  # a fetch POST, on the cookie
        page.wait_for_selector("#job-cancelling:not([hidden])")
        assert page.inner_text("#job-status") == "running"  # until the worker stops
        keyed = {"X-API-Key": KEY}
        assert httpx.get(f"{base}/jobs/{job_id}", headers=keyed).json()["cancel_requested"]
        assert httpx.get(f"{base}/jobs/{job_id}").status_code == 401  # API clients: unchanged
        screenshots.take(page, "22-signed-in-job")

        page.goto(f"{base}/")
        listed = [row.get_attribute("data-job-id") for row in page.locator("#jobs tbody tr").all()]
        assert listed == [str(job_id)]
        page.click("nav form button")  # sign out
        page.wait_for_url(re.compile(r"/ui/login$"))
        page.goto(f"{base}/ui/submit")
        assert "/ui/login?next=%2Fui%2Fsubmit" in page.url
    finally:
        api.stop()


@pytest.mark.timeout(600)
def test_a_search_from_the_dashboard(
    page: Any, dashboard: tuple[str, Process], screenshots: Screenshots
) -> None:
    """A search started from the submit form runs on the worker; its page shows the search's
    progress, the trials with their params and status (the hopeless ones pruned), the best-so-far
    curve, params against the objective and the rung table."""
    base, _ = dashboard
    search = {
        "space": {
            "learning_rate": {"choice": [0.05, 1e-7]},
            "weight_decay": {"choice": [0.0, 1e-5]},
        },
        "sampler": "grid",
        # Seed 4 orders the grid's two good points first (a weight decay this small makes no
        # difference the evaluation can resolve: they tie); the two hopeless ones meet them at
        # the rung after epoch 1, clearly worse in test loss, and are pruned.
        "seed": 4,
        "max_concurrent": 2,
        "objective": {"metric": "test_loss"},
        "pruner": {"type": "asha", "min_epochs": 1, "reduction_factor": 3},
    }
    page.goto(f"{base}/ui/submit")
    page.check('input[name="kind"][value="experiment"]')
    page.fill('[data-field="name"]', "browser search")
    page.check('input[data-field="blocks"][value="mobile"]')
    page.fill('[data-field="hyperparameters.epochs"]', "2")
    page.fill('[data-field="hyperparameters.batch_size"]', "16")
    page.fill('[data-field="train_samples"]', "32")
    page.fill('[data-field="test_samples"]', "16")
    # A bad space first: the API's 422 is shown beside the search input.
    page.fill('[data-field="search"]', '{"space": {"learning_rate": {"loguniform": [0, 1]}}}')
    page.click("#submit-button")
    error = page.locator('[data-error-for="search"]')
    error.wait_for(state="visible")
    page.wait_for_function(
        "(selector) => document.querySelector(selector).textContent.includes('above 0')",
        arg='[data-error-for="search"]',
    )
    page.fill('[data-field="search"]', json.dumps(search))
    screenshots.take(page, "15-submit-search")
    page.click("#submit-button")
    page.wait_for_url(re.compile(r"/ui/experiments/\d+$"))
    page.wait_for_selector("#search:not([hidden])")
    page.wait_for_selector('#live-mode[data-mode="ended"]', timeout=400_000)
    page.wait_for_function(
        "() => document.querySelectorAll('#summary tbody tr[data-job-id]').length === 4",
        timeout=30_000,
    )
    statuses = [
        row.get_attribute("data-status")
        for row in page.locator("#summary tbody tr[data-job-id]").all()
    ]
    assert sorted(statuses) == ["pruned", "pruned", "succeeded", "succeeded"]
    headings = [cell.inner_text() for cell in page.locator("#summary thead th").all()]
    assert "learning_rate" in headings and "weight_decay" in headings and "Rung" in headings
    facts = page.locator("#search-facts").inner_text()
    assert "4/4 trials" in facts and "6/8 epochs trained" in facts and "best:" in facts
    assert chart_points(page, "#best-so-far") == 2
    assert chart_points(page, "#params-vs-objective") == 4
    rung = [cell.inner_text() for cell in page.locator('#rungs tbody tr[data-rung="0"] td').all()]
    # No bracket (asha); rung 0 at epoch 1: 4 reached, 2 went on, 2 stopped.
    assert rung[:6] == ["–", "0", "1", "4", "2", "2"]
    screenshots.take(page, "16-experiment-search")


@contextmanager
def wide_experiment(
    configure: Any, tmp_path: Path, *, epochs: int
) -> Iterator[tuple[str, int, list[int]]]:
    """The API alone (no worker: the test records the epochs) on a fresh SQLite database with a
    150-job experiment of `epochs` epochs: (its URL, the experiment's id, its job ids)."""
    from jobs.migrations import upgrade

    env = configure(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    upgrade(env["DATABASE_URL"])
    port = free_port()
    api = start_api(env, tmp_path, port)
    base = f"http://127.0.0.1:{port}"
    try:
        made = httpx.post(
            f"{base}/experiments",
            json={
                "name": "wide",
                "blocks": ["mobile"],
                "hyperparameters": {"epochs": epochs},
                "seeds": list(range(150)),
            },
        ).json()
        every = httpx.get(f"{base}/experiments/{made['id']}", params={"limit": 1000}).json()
        ids = sorted(row["job_id"] for row in every["jobs"])
        assert len(ids) == 150
        yield base, made["id"], ids
    finally:
        api.stop()


def test_a_large_experiments_page_polls_a_page_of_jobs_in_two_requests(
    page: Any, configure: Any, tmp_path: Path, screenshots: Screenshots
) -> None:
    """A 150-job experiment on a server whose event streams are unavailable: the page shows
    100 jobs and their curves, and each poll is one request for the page's rows and, when
    they recorded epochs, one for their curves; never one per job."""
    from tests.support import drive_job

    with wide_experiment(configure, tmp_path, epochs=3) as (base, experiment_id, ids):
        for job_id in ids[:3]:
            drive_job(job_id, 2)
        requests: list[str] = []
        page.route(
            re.compile(r".*/experiments/\d+/events.*"),
            lambda route: route.fulfill(status=404, body="{}"),
        )
        page.on(
            "request",
            lambda request: (
                requests.append(request.url.removeprefix(base))
                if "/events" not in request.url
                else None
            ),
        )
        page.goto(f"{base}/ui/experiments/{experiment_id}")
        page.wait_for_selector('#live-mode[data-mode="polling"]')
        wait_for_count(page, "#summary tbody tr[data-job-id]", 100, timeout_ms=30_000)
        page.wait_for_function(
            "() => Number(document.querySelector('canvas.curve-chart').dataset.points) >= 6",
            timeout=30_000,
        )
        drive_job(ids[3], 1)  # a new epoch on the page: its curves are read again
        page.wait_for_function(
            "() => Number(document.querySelector('canvas.curve-chart').dataset.points) >= 7",
            timeout=30_000,
        )
        page.wait_for_timeout(4_500)  # two more polls with nothing new
        screenshots.take(page, "15-large-experiment-polling")
        assert page.locator("#summary tbody tr[data-job-id]").count() == 100
        assert "jobs 1–100 of 150" in page.inner_text("#page-facts")
        api_calls = [url for url in requests if not url.startswith(("/static", "/ui"))]
        assert not [url for url in api_calls if url.startswith("/jobs/")], api_calls
        rows = [url for url in api_calls if url.startswith(f"/experiments/{experiment_id}?")]
        curves = [url for url in api_calls if "/metrics?" in url]
        assert all("format=columns" in url and "limit=100" in url for url in curves), curves
        assert len(curves) <= 3 and len(rows) >= 3, api_calls
        assert len(api_calls) == len(rows) + len(curves), api_calls

        page.click("#next-page")
        page.wait_for_function(
            "() => document.querySelectorAll('#summary tbody tr[data-job-id]').length === 50"
        )
        shown = [
            int(row.get_attribute("data-job-id") or 0)
            for row in page.locator("#summary tbody tr[data-job-id]").all()
        ]
        assert shown == ids[100:]


def test_a_large_experiments_page_reads_its_curves_then_follows_only_new_events(
    page: Any, configure: Any, tmp_path: Path, screenshots: Screenshots
) -> None:
    """A 150-job experiment whose jobs already logged many events, streams available: the page
    reads the curves so far from the experiment's metrics, then follows the event stream from
    the experiment's last_event_id (its history is not replayed); an epoch recorded after that
    reaches the chart live."""
    from tests.support import drive_job

    with wide_experiment(configure, tmp_path, epochs=40) as (base, experiment_id, ids):
        for job_id in ids[:20]:
            drive_job(job_id, 30)
        last = httpx.get(f"{base}/experiments/{experiment_id}").json()["last_event_id"]
        assert int(last) > 600  # the 150 first statuses, 20 x (running + 30 epochs)
        streams: list[str] = []
        page.on(
            "request",
            lambda request: (
                streams.append(request.url.removeprefix(base)) if "/events" in request.url else None
            ),
        )
        page.goto(f"{base}/ui/experiments/{experiment_id}")
        page.wait_for_selector('#live-mode[data-mode="live"]')
        page.wait_for_function(
            "() => Number(document.querySelector('canvas.curve-chart').dataset.points) >= 600",
            timeout=30_000,
        )
        assert streams == [f"/experiments/{experiment_id}/events?last_event_id={last}"], streams
        drive_job(ids[20], 1)  # running, then one epoch: it reaches the chart from the stream
        page.wait_for_function(
            "() => Number(document.querySelector('canvas.curve-chart').dataset.points) >= 601",
            timeout=30_000,
        )
        screenshots.take(page, "17-large-experiment-live")
