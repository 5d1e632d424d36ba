"""The browser the dashboard tests drive: Debian's chromium under Playwright (never a downloaded
browser), a fresh context per test whose script errors and CSP violations fail it, and
screenshots kept in the test's tmp dir (and $DASHBOARD_SCREENSHOTS if set). Registered as a
pytest plugin by tests/conftest.py, so every browser test takes `page` and `screenshots`."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI, service_environment
from tests.support import free_port, start_api

CHROMIUM = Path("/usr/bin/chromium")
# Every change of the job page's "live" badge, recorded from before the page's own scripts run.
RECORD_LIVE_MODES = """
window.__liveModes = [];
document.addEventListener("DOMContentLoaded", () => {
  const badge = document.getElementById("live-mode");
  if (!badge) return;
  window.__liveModes.push(badge.dataset.mode);
  new MutationObserver(() => window.__liveModes.push(badge.dataset.mode))
    .observe(badge, { attributes: true, attributeFilter: ["data-mode"] });
});
"""


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Debian's chromium under Playwright (never a downloaded browser)."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (apt-get install chromium)"
        if IN_CI:
            pytest.fail(f"{message}; CI needs it.", pytrace=False)
        pytest.skip(f"{message}: install it to run the browser tests")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield browser
        finally:
            browser.close()


class Screenshots:
    def __init__(self, folder: Path) -> None:
        self.folders = [folder]
        if os.environ.get("DASHBOARD_SCREENSHOTS"):
            self.folders.append(Path(os.environ["DASHBOARD_SCREENSHOTS"]))
        for target in self.folders:
            target.mkdir(parents=True, exist_ok=True)

    def take(self, page: Any, name: str, *, full_page: bool = True) -> None:
        first = self.folders[0] / f"{name}.png"
        page.screenshot(path=str(first), full_page=full_page)
        for target in self.folders[1:]:
            shutil.copyfile(first, target / first.name)


@pytest.fixture
def screenshots(tmp_path: Path) -> Screenshots:
    return Screenshots(tmp_path / "screenshots")


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    """A fresh browser context (no cookies) whose script errors and CSP violations fail the
    test. Refused requests are expected (a 422 from the form, a 404 from a missing route)."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    new_page = context.new_page()
    problems: list[str] = []
    new_page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    new_page.on(
        "console",
        lambda message: (
            problems.append(f"console: {message.text}")
            if message.type == "error" and "Failed to load resource" not in message.text
            else None
        ),
    )
    new_page.add_init_script(RECORD_LIVE_MODES)
    yield new_page
    context.close()
    assert not problems, problems


def api_alone(root: Path, dataset_root: Path) -> Iterator[tuple[str, str]]:
    """(URL, database URL) of the API on a fresh embedded default in `root`, without a worker:
    a browser test records the epochs itself. For a module fixture to yield from."""
    from jobs.migrations import upgrade

    database_url = f"sqlite:///{root / 'jobs.sqlite3'}"
    upgrade(database_url)
    port = free_port()
    process = start_api(service_environment(root, database_url, dataset_root), root, port)
    try:
        yield f"http://127.0.0.1:{port}", database_url
    finally:
        process.stop()
