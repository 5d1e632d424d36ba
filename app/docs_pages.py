"""The interactive API docs (/docs: Swagger UI, /redoc: ReDoc), their scripts and styles served
from app/static/vendor, so that both pages work on a machine without internet (FastAPI's own
pages load them from a CDN)."""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi import APIRouter
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse

# Versioned folders: a new version is a new folder, so no browser keeps a stale cached copy.
SWAGGER_UI = "/static/vendor/swagger-ui-5.36.0"
REDOC = "/static/vendor/redoc-2.5.4"
OPENAPI_URL = "/openapi.json"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
TITLE = "CIFAR training jobs"

router = APIRouter(include_in_schema=False)
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def _offline(page: HTMLResponse) -> HTMLResponse:
    """The page with a Content-Security-Policy that lets it load nothing from another site: a
    part that would (ReDoc's sidebar shows a logo from its vendor's CDN) is refused by the browser
    before any request is made. Inline scripts run only if they are the page's own (by hash);
    both UIs style elements inline, and ReDoc's search runs in a worker made from a blob."""
    body = bytes(page.body).decode()
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
        for script in _INLINE_SCRIPT.findall(body)
    )
    policy = "; ".join(
        (
            "default-src 'self'",
            f"script-src 'self' {hashes}".strip(),
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "font-src 'self' data:",
            "connect-src 'self'",
            "worker-src 'self' blob:",
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        )
    )
    page.headers["Content-Security-Policy"] = policy
    page.headers["X-Content-Type-Options"] = "nosniff"
    return page


@router.get("/docs")
def swagger_ui() -> HTMLResponse:
    return _offline(
        get_swagger_ui_html(
            openapi_url=OPENAPI_URL,
            title=f"{TITLE} - API docs",
            swagger_js_url=f"{SWAGGER_UI}/swagger-ui-bundle.js",
            swagger_css_url=f"{SWAGGER_UI}/swagger-ui.css",
            swagger_favicon_url=f"{SWAGGER_UI}/favicon-32x32.png",
            oauth2_redirect_url=OAUTH2_REDIRECT_URL,
        )
    )


@router.get(OAUTH2_REDIRECT_URL)
def swagger_ui_redirect() -> HTMLResponse:
    return _offline(get_swagger_ui_oauth2_redirect_html())


@router.get("/redoc")
def redoc() -> HTMLResponse:
    return _offline(
        get_redoc_html(
            openapi_url=OPENAPI_URL,
            title=f"{TITLE} - API reference",
            redoc_js_url=f"{REDOC}/redoc.standalone.js",
            redoc_favicon_url=f"{SWAGGER_UI}/favicon-32x32.png",
            # The pages use the browser's own fonts: nothing is fetched from another site.
            with_google_fonts=False,
        )
    )
