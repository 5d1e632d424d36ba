"""The API key, checked before routing and before the body is read.

Clients send it as the X-API-Key header. Browsers cannot add that header to an EventSource or
to a link they follow, so the dashboard's sign-in form (app/routes/ui.py) sets a cookie that is
accepted instead; a page opened without either leads to that form rather than to a JSON 401."""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import quote

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import Unauthorized
from app.responses import service_error_response
from jobs.settings import get_settings

API_KEY_HEADER = "X-API-Key"
METRICS_PATH = "/metrics"
SIGN_IN_COOKIE = "dashboard_sign_in"
SIGN_IN_PATH = "/ui/login"
SIGN_OUT_PATH = "/ui/logout"
# Liveness probes carry no secret, nor do the sign-in form and the dashboard's scripts and
# styles; everything else, the schema and the docs included, does.
OPEN_PATHS = frozenset({"/health", SIGN_IN_PATH, SIGN_OUT_PATH})
OPEN_PREFIXES = ("/static/",)
# What a person opens in a browser: without the key these lead to the sign-in form.
PAGE_PATHS = frozenset({"/", "/docs", "/docs/oauth2-redirect", "/redoc"})
PAGE_PREFIXES = ("/ui/",)


def key_matches(sent: str | None, expected: str) -> bool:
    # compare_digest takes the same time whatever the first differing byte is.
    return sent is not None and hmac.compare_digest(sent.encode(), expected.encode())


def sign_in_token(api_key: str) -> str:
    """The sign-in cookie's value: derived from the key, so that the browser's cookie store
    never holds the key itself, and changing API_KEY signs every browser out."""
    return hmac.new(api_key.encode(), b"cifar-jobs dashboard sign-in", hashlib.sha256).hexdigest()


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def is_page(path: str) -> bool:
    return path in PAGE_PATHS or path.startswith(PAGE_PREFIXES)


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this server, never another site ("//host",
    "/\\host" and absolute URLs lead home)."""
    if (
        not target
        or not target.startswith("/")
        or target.startswith(("//", "/\\"))
        or any(ord(character) < 0x20 or character == "\\" for character in target)
    ):
        return "/"
    return target


def metrics_token_matches(headers: Headers, token: str) -> bool:
    """`Authorization: Bearer <METRICS_TOKEN>`, what Prometheus sends with `authorization:
    credentials:` (or `bearer_token`) in its scrape config."""
    scheme, _, sent = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and key_matches(sent.strip(), token)


def authenticated(headers: Headers, expected: str) -> bool:
    """The right X-API-Key header, or the cookie the sign-in form set for this key."""
    if key_matches(headers.get(API_KEY_HEADER), expected):
        return True
    cookie = cookie_parser(headers.get("cookie", "")).get(SIGN_IN_COOKIE)
    return key_matches(cookie, sign_in_token(expected))


class ApiKeyGuard:
    """When API_KEY is set, answer 401 to any request without the right X-API-Key header (or
    sign-in cookie), before routing (so an unknown path or method tells nothing) and before the
    body is read (so a malformed or oversized body is still a 401). A page opened in a browser
    (GET or HEAD of /, /ui/..., /docs) is sent to the sign-in form instead."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == METRICS_PATH:
            # A scraper holds METRICS_TOKEN, not the key that can submit and cancel jobs. With
            # the token set, /metrics needs it (or the key); without it, /metrics is a route
            # like the others.
            settings = get_settings()
            token = settings.metrics_token
            headers = Headers(scope=scope)
            if token is not None and metrics_token_matches(headers, token):
                await self.app(scope, receive, send)
                return
            if token is not None and (
                settings.api_key is None or not authenticated(headers, settings.api_key)
            ):
                error = Unauthorized(
                    "Missing or wrong METRICS_TOKEN (send Authorization: Bearer <token>).",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await service_error_response(error)(scope, receive, send)
                return
        if scope["type"] == "http" and not is_open(scope["path"]):
            expected = get_settings().api_key
            if expected is not None and not authenticated(Headers(scope=scope), expected):
                path = scope["path"]
                if scope["method"] in ("GET", "HEAD") and is_page(path):
                    query = scope.get("query_string", b"").decode("latin-1")
                    target = path + (f"?{query}" if query else "")
                    redirect = RedirectResponse(
                        f"{SIGN_IN_PATH}?next={quote(target, safe='')}",
                        status_code=303,
                        headers={"Cache-Control": "no-store"},
                    )
                    await redirect(scope, receive, send)
                    return
                error = Unauthorized(
                    f"Missing or wrong {API_KEY_HEADER} header.",
                    headers={"WWW-Authenticate": f'ApiKey header="{API_KEY_HEADER}"'},
                )
                await service_error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)
