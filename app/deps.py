"""Route dependencies: the database session (the transaction boundary), settings, the API key.

The session is the request's one transaction: the route and the services only add and change
rows, and the dependency commits once when the route returns, before the response is sent
(`scope="function"`), so a client never sees a 2xx for work that was then rolled back. Job ids
queued with `jobs.queue.enqueue_after_commit` are sent right after that commit."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Security
from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session

from app.errors import Unauthorized
from jobs.db import session_scope
from jobs.settings import Settings, get_settings

api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="Needed on every route but /health when API_KEY is set.",
)


def get_session() -> Iterator[Session]:
    """A write transaction for the request: committed when the route returns, rolled back if it
    raises."""
    with session_scope() as session:
        yield session


def get_read_session() -> Iterator[Session]:
    """A read-only transaction: on SQLite it never waits for a writer."""
    with session_scope(write=False) as session:
        yield session


def require_api_key(
    settings: Annotated[Settings, Depends(get_settings)],
    api_key: Annotated[str | None, Security(api_key_header)] = None,
) -> None:
    expected = settings.api_key
    if expected is None:
        return
    # compare_digest takes the same time whatever the first differing byte is.
    if api_key is None or not hmac.compare_digest(api_key.encode(), expected.encode()):
        raise Unauthorized("Missing or wrong X-API-Key header.")


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
ReadSessionDep = Annotated[Session, Depends(get_read_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
