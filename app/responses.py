"""The JSON error body every answer of the API shares: {"error": code, "detail": text}."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from app.errors import ServiceError


def error_response(
    status_code: int, code: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse(
        {"error": code, "detail": detail, **extra}, status_code=status_code, headers=headers
    )


def service_error_response(error: ServiceError) -> JSONResponse:
    extra = {} if error.fields is None else {"fields": error.fields}
    extra.update(error.extra or {})
    return error_response(error.status_code, error.code, error.detail, error.headers, **extra)
