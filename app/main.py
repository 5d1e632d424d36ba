"""The FastAPI application: routers, the error handlers, and the middleware that sees each
request before routing (HEAD, the API key, the body cap, JSON bodies)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import docs_pages, prometheus, unavailable
from app.auth import ApiKeyGuard, sign_in_token
from app.errors import BodyTooLarge, ServiceError
from app.json_body import JsonBodyGuard
from app.methods import HEAD_REQUEST, METHOD_ORDER, HeadAsGet, Operations
from app.observe import Observe, bind_route_ids
from app.openapi import build_schema
from app.responses import error_response, service_error_response
from app.routes import checkpoints, events, experiments, jobs, plots, system, ui, users
from app.streams import EventHub
from app.templating import STATIC_DIR
from jobs import wiring
from jobs.artifacts.startup import check_artifact_store
from jobs.logs import configure_logging
from jobs.settings import get_settings

DESCRIPTION = """
Train the 18-layer CIFAR networks of the course report (PlainBlock, ResidualBlock, MobileBlock)
as jobs: submit a spec, poll per-epoch metrics, fetch PNG plots and checkpoints; or submit an
experiment (blocks x grid x seeds) and read its jobs as one summary. The dashboard is at `/`.
"""


class BodySizeLimit:
    """Refuse request bodies over a cap with 413, whether or not Content-Length is sent."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def too_large(scope: Scope, receive: Receive, send: Send) -> None:
            message = f"Request body larger than {self.max_bytes} bytes."
            await error_response(413, BodyTooLarge.code, message)(scope, receive, send)

        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.max_bytes + 1
                if declared > self.max_bytes:
                    await too_large(scope, receive, send)
                    return
        received = 0
        exceeded = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise BodyTooLarge(f"Request body larger than {self.max_bytes} bytes.")
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            # A chunked body over the cap surfaces in the route as a body-parsing error (FastAPI
            # answers 400); drop that answer and send the 413 below instead.
            if exceeded and not response_started:
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            if response_started:
                raise
        if exceeded and not response_started:
            await too_large(scope, receive, send)


class StartupCheck:
    """Run `check` (in a thread) before the application starts. A ValueError from it, a
    setting that cannot work (a malformed ARTIFACT_URL, a missing bucket), fails the start-up
    with its message as one line: raised out of the lifespan, it would come at the end of a
    long traceback."""

    def __init__(self, app: ASGIApp, check: Callable[[], object]) -> None:
        self.app = app
        self.check = check

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        startup = await receive()
        try:
            await anyio.to_thread.run_sync(self.check)
        except ValueError as error:
            await send({"type": "lifespan.startup.failed", "message": f"cannot start: {error}"})
            return
        replayed = False

        async def receive_from_startup() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return startup
            return await receive()

        await self.app(scope, receive_from_startup, send)


def _field_name(location: tuple[Any, ...]) -> str:
    parts = [str(part) for part in location if part not in ("body",)]
    return ".".join(parts) or "body"


# Every app this module creates has the same routes: its schema is built once per process (and
# per whether a key is needed), not once per app.
_SCHEMAS: dict[bool, dict[str, Any]] = {}


def create_app() -> FastAPI:
    settings = get_settings()
    wiring.connect()
    configure_logging(
        settings, extra_secrets=[sign_in_token(settings.api_key) if settings.api_key else None]
    )
    event_hub = EventHub()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # The artifact store was checked before this (StartupCheck).
        yield
        await event_hub.stop()

    # No trailing-slash redirects: "/jobs/1/checkpoints/%2e%2e%2f" decodes to ".../../", and a 307
    # to ".../.." would send clients (which normalise dot segments) to another resource.
    app = FastAPI(
        title="CIFAR training jobs",
        version="0.1.0",
        description=DESCRIPTION,
        redirect_slashes=False,
        lifespan=lifespan,
        # app/docs_pages.py serves both pages with their assets from this service.
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(bind_route_ids)],
    )
    app.state.event_hub = event_hub

    @functools.cache
    def operations() -> Operations:
        """The schema's operations by path (the same whether or not a key is needed)."""
        return Operations(app.openapi())

    @app.exception_handler(ServiceError)
    async def service_error(_request: Request, error: ServiceError) -> JSONResponse:
        return service_error_response(error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": _field_name(tuple(item["loc"])), "message": item["msg"]}
            for item in error.errors()
        ]
        if problems and all(item["loc"][0] == "path" for item in error.errors()):
            # A malformed id names no resource: the same answer as an unknown one.
            return error_response(404, "not_found", "No such resource.")
        detail = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        return error_response(
            422, "validation_error", detail or "Invalid request.", fields=problems
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        path = request.url.path
        method = "HEAD" if request.scope.get(HEAD_REQUEST) else request.method
        if error.status_code == 404:
            return error_response(404, "not_found", f"Nothing here: {path} is not an API route.")
        if error.status_code == 405:
            # Starlette's Allow lists one route's methods; a path can have several routes.
            methods = set(operations().allowed_methods(path))
            methods |= {m.strip() for m in (error.headers or {}).get("Allow", "").split(",")}
            allowed = ", ".join(m for m in METHOD_ORDER if m in methods)
            return error_response(
                405,
                "method_not_allowed",
                f"{method} is not allowed on {path}; it answers {allowed}.",
                {"Allow": allowed},
            )
        return error_response(
            error.status_code, "http_error", str(error.detail), dict(error.headers or {})
        )

    unavailable.install(app)
    app.include_router(system.health_router)
    app.include_router(system.router)
    app.include_router(jobs.router)
    app.include_router(plots.router)
    app.include_router(checkpoints.router)
    app.include_router(experiments.router)
    app.include_router(events.router)
    app.include_router(users.router)
    app.include_router(ui.router)
    app.include_router(docs_pages.router)
    app.include_router(prometheus.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    # The last added runs first: the request id, access record and metrics, then HEAD, then the key
    # (header or the dashboard's sign-in cookie), then the body cap, then the JSON check.
    app.add_middleware(JsonBodyGuard, operations=operations)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(ApiKeyGuard)
    app.add_middleware(HeadAsGet)
    app.add_middleware(Observe)
    # Outermost: a malformed ARTIFACT_URL or a missing bucket stops the start-up, saying which.
    app.add_middleware(StartupCheck, check=functools.partial(check_artifact_store, settings))

    # The schema depends on whether a key is needed, which the settings say per request.
    def openapi() -> dict[str, Any]:
        api_key_required = get_settings().api_key is not None
        if api_key_required not in _SCHEMAS:
            _SCHEMAS[api_key_required] = build_schema(app, api_key_required=api_key_required)
        return _SCHEMAS[api_key_required]

    app.openapi = openapi  # type: ignore[method-assign]
    return app


app = create_app()
