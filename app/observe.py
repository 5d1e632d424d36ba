"""What the API tells its operator about each request: a request id (taken from X-Request-ID
when the client sends a usable one, made up otherwise, and returned in X-Request-ID), bound to
every log record made while the request is handled; one access record per request naming its
route template; and the HTTP metrics (app/prometheus.py) by route template, never by raw path, so
that ids do not multiply the label values."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from fastapi import Request
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.prometheus import observe_request
from jobs import logs

REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID_CHARS = 200
# Printable ASCII, no leading or trailing space: safe in a header, a log line and a URL.
_USABLE_REQUEST_ID = re.compile(rf"[!-~](?:[ -~]{{0,{MAX_REQUEST_ID_CHARS - 2}}}[!-~])?")
# A request answered before routing (a 401, a 413) or by no route has no template.
UNROUTED = "(unrouted)"
STATIC_ROUTE = "/static/{path}"
# The path parameters that name a job or an experiment, bound to the request's log records.
ROUTE_IDS = ("job_id", "experiment_id")

access_logger = logging.getLogger("app.access")


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _USABLE_REQUEST_ID.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


def route_template(scope: Scope) -> str:
    """The path template of the route that answered (`/jobs/{job_id}`), set by the router on the
    request's scope."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    if scope.get("path", "").startswith("/static/") and "app_root_path" in scope:
        return STATIC_ROUTE
    return UNROUTED


async def bind_route_ids(request: Request) -> None:
    """A dependency of every route (async: it runs in the request's own context, so what it binds
    is seen by the route and by the access record)."""
    ids = {name: request.path_params[name] for name in ROUTE_IDS if name in request.path_params}
    if ids:
        logs.bind(**{name: _as_int(value) for name, value in ids.items()})


def _as_int(value: Any) -> Any:
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


class Observe:
    """Outermost middleware: sees every request, those refused before routing included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope.get("headers", []))
        method = scope["method"]
        started = time.perf_counter()
        status = 500

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        with logs.log_context(request_id=request_id):
            try:
                await self.app(scope, receive, observed_send)
            finally:
                seconds = time.perf_counter() - started
                route = route_template(scope)
                observe_request(method, route, status, seconds)
                access_logger.info(
                    "%s %s %s %.1f ms",
                    method,
                    scope.get("path", ""),
                    status,
                    seconds * 1000,
                    extra={
                        "method": method,
                        "path": scope.get("path", ""),
                        "route": route,
                        "status": status,
                        "duration_ms": round(seconds * 1000, 2),
                    },
                )
