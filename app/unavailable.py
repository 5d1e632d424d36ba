"""503 answers for a backend that is down or does not answer, instead of a 500 or a hang.

A database error at the connection level (refused, timed out, dropped, a locked SQLite file) is
503 `database_unavailable`; a broker connection error is 503 `broker_unavailable`. Both carry
`Retry-After`: the request did nothing and can be sent again. Any other database error is left
to the default handling (a 500: it is a bug, not an outage).

The answer comes within a few seconds because every wait is bounded: see `jobs.db` (connect,
statement and reply timeouts on PostgreSQL, the SQLite busy timeout set here for the API) and
`jobs.queue` (socket timeouts and one publish retry on Redis). An artifact store (an S3 bucket)
that cannot be reached is 503 `artifact_store_unavailable`: each request this process makes to it
has one deadline, retries included (`jobs.artifacts.s3`)."""

from __future__ import annotations

import logging

import kombu.exceptions
import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from jobs.artifacts import ArtifactStoreUnavailable, set_request_deadline
from jobs.db import set_sqlite_busy_timeout
from jobs.retry import TransientDatabaseError, is_transient

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
# A request waits this long for a locked SQLite file, then answers 503 (a worker waits 30 s).
API_SQLITE_BUSY_TIMEOUT_MS = 5_000
# Each request to the artifact store, retries included, then 503 (a worker waits about a minute).
API_ARTIFACT_STORE_DEADLINE_SECONDS = 4.0

BROKER_ERRORS: tuple[type[Exception], ...] = (
    kombu.exceptions.OperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


def is_database_unavailable(error: BaseException) -> bool:
    """A connection-level or operational database error: the database is down, unreachable,
    not answering, or locked, rather than the query being wrong."""
    return isinstance(
        error, (OperationalError, InterfaceError, PoolTimeout, TransientDatabaseError)
    ) or is_transient(error)


def _unavailable(code: str, detail: str) -> JSONResponse:
    return JSONResponse(
        {"error": code, "detail": detail},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _error_name(error: BaseException) -> str:
    original = getattr(error, "orig", None) or error
    return type(original).__name__


async def database_unavailable(_request: Request, error: Exception) -> JSONResponse:
    if not is_database_unavailable(error):
        raise error
    return database_unavailable_response(error)


def database_unavailable_response(error: Exception) -> JSONResponse:
    """The 503 for a database that is down (also before routing: app.auth's token lookup)."""
    logger.warning("database unavailable: %s", error)
    return _unavailable(
        "database_unavailable",
        f"The database is not available right now ({_error_name(error)}); "
        f"try again in {RETRY_AFTER_SECONDS} s.",
    )


async def broker_unavailable(_request: Request, error: Exception) -> JSONResponse:
    logger.warning("broker unavailable: %s", error)
    return _unavailable(
        "broker_unavailable",
        f"The job queue is not available right now ({_error_name(error)}); "
        f"try again in {RETRY_AFTER_SECONDS} s.",
    )


async def artifact_store_unavailable(_request: Request, error: Exception) -> JSONResponse:
    logger.warning("artifact store unavailable: %s", error)
    return _unavailable(
        "artifact_store_unavailable",
        f"The checkpoint store is not available right now; try again in {RETRY_AFTER_SECONDS} s.",
    )


def install(app: FastAPI) -> None:
    """Register the 503 handlers and bound this process's wait for a locked SQLite file and
    for the artifact store."""
    set_sqlite_busy_timeout(API_SQLITE_BUSY_TIMEOUT_MS)
    set_request_deadline(API_ARTIFACT_STORE_DEADLINE_SECONDS)
    for database_error in (DBAPIError, PoolTimeout, TransientDatabaseError):
        app.add_exception_handler(database_error, database_unavailable)
    for broker_error in BROKER_ERRORS:
        app.add_exception_handler(broker_error, broker_unavailable)
    app.add_exception_handler(ArtifactStoreUnavailable, artifact_store_unavailable)
