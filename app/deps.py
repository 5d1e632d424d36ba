"""Route dependencies: the database session (the transaction boundary), settings, the API key."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Security
from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db import get_sessionmaker
from app.errors import Unauthorized

api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="Needed on every route but /health when API_KEY is set.",
)


def get_session() -> Iterator[Session]:
    """One session per request: committed when the route returns, rolled back if it raises."""
    session = get_sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


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


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
