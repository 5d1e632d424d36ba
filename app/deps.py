"""Route dependencies: the database session (the transaction boundary) and settings.

The session is the request's one transaction: the route hands it to the core, which adds and
changes rows, and the dependency commits once when the route returns, before the response is
sent (`scope="function"`), so a client never sees a 2xx for work that was then rolled back. Job
ids queued with `jobs.queue.enqueue_after_commit` are sent right after that commit. The API key
or a user's token is checked before routing, in `app/auth.py`, which leaves the caller's
identity for `IdentityDep`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.errors import Unauthorized
from jobs.accounts import NO_ACCOUNTS, Identity
from jobs.db import session_scope
from jobs.settings import Settings, get_settings


def get_session() -> Iterator[Session]:
    """A write transaction for the request: committed when the route returns, rolled back if it
    raises."""
    with session_scope() as session:
        yield session


@contextmanager
def read_session() -> Iterator[Session]:
    """A read-only transaction (on SQLite it never waits for a writer), opened by the route in
    its own worker thread with `with read_session() as session:`. Read routes do not take it as
    a dependency: a sync generator dependency costs two more hand-offs to the thread pool per
    request (its start and its end), about a quarter of a small read's CPU time. Slow work
    (drawing a plot, hashing a file) comes after the `with` block, outside the transaction."""
    with session_scope(write=False) as session:
        yield session


def get_identity(request: Request) -> Identity:
    """Who is asking, as app.auth found before routing (without API_KEY: everyone, as the
    admin of a service without accounts). A route open without credentials has no identity
    when API_KEY is set: asking for one there is a 401, never the admin's rights."""
    identity = getattr(request.state, "identity", None)
    if isinstance(identity, Identity):
        return identity
    if get_settings().api_key is None:
        return NO_ACCOUNTS
    raise Unauthorized("This request carries no credentials.")


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
IdentityDep = Annotated[Identity, Depends(get_identity)]
