"""HEAD wherever GET is answered, and the methods a path answers (for 405's Allow header).

FastAPI routes answer only the methods they declare (HEAD was 405 everywhere), and Starlette's
405 lists the methods of the first route matching the path (`DELETE /jobs` said `Allow: POST`)."""

from __future__ import annotations

import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# Set on a HEAD request's scope, which routing sees as GET: a response that can skip producing
# its body (FileResponse) looks here.
HEAD_REQUEST = "head_request"


class Operations:
    """The operations of an OpenAPI schema, looked up by request path: which methods a path
    answers and which operations take a JSON body."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self._paths: list[tuple[re.Pattern[str], dict[str, Any]]] = [
            (re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$"), methods)
            for path, methods in schema.get("paths", {}).items()
        ]
        # Most requests are GETs: a method no operation takes a JSON body with is answered
        # without matching the path against every pattern.
        self._json_body_methods = {
            method.upper()
            for methods in schema.get("paths", {}).values()
            for method, operation in methods.items()
            if _takes_json(operation)
        }

    def _operations(self, path: str) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for pattern, methods in self._paths:
            if pattern.match(path):
                found.update({method.upper(): operation for method, operation in methods.items()})
        return found

    def allowed_methods(self, path: str) -> list[str]:
        """The methods of the path in a stable order, HEAD wherever GET (RFC 9110 9.3.2)."""
        methods = set(self._operations(path))
        if "GET" in methods:
            methods.add("HEAD")
        order = {method: index for index, method in enumerate(METHOD_ORDER)}
        return sorted(methods, key=lambda method: (order.get(method, len(order)), method))

    def takes_json_body(self, method: str, path: str) -> bool:
        if method.upper() not in self._json_body_methods:
            return False
        return _takes_json(self._operations(path).get(method.upper(), {}))


def _takes_json(operation: dict[str, Any]) -> bool:
    return "application/json" in operation.get("requestBody", {}).get("content", {})


class HeadAsGet:
    """Answer HEAD as GET without the body: the same status and headers (Content-Length
    included), whatever produced the answer: a route, an error handler or a middleware."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET", HEAD_REQUEST: True}, receive, send_headers_only)
