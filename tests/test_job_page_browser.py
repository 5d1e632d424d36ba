"""The job page's header in a real browser (Debian's chromium under Playwright), against the API
under uvicorn with no worker: this process plays the worker through the core's calls, so each
epoch lands exactly when the test says. The header (status, progress, best and final figures,
the queue place) must agree with the metrics table at every moment, and never step back while
the page catches up with the job's event stream."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import browser
from tests.browser import Screenshots
from tests.support import epoch_figures

pytestmark = pytest.mark.e2e

EPOCHS = 40
# Every value the header's progress and status take, from before the page's own scripts run.
RECORD_HEADER = """
window.__epochs = [];
window.__statuses = [];
document.addEventListener("DOMContentLoaded", () => {
  const epochs = document.getElementById("job-epochs");
  const status = document.getElementById("job-status");
  if (!epochs || !status) return;
  const record = () => {
    window.__epochs.push(epochs.textContent);
    window.__statuses.push(status.textContent);
  };
  record();
  const changes = { childList: true, characterData: true, subtree: true };
  new MutationObserver(record).observe(epochs, changes);
  new MutationObserver(record).observe(status, changes);
});
"""


@pytest.fixture(scope="module")
def api_alone(
    tmp_path_factory: pytest.TempPathFactory, dataset_root: Path
) -> Iterator[tuple[str, str]]:
    """(URL, database URL) of the API on the embedded default, without a worker."""
    yield from browser.api_alone(tmp_path_factory.mktemp("job-page"), dataset_root)


@pytest.fixture
def service(api_alone: tuple[str, str], configure: Callable[..., Any]) -> str:
    """The API's URL, with this process's settings on the API's database."""
    base, database_url = api_alone
    configure(database_url)
    return base


def submit(base: str, **extra: Any) -> int:
    body = {"block": "mobile", "hyperparameters": {"epochs": EPOCHS}, **extra}
    answer = httpx.post(f"{base}/jobs", json=body, timeout=30)
    assert answer.status_code == 202, answer.text
    return int(answer.json()["id"])


def header(shown: Any) -> dict[str, str]:
    """What the page's header says (`shown`: the page)."""
    return {
        "epochs": shown.inner_text("#job-epochs"),
        "progress": shown.get_attribute("#job-progress", "value") or "",
        "best": shown.inner_text("#job-best"),
        "final": shown.inner_text("#job-final"),
        "final_loss": shown.inner_text("#job-final-loss"),
        "status": shown.inner_text("#job-status"),
    }


def test_the_header_follows_every_epoch_and_never_steps_back(
    page: Any,
    service: str,
    screenshots: Screenshots,
) -> None:
    from jobs.db import session_scope
    from jobs.lifecycle import record_epoch
    from tests.support import drive_job

    job_id = submit(service, name="header")
    claim = drive_job(job_id, 5)  # running, 5 of 40 epochs recorded
    api_job = httpx.get(f"{service}/jobs/{job_id}").json()
    assert api_job["epochs_done"] == 5

    page.add_init_script(RECORD_HEADER)
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(f"{service}/ui/jobs/{job_id}")
    page.wait_for_selector('#live-mode[data-mode="live"]')

    # A sixth epoch arrives on the stream: the table and the header both take it.
    with session_scope() as session:
        record_epoch(session, claim, epoch_figures(6), lease_seconds=600)
    page.wait_for_selector('#metrics-rows tr[data-epoch="6"]', state="attached")
    page.wait_for_function("() => document.getElementById('job-epochs').textContent === '6/40'")
    assert header(page) == {
        "epochs": "6/40",
        "progress": "6",
        "best": "30.00 %",  # test accuracy 0.05 per epoch
        "final": "30.00 %",
        "final_loss": f"{4 / 6:.4f}",
        "status": "running",
    }
    screenshots.take(page, "job-header-running")
    assert page.locator("#metrics-rows tr[data-epoch]").count() == 6

    # From the first render on, the progress only went forward and the status never went back
    # to queued.
    shown = page.evaluate("window.__epochs")
    done = [int(text.split("/")[0]) for text in shown]
    assert done == sorted(done) and done[0] == 5, shown
    assert "queued" not in page.evaluate("window.__statuses")


def test_a_queued_job_says_why_it_is_where_it_is(
    page: Any,
    service: str,
    screenshots: Screenshots,
) -> None:
    waiting = submit(service, name="waiting")
    submit(service, name="urgent", priority=5)
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(f"{service}/ui/jobs/{waiting}")
    reason = page.locator("#job-queue")
    assert reason.is_visible()
    assert reason.inner_text() == "Place in the queue 2nd: after 1 job of higher priority."

    # Another urgent job queued later takes the place ahead of it; the page says so unasked.
    submit(service, name="more urgent", priority=9)
    page.wait_for_function(
        "() => document.getElementById('job-queue-reason').textContent.startsWith('3rd')",
        timeout=20_000,
    )
    assert reason.inner_text() == "Place in the queue 3rd: after 2 jobs of higher priority."
    screenshots.take(page, "job-queued", full_page=False)

    # Once the job leaves the queue, the place goes.
    httpx.post(f"{service}/jobs/{waiting}/cancel", timeout=30)
    page.wait_for_selector("#job-status.status-cancelled")
    assert not reason.is_visible()
