"""The interactive API docs (/docs: Swagger UI, /redoc: ReDoc), their scripts and styles served
from app/static/vendor, so that both pages work on a machine without internet (FastAPI's own
pages load them from a CDN)."""

from __future__ import annotations

import base64
import functools
import hashlib
import re

from fastapi import APIRouter
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse, Response

from app.templating import STATIC_DIR

# Versioned folders: a new version is a new folder, so no browser keeps a stale cached copy.
SWAGGER_UI = "/static/vendor/swagger-ui-5.36.0"
REDOC_VERSION = "2.5.4"
REDOC_BUNDLE = STATIC_DIR / "vendor" / f"redoc-{REDOC_VERSION}" / "redoc.standalone.js"
# ReDoc's sidebar credits its maker with a logo that the bundle loads from the vendor's CDN (no
# option turns it off). The page's policy refuses it, leaving an error on the console and no
# logo, so the bundle is served with that URL pointing at a mark of this service's own.
REDOC_CDN_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
REDOC_LOCAL_LOGO = "/static/redoc-credit.svg"
REDOC_SCRIPT_URL = f"/redoc/redoc-{REDOC_VERSION}.standalone.js"
OPENAPI_URL = "/openapi.json"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
TITLE = "CIFAR training jobs"

router = APIRouter(include_in_schema=False)
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def _offline(page: HTMLResponse) -> HTMLResponse:
    """The page with a Content-Security-Policy that lets it load nothing from another site: a
    part that would is refused by the browser before any request is made. Inline scripts run
    only if they are the page's own (by hash); both UIs style elements inline, and ReDoc's
    search runs in a worker made from a blob."""
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


@functools.cache
def offline_redoc_bundle() -> bytes:
    """The vendored bundle (kept byte for byte as published, with its sha256) with the logo's
    CDN URL replaced by the local one; an upgrade that moves that URL fails here, not silently
    in the browser."""
    script = REDOC_BUNDLE.read_text(encoding="utf-8")
    found = script.count(REDOC_CDN_LOGO)
    if found != 1:
        raise RuntimeError(f"{REDOC_BUNDLE} names {REDOC_CDN_LOGO} {found} times, not once")
    return script.replace(REDOC_CDN_LOGO, REDOC_LOCAL_LOGO).encode()


@router.get(REDOC_SCRIPT_URL)
def redoc_script() -> Response:
    # The version is in the path: a new bundle is a new URL, so it may be cached for long.
    return Response(
        offline_redoc_bundle(),
        media_type="text/javascript",
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )


@router.get("/redoc")
def redoc() -> HTMLResponse:
    return _offline(
        get_redoc_html(
            openapi_url=OPENAPI_URL,
            title=f"{TITLE} - API reference",
            redoc_js_url=REDOC_SCRIPT_URL,
            redoc_favicon_url=f"{SWAGGER_UI}/favicon-32x32.png",
            # The pages use the browser's own fonts: nothing is fetched from another site.
            with_google_fonts=False,
        )
    )
