"""A search's pages in a real browser (Debian's chromium under Playwright), against the API
under uvicorn with no worker: this process plays the worker through the core's calls. The search
section reads as a researcher expects: its facts apart, objective values in percent like every
table, hyperparameters written briefly, a choice drawn on a category axis, the sampler's and the
pruner's settings, the rung table with each cutoff and noise margin, the warnings; each trial's
decisions on its job page; the experiments list shows a search's progress."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import browser
from tests.browser import Screenshots

pytestmark = pytest.mark.e2e

SEARCH: dict[str, Any] = {
    "name": "digits lr x batch",
    "blocks": ["mobile"],
    "hyperparameters": {"epochs": 6, "batch_size": 32},
    "train_samples": 192,
    "test_samples": 150,
    "search": {
        "space": {
            "learning_rate": {"choice": [0.001, 0.01, 0.030000000000000002, 0.1]},
            "batch_size": {"choice": [16, 64]},
        },
        "sampler": "grid",
        "max_concurrent": 8,
        "seed": 0,
        "pruner": {"type": "hyperband", "min_epochs": 1, "reduction_factor": 3},
    },
}


@pytest.fixture(scope="module")
def api_alone(
    tmp_path_factory: pytest.TempPathFactory, dataset_root: Path
) -> Iterator[tuple[str, str]]:
    """(URL, database URL) of the API on the embedded default, without a worker."""
    yield from browser.api_alone(tmp_path_factory.mktemp("search-pages"), dataset_root)


def accuracy(params: dict[str, Any], epoch: int) -> float:
    """The two higher learning rates take off at once (and tie with each other within the
    noise of 150 images); the lower two crawl at 10 % (and tie with each other)."""
    final = {0.030000000000000002: 0.5, 0.1: 0.45}.get(params["learning_rate"], 0.1)
    return round((0.1 + (final - 0.1) * (1 - math.exp(-epoch))) * 150) / 150


@pytest.fixture
def search(api_alone: tuple[str, str], configure: Callable[..., Any]) -> tuple[str, int]:
    from tests.test_search_decisions import jobs_of, train

    base, database_url = api_alone
    configure(database_url)
    created = httpx.post(f"{base}/experiments", json=SEARCH, timeout=60)
    assert created.status_code == 202, created.text
    experiment_id = int(created.json()["id"])

    class Client:
        def get(self, path: str) -> httpx.Response:
            return httpx.get(f"{base}{path}", timeout=30)

    client = Client()
    while queued := [job for job in jobs_of(client, experiment_id) if job["status"] == "queued"]:
        for job in queued:
            train(job["id"], accuracy)
    return base, experiment_id


def test_a_search_page_reads_as_its_tables_do(
    search: tuple[str, int], page: Any, screenshots: Screenshots
) -> None:
    base, experiment_id = search
    page.goto(f"{base}/ui/experiments/{experiment_id}")
    page.wait_for_selector("#search:not([hidden]) #rungs tbody tr[data-rung]")
    screenshots.take(page, "search")

    facts = page.locator("#search-facts")
    assert page.evaluate(
        "getComputedStyle(document.getElementById('search-facts')).columnGap"
    ) not in ("normal", "0px")
    assert facts.locator("span").count() >= 4
    best = page.locator("#search-best").inner_text()
    assert "%" in best and "learning_rate 0.03)" in best, best
    assert "0.030000000000000002" not in page.locator("#search, #summary").first.inner_text()
    assert "0.030000000000000002" not in page.locator("#summary").inner_text()

    settings = page.locator("#search-settings").inner_text()
    assert "grid, seed 0" in settings and "hyperband" in settings and "Brackets" in settings

    expected = httpx.get(f"{base}/experiments/{experiment_id}", timeout=30).json()["search"]
    shown = page.locator("#search-warnings li").all_inner_texts()
    assert shown == [warning["message"] for warning in expected["warnings"]]

    first_rung = page.locator("#rungs tbody tr").first.locator("td")
    assert first_rung.nth(7).inner_text().endswith("%")  # the cutoff, as every table shows it
    assert first_rung.nth(8).inner_text().startswith("±")  # the noise margin

    page.select_option("#search-param", "batch_size")
    axis = page.evaluate(
        "Chart.getChart(document.getElementById('params-vs-objective')).options.scales.x"
    )
    assert axis["type"] == "category" and axis["labels"] == ["16", "64"]

    page.goto(f"{base}/")
    row = page.locator(f'#experiment-list tr[data-experiment-id="{experiment_id}"]')
    row.wait_for()
    assert "8/8 trials" in row.inner_text() and "search: grid, hyperband" in row.inner_text()


def test_a_trials_job_page_lists_its_decisions(
    search: tuple[str, int], page: Any, screenshots: Screenshots
) -> None:
    base, experiment_id = search
    jobs = httpx.get(f"{base}/jobs?experiment_id={experiment_id}&limit=50", timeout=30).json()
    stopped = next(job for job in jobs["items"] if job["status"] == "pruned")
    page.goto(f"{base}/ui/jobs/{stopped['id']}")
    screenshots.take(page, "pruned-trial")
    rows = page.locator("#trial-decisions tbody tr")
    outcomes = [rows.nth(i).get_attribute("data-outcome") for i in range(rows.count())]
    assert outcomes[-1] == "stopped" and "paused" in outcomes
    cells = rows.last.locator("td")
    assert cells.nth(4).inner_text().endswith("%") and cells.nth(5).inner_text().startswith("±")
