"""/docs and /redoc in a real browser (Debian's chromium under Playwright) with every request to
another host refused, as on a machine without internet: both pages must still list the API's
operations, loading nothing from outside the service."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.browser import Screenshots
from tests.conftest import service_environment
from tests.support import free_port, start_api

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, dataset_root: Path) -> Iterator[str]:
    from jobs.migrations import upgrade

    root = tmp_path_factory.mktemp("docs")
    env = service_environment(root, f"sqlite:///{root / 'jobs.sqlite3'}", dataset_root)
    upgrade(env["DATABASE_URL"])
    port = free_port()
    process = start_api(env, root, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.stop()


class OfflinePage:
    """A browser page that can reach the service and nothing else; what it tried to reach
    elsewhere, every answer of 400 or more, and every error on the console (a resource the
    Content-Security-Policy refused, before any request) are kept to assert on."""

    def __init__(self, browser: Any, base: str) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.context.set_default_timeout(30_000)
        self.service = urlsplit(base).netloc
        self.blocked: list[str] = []
        self.failed: list[str] = []
        self.errors: list[str] = []
        self.console_errors: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on(
            "console",
            lambda message: (
                self.console_errors.append(message.text) if message.type == "error" else None
            ),
        )
        self.page.on(
            "response",
            lambda response: (
                self.failed.append(f"{response.status} {response.url}")
                if response.status >= 400
                else None
            ),
        )

    def _route(self, route: Any) -> None:
        url = route.request.url
        # data: and blob: URLs never leave the browser.
        if urlsplit(url).scheme in ("http", "https", "ws", "wss") and (
            urlsplit(url).netloc != self.service
        ):
            self.blocked.append(url)
            route.abort("internetdisconnected")
        else:
            route.continue_()


@pytest.fixture
def offline(chromium: Any, api: str) -> Iterator[OfflinePage]:
    page = OfflinePage(chromium, api)
    yield page
    page.context.close()


def operations(base: str) -> list[tuple[str, str, str]]:
    """(method, path, summary) of every operation in the schema."""
    schema = httpx.get(f"{base}/openapi.json").json()
    return [
        (method.upper(), path, operation["summary"])
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    ]


def test_swagger_ui_lists_the_operations_offline(offline: OfflinePage, api: str) -> None:
    page = offline.page
    page.goto(f"{api}/docs")
    page.wait_for_selector(".opblock")
    listed = {
        (block.locator(".opblock-summary-method").inner_text().strip(),
         block.locator(".opblock-summary-path").get_attribute("data-path"))
        for block in page.locator(".opblock").all()
    }  # fmt: skip
    expected = {(method, path) for method, path, _ in operations(api)}
    assert expected <= listed, expected - listed
    assert ("POST", "/jobs") in listed
    # The scripts and styles came from the service's own vendored copy.
    assert page.evaluate("typeof SwaggerUIBundle") == "function"
    assert offline.blocked == [] and offline.failed == [] and offline.errors == []
    assert offline.console_errors == []


def test_redoc_lists_the_operations_offline(offline: OfflinePage, api: str) -> None:
    page = offline.page
    page.goto(f"{api}/redoc")
    page.wait_for_selector("[data-section-id^='operation/']", state="attached")
    text = page.locator("body").inner_text()
    for _method, _path, summary in operations(api):
        assert summary in text, summary
    assert offline.blocked == [] and offline.failed == [] and offline.errors == []


def test_redoc_shows_its_logo_from_the_service(
    offline: OfflinePage,
    api: str,
    screenshots: Screenshots,
) -> None:
    """ReDoc's sidebar credits its maker with a logo that its bundle loads from the vendor's
    CDN; the page serves it from here, so the logo shows and the console stays clean."""
    page = offline.page
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(f"{api}/redoc")
    page.wait_for_selector("[data-section-id^='operation/']", state="attached")
    logo = page.locator("img[alt='redocly logo']")
    logo.wait_for(state="visible")
    page.wait_for_function(
        "() => document.querySelector(\"img[alt='redocly logo']\").naturalWidth > 0"
    )
    assert urlsplit(logo.get_attribute("src") or "").netloc in ("", offline.service)
    assert offline.console_errors == []
    assert offline.blocked == [] and offline.failed == [] and offline.errors == []
    screenshots.take(page, "redoc", full_page=False)


def test_the_docs_pages_name_no_other_host(api: str) -> None:
    """The HTML itself points only at this service (FastAPI's defaults use a CDN and Google
    Fonts)."""
    for path in ("/docs", "/redoc"):
        html = httpx.get(f"{api}{path}").text
        assert "http://" not in html and "https://" not in html, path
        assert "/static/vendor/" in html
