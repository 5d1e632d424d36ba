"""Database engines and sessions.

One transaction per unit of work, committed in one place (`session_scope`, or the API's
request dependency); the services and the lifecycle functions never commit.

SQLite (the embedded default) runs in WAL mode, where readers never wait for the writer. Write
sessions begin with BEGIN IMMEDIATE (a deferred transaction that later writes could fail at once
with "database is locked" when another connection wrote meanwhile); read sessions use a separate
pool whose transactions stay deferred, so a GET never queues behind a writer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from jobs.settings import get_settings

SQLITE_BUSY_TIMEOUT_MS = 30_000
POSTGRES_CONNECT_TIMEOUT_SECONDS = 5
POSTGRES_STATEMENT_TIMEOUT_MS = 30_000


def _configure_sqlite(engine: Engine, *, write: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's own is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


_ENGINES: dict[tuple[str, bool], Engine] = {}
_SESSIONMAKERS: dict[tuple[str, bool], sessionmaker[Session]] = {}


def _is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def get_engine(url: str | None = None, *, write: bool = True) -> Engine:
    """One engine (connection pool) per URL and process; SQLite has a second one for reads."""
    url = url or get_settings().resolved_database_url
    key = (url, write or not _is_sqlite(url))
    if key not in _ENGINES:
        _ENGINES[key] = _create_engine(url, write=key[1])
    return _ENGINES[key]


def dispose_engines() -> None:
    """Close every pool (tests, and after fork)."""
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()
    _SESSIONMAKERS.clear()


def _create_engine(url: str, *, write: bool) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        )
        _configure_sqlite(engine, write=write)
        return engine
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args = {
            "connect_timeout": POSTGRES_CONNECT_TIMEOUT_SECONDS,
            "options": f"-c statement_timeout={POSTGRES_STATEMENT_TIMEOUT_MS}",
        }
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=20,
        pool_timeout=POSTGRES_CONNECT_TIMEOUT_SECONDS,
        connect_args=connect_args,
    )


def get_sessionmaker(url: str | None = None, *, write: bool = True) -> sessionmaker[Session]:
    url = url or get_settings().resolved_database_url
    key = (url, write)
    if key not in _SESSIONMAKERS:
        _SESSIONMAKERS[key] = sessionmaker(
            bind=get_engine(url, write=write), expire_on_commit=False
        )
    return _SESSIONMAKERS[key]


@contextmanager
def session_scope(url: str | None = None, *, write: bool = True) -> Iterator[Session]:
    """One transaction: committed on success, rolled back on any error. Read-only work passes
    ``write=False`` (on SQLite it then never waits for a writer)."""
    session = get_sessionmaker(url, write=write)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
