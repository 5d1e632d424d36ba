"""The API key, checked before routing and before the body is read."""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import Unauthorized
from app.responses import service_error_response
from jobs.settings import get_settings

API_KEY_HEADER = "X-API-Key"
# Liveness probes carry no secret; everything else, the schema and the docs included, does.
OPEN_PATHS = frozenset({"/health"})


def key_matches(sent: str | None, expected: str) -> bool:
    # compare_digest takes the same time whatever the first differing byte is.
    return sent is not None and hmac.compare_digest(sent.encode(), expected.encode())


class ApiKeyGuard:
    """When API_KEY is set, answer 401 to any request without the right X-API-Key header, before
    routing (so an unknown path or method tells nothing) and before the body is read (so a
    malformed or oversized body is still a 401)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            expected = get_settings().api_key
            if expected is not None:
                sent = Headers(scope=scope).get(API_KEY_HEADER)
                if not key_matches(sent, expected):
                    error = Unauthorized(
                        f"Missing or wrong {API_KEY_HEADER} header.",
                        headers={"WWW-Authenticate": f'ApiKey header="{API_KEY_HEADER}"'},
                    )
                    await service_error_response(error)(scope, receive, send)
                    return
        await self.app(scope, receive, send)
