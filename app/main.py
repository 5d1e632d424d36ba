"""The FastAPI application: routers, the error handlers, the request body cap."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import unavailable
from app.deps import require_api_key
from app.errors import BodyTooLarge, ServiceError
from app.routes import checkpoints, jobs, plots, system
from jobs.settings import get_settings

DESCRIPTION = """
Train the 18-layer CIFAR networks of the course report (PlainBlock, ResidualBlock, MobileBlock)
as jobs: submit a spec, poll per-epoch metrics, fetch PNG plots and checkpoints.
"""


def _error(
    status_code: int, code: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse(
        {"error": code, "detail": detail, **extra}, status_code=status_code, headers=headers
    )


class BodySizeLimit:
    """Refuse request bodies over a cap with 413, whether or not Content-Length is sent."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = _error(
            413, BodyTooLarge.code, f"Request body larger than {self.max_bytes} bytes."
        )
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


def _field_name(location: tuple[Any, ...]) -> str:
    parts = [str(part) for part in location if part not in ("body",)]
    return ".".join(parts) or "body"


def create_app() -> FastAPI:
    settings = get_settings()
    # No trailing-slash redirects: "/jobs/1/checkpoints/%2e%2e%2f" decodes to ".../../", and a 307
    # to ".../.." would send clients (which normalise dot segments) to another resource.
    app = FastAPI(
        title="CIFAR training jobs",
        version="0.1.0",
        description=DESCRIPTION,
        redirect_slashes=False,
    )

    @app.exception_handler(ServiceError)
    async def service_error(_request: Request, error: ServiceError) -> JSONResponse:
        return _error(error.status_code, error.code, error.detail, error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": _field_name(tuple(item["loc"])), "message": item["msg"]}
            for item in error.errors()
        ]
        if problems and all(item["loc"][0] == "path" for item in error.errors()):
            # A malformed id names no resource: the same answer as an unknown one.
            return _error(404, "not_found", "No such resource.")
        detail = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        return _error(422, "validation_error", detail or "Invalid request.", fields=problems)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}
        return _error(
            error.status_code,
            codes.get(error.status_code, "http_error"),
            str(error.detail),
            dict(error.headers or {}),
        )

    unavailable.install(app)
    protected = [Depends(require_api_key)]
    app.include_router(system.health_router)
    app.include_router(system.router, dependencies=protected)
    app.include_router(jobs.router, dependencies=protected)
    app.include_router(plots.router, dependencies=protected)
    app.include_router(checkpoints.router, dependencies=protected)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _drop_unreachable_validation_errors(default_openapi())
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _drop_unreachable_validation_errors(schema: dict[str, Any]) -> None:
    """FastAPI documents a 422 HTTPValidationError on each route that has parameters and does not
    declare its own 422. This API never sends that body: its 422 is ErrorRead (declared where it
    can happen), and a bad path parameter is a 404. Remove those entries from the schema."""
    default_ref = "#/components/schemas/HTTPValidationError"
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            response = operation.get("responses", {}).get("422", {})
            content = response.get("content", {}).get("application/json", {})
            if content.get("schema", {}).get("$ref") == default_ref:
                del operation["responses"]["422"]
    if default_ref not in repr(schema.get("paths", {})):
        components = schema.get("components", {}).get("schemas", {})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)


app = create_app()
