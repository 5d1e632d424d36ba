"""Request bodies are JSON: a body in another media type is 415, and one that is not UTF-8 JSON
text is 400 naming where it breaks, before FastAPI reads it (which would answer 422 with a byte
offset as the field, or 400 or 422 for bad UTF-8 depending on the bytes)."""

from __future__ import annotations

import json
from collections.abc import Callable
from email.message import Message as MimeHeaders

from starlette.datastructures import Headers
from starlette.routing import get_route_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import InvalidJson, ServiceError, UnsupportedMediaType
from app.methods import Operations
from app.responses import service_error_response

JSON_MEDIA_TYPES = "application/json or application/*+json"


def is_json_media_type(content_type: str) -> bool:
    """application/json or application/<anything>+json, with UTF-8 (or no) charset: the types
    FastAPI parses as JSON; JSON text is UTF-8 (RFC 8259)."""
    headers = MimeHeaders()
    headers["content-type"] = content_type
    if headers.get_content_maintype() != "application":
        return False
    subtype = headers.get_content_subtype()
    if subtype != "json" and not subtype.endswith("+json"):
        return False
    charset = headers.get_param("charset")
    return charset is None or (isinstance(charset, str) and charset.lower() in ("utf-8", "utf8"))


def json_problem(body: bytes) -> str | None:
    """What is wrong with a body as JSON text, for a person; None when it parses."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        return (
            f"The request body is not UTF-8 text: byte {error.start} "
            f"(0x{body[error.start]:02x}) {error.reason}."
        )
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        return (
            f"The request body is not valid JSON: {error.msg} at line {error.lineno}, "
            f"column {error.colno} (character {error.pos})."
        )
    return None


class JsonBodyGuard:
    """Checks the body of each request to an operation that takes a JSON body (POST /jobs),
    then hands the same bytes on. Other requests, and bodiless ones, pass untouched: a missing
    spec is FastAPI's 422, an unknown path or method its 404 or 405."""

    def __init__(self, app: ASGIApp, operations: Callable[[], Operations]) -> None:
        self.app = app
        self.operations = operations

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.operations().takes_json_body(
            scope["method"], get_route_path(scope)
        ):
            await self.app(scope, receive, send)
            return
        body = b""
        more_body = True
        while more_body:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more_body = message.get("more_body", False)
        content_type = Headers(scope=scope).get("content-type")
        problem: ServiceError | None = None
        if (content_type is not None or body) and not is_json_media_type(content_type or ""):
            shown = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
            problem = UnsupportedMediaType(
                f"The request body must be JSON, sent as {JSON_MEDIA_TYPES} (UTF-8); "
                f"this request has {shown}."
            )
        elif body and (text_problem := json_problem(body)) is not None:
            problem = InvalidJson(text_problem)
        if problem is not None:
            await service_error_response(problem)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
