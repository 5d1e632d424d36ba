"""Who is asking, settled before routing and before the body is read.

With API_KEY set, a request carries either the key (the built-in admin, `admin`) or a user's
token (jobs.accounts), as the X-API-Key header or `Authorization: Bearer <token>`. Browsers
cannot add a header to an EventSource or to a link they follow, so the dashboard's sign-in form
(app/routes/ui.py) sets a cookie that is accepted instead; a page opened without any leads to
that form rather than to a JSON 401. The caller's identity goes into the request's state
(`scope["state"]["identity"]`) for the routes; a token is looked up on every request, so its
revocation or its user's disabling takes effect on the next one."""

from __future__ import annotations

import hashlib
import hmac
import logging
from urllib.parse import quote

import anyio.to_thread
from sqlalchemy.exc import SQLAlchemyError
from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import ServiceError, Unauthorized
from app.responses import service_error_response
from app.unavailable import database_unavailable_response, is_database_unavailable
from jobs import accounts
from jobs.accounts import BUILTIN_ADMIN, NO_ACCOUNTS, Identity
from jobs.db import session_scope
from jobs.errors import TokenRejected
from jobs.settings import get_settings

logger = logging.getLogger(__name__)

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


def bearer(headers: Headers) -> str | None:
    """What `Authorization: Bearer <...>` carries, if anything."""
    scheme, _, sent = headers.get("authorization", "").partition(" ")
    return sent.strip() if scheme.lower() == "bearer" and sent.strip() else None


def metrics_token_matches(headers: Headers, token: str) -> bool:
    """`Authorization: Bearer <METRICS_TOKEN>`, what Prometheus sends with `authorization:
    credentials:` (or `bearer_token`) in its scrape config."""
    return key_matches(bearer(headers), token)


def _identify_token(token: str) -> Identity:
    """The token's user (TokenRejected otherwise), its use noted at most once a minute."""
    with session_scope(write=False) as session:
        identity, last_used_at = accounts.identify_token(session, token)
    if identity.token_id is not None and accounts.use_to_note(last_used_at):
        try:
            with session_scope() as session:
                accounts.note_use(session, identity.token_id)
        except SQLAlchemyError as error:
            # Only the last-used time is lost: the request goes on.
            logger.warning("could not note a token's use: %s", type(error).__name__)
    return identity


def _identify_sign_in(api_key: str, value: str) -> Identity:
    with session_scope(write=False) as session:
        return accounts.identify_sign_in(session, api_key, value)


async def identify(headers: Headers, api_key: str) -> Identity | None:
    """The caller's identity: the built-in admin (the key, or the cookie the sign-in form set
    for it), a user (a token, or a user's sign-in cookie), or None for no credentials at all.
    TokenRejected for a token or user cookie that is no longer (or never was) good."""
    sent = [value for value in (headers.get(API_KEY_HEADER), bearer(headers)) if value]
    if any(key_matches(value, api_key) for value in sent):
        return BUILTIN_ADMIN
    tokens = [value for value in sent if accounts.looks_like_token(value)]
    if tokens:
        return await anyio.to_thread.run_sync(_identify_token, tokens[0])
    if sent:
        return None
    cookie = cookie_parser(headers.get("cookie", "")).get(SIGN_IN_COOKIE)
    if cookie is None:
        return None
    if key_matches(cookie, sign_in_token(api_key)):
        return BUILTIN_ADMIN
    return await anyio.to_thread.run_sync(_identify_sign_in, api_key, cookie)


def authenticated(headers: Headers, expected: str) -> bool:
    """The right X-API-Key header, or the cookie the sign-in form set for this key."""
    if key_matches(headers.get(API_KEY_HEADER), expected):
        return True
    cookie = cookie_parser(headers.get("cookie", "")).get(SIGN_IN_COOKIE)
    return key_matches(cookie, sign_in_token(expected))


def set_identity(scope: Scope, identity: Identity) -> None:
    scope.setdefault("state", {})["identity"] = identity


class ApiKeyGuard:
    """When API_KEY is set, answer 401 to any request without the key or a good user token
    (or a sign-in cookie), before routing (so an unknown path or method tells nothing) and
    before the body is read (so a malformed or oversized body is still a 401). A page opened
    in a browser (GET or HEAD of /, /ui/..., /docs) is sent to the sign-in form instead. The
    caller's identity is put in the request's state for the routes (jobs.accounts.Identity;
    without API_KEY, the anonymous admin of a service without accounts)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = get_settings()
        if scope["path"] == METRICS_PATH:
            # A scraper holds METRICS_TOKEN, not the key that can submit and cancel jobs. With
            # the token set, /metrics needs it (or the key); without it, /metrics is a route
            # like the others.
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
        expected = settings.api_key
        if expected is None:
            set_identity(scope, NO_ACCOUNTS)
            await self.app(scope, receive, send)
            return
        if is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        rejection: ServiceError | None = None
        try:
            identity = await identify(Headers(scope=scope), expected)
        except TokenRejected as rejected:
            identity, rejection = None, rejected
            rejection.headers = {"WWW-Authenticate": "Bearer"}
        except SQLAlchemyError as failure:
            if not is_database_unavailable(failure):
                raise
            await database_unavailable_response(failure)(scope, receive, send)
            return
        if identity is not None:
            set_identity(scope, identity)
            await self.app(scope, receive, send)
            return
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
        refusal = rejection or Unauthorized(
            f"Missing or wrong {API_KEY_HEADER} header.",
            headers={"WWW-Authenticate": f'ApiKey header="{API_KEY_HEADER}"'},
        )
        await service_error_response(refusal)(scope, receive, send)
