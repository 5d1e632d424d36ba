"""Retrying database work whose error is transient: a dropped connection, a serialization
failure or deadlock, a timeout, a locked SQLite file. Anything else is raised at once."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

logger = logging.getLogger(__name__)
T = TypeVar("T")

# SQLSTATE classes and codes that a retry can fix: connection exceptions (08), serialization
# failure and deadlock (40001, 40P01), lock and statement timeouts (55P03, 57014), admin
# shutdown / cannot connect now (57P01-57P03).
TRANSIENT_SQLSTATES = ("08", "40001", "40P01", "55P03", "57014", "57P01", "57P02", "57P03")
FIRST_DELAY_SECONDS = 0.1
MAX_DELAY_SECONDS = 2.0


class TransientDatabaseError(Exception):
    """The database stayed unavailable for the whole retry deadline."""


def is_transient(error: BaseException) -> bool:
    if isinstance(error, PoolTimeout):
        return True
    if not isinstance(error, DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    sqlstate = getattr(error.orig, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate.startswith(TRANSIENT_SQLSTATES)
    # SQLite and drivers without SQLSTATE: a locked or busy file, a vanished connection.
    return isinstance(error, OperationalError)


def retry_transient(
    work: Callable[[], T],
    *,
    deadline_seconds: float,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``work`` (one whole transaction), again with doubling delays while it fails with a
    transient error, until ``deadline_seconds`` have passed; then TransientDatabaseError."""
    started = time.monotonic()
    delay = FIRST_DELAY_SECONDS
    while True:
        try:
            return work()
        except Exception as error:
            if not is_transient(error):
                raise
            elapsed = time.monotonic() - started
            if elapsed + delay > deadline_seconds:
                raise TransientDatabaseError(f"{type(error).__name__}: {error}") from error
            logger.warning("transient database error, retrying in %.1fs: %s", delay, error)
            sleep(delay)
            delay = min(delay * 2, MAX_DELAY_SECONDS)
