"""Database engine and sessions. SQLite gets WAL, a busy timeout and write-ahead locking."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from app.config import get_settings

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's own is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):  # type: ignore[no-untyped-def]
        # A deferred transaction that later writes can fail at once with "database is locked"
        # when another connection wrote meanwhile; IMMEDIATE waits for the lock instead.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


_ENGINES: dict[str, Engine] = {}


def get_engine(url: str | None = None) -> Engine:
    """One engine (connection pool) per URL and process."""
    url = url or get_settings().resolved_database_url
    if url not in _ENGINES:
        _ENGINES[url] = _create_engine(url)
    return _ENGINES[url]


def dispose_engines() -> None:
    """Close every pool (tests, and after fork)."""
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()
    _SESSIONMAKERS.clear()


def _create_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        )
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


_SESSIONMAKERS: dict[str, sessionmaker[Session]] = {}


def get_sessionmaker(url: str | None = None) -> sessionmaker[Session]:
    url = url or get_settings().resolved_database_url
    if url not in _SESSIONMAKERS:
        _SESSIONMAKERS[url] = sessionmaker(bind=get_engine(url), expire_on_commit=False)
    return _SESSIONMAKERS[url]


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """One transaction: committed on success, rolled back on any error."""
    session = get_sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
