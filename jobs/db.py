"""Database engines and sessions.

One transaction per unit of work, committed in one place (`session_scope`, or the API's
request dependency); the services and the lifecycle functions never commit.

SQLite (the embedded default) runs in WAL mode, where readers never wait for the writer. Write
sessions begin with BEGIN IMMEDIATE (a deferred transaction that later writes could fail at once
with "database is locked" when another connection wrote meanwhile); read sessions use a separate
pool whose transactions stay deferred, so a GET never queues behind a writer.

No call waits on the database for long: PostgreSQL connections give up after
`POSTGRES_CONNECT_TIMEOUT_SECONDS`, statements after `POSTGRES_STATEMENT_TIMEOUT_MS` (the server
cancels them), and a server that stops answering altogether (a frozen process, a dead host, a
partition) after `POSTGRES_REPLY_TIMEOUT_SECONDS`: the connection is then closed and the pool
discards it. A locked SQLite file is waited for `SQLITE_BUSY_TIMEOUT_MS` (30 s, what a worker
recording an epoch can afford); the API sets a shorter wait with `set_sqlite_busy_timeout`.
Migrations use `migration_engine`, which has no statement or reply limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg.abc import PQGen
from psycopg.errors import _WaitTimeout
from sqlalchemy import Engine, create_engine, event, insert, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from jobs.settings import get_settings

SQLITE_BUSY_TIMEOUT_MS = 30_000
POSTGRES_CONNECT_TIMEOUT_SECONDS = 3
POSTGRES_STATEMENT_TIMEOUT_MS = 5_000
# Above the statement timeout, so that a live server's own cancel arrives first.
POSTGRES_REPLY_TIMEOUT_SECONDS = POSTGRES_STATEMENT_TIMEOUT_MS / 1000 + 1
# libpq: probe an idle connection after 10 s, give up after 3 unanswered probes 3 s apart, and
# drop a connection whose sent data stays unacknowledged for 5 s (a dead host, a partition).
POSTGRES_TCP_PARAMETERS: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
    "tcp_user_timeout": 5_000,
}

RV = TypeVar("RV")
_sqlite_busy_timeout_ms = SQLITE_BUSY_TIMEOUT_MS


def set_sqlite_busy_timeout(milliseconds: int) -> None:
    """How long this process's SQLite connections wait for a locked file before failing with
    "database is locked". Applies to connections opened from now on (the pools are reset)."""
    global _sqlite_busy_timeout_ms
    if milliseconds != _sqlite_busy_timeout_ms:
        _sqlite_busy_timeout_ms = milliseconds
        dispose_engines()


class BoundedWaitConnection(psycopg.Connection[Any]):
    """A psycopg connection that stops waiting for a server that does not answer.

    Keepalives and tcp_user_timeout catch a dead host, but not a stopped server process (its
    kernel still acknowledges every packet), and a statement timeout needs a server that runs.
    So every wait on the server is bounded; when it runs out the connection is closed (its state
    is unknown) and SQLAlchemy treats the error as a disconnect."""

    reply_timeout_seconds: float | None = POSTGRES_REPLY_TIMEOUT_SECONDS

    def wait(self, gen: PQGen[RV], interval: float = 0.1, timeout: float | None = None) -> RV:
        if timeout is not None or self.reply_timeout_seconds is None:
            return super().wait(gen, interval, timeout)
        try:
            return super().wait(gen, interval, self.reply_timeout_seconds)
        except _WaitTimeout:
            self.pgconn.finish()
            raise psycopg.OperationalError(
                f"the server did not answer within {self.reply_timeout_seconds:g} s; "
                "connection closed"
            ) from None


def _configure_sqlite(engine: Engine, *, write: bool, migrations: bool = False) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's own is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={_sqlite_busy_timeout_ms}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        # A migration rebuilds a table by copying it and dropping the old one (Alembic's batch
        # mode); with foreign keys enforced, dropping `jobs` would delete every row that
        # references it (ON DELETE CASCADE): metrics, checkpoints, events.
        cursor.execute(f"PRAGMA foreign_keys={'OFF' if migrations else 'ON'}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


_ENGINES: dict[tuple[str, bool], Engine] = {}
_SESSIONMAKERS: dict[tuple[str, bool], sessionmaker[Session]] = {}


def _is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def is_postgresql(url: str) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


def hide_password(url: str) -> str:
    """A database or broker URL to show a person: its password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy reads: show nothing of it
        return "(set)"


def psycopg_connect_arguments(url: str) -> tuple[str, dict[str, Any]]:
    """A libpq connection string and the bounded-wait parameters for a PostgreSQL URL, for a
    connection opened with psycopg itself (outside the pools, e.g. one that LISTENs)."""
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    return conninfo, {
        "connect_timeout": POSTGRES_CONNECT_TIMEOUT_SECONDS,
        **POSTGRES_TCP_PARAMETERS,
    }


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


def _create_engine(url: str, *, write: bool, migrations: bool = False) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": _sqlite_busy_timeout_ms / 1000, "check_same_thread": False},
            **({"poolclass": NullPool} if migrations else {}),
        )
        _configure_sqlite(engine, write=write, migrations=migrations)
        return engine
    connect_args: dict[str, Any] = {}
    postgres = parsed.get_backend_name() == "postgresql"
    if postgres:
        # A migration may rewrite a large table: no statement limit there.
        statement_timeout_ms = 0 if migrations else POSTGRES_STATEMENT_TIMEOUT_MS
        connect_args = {
            "connect_timeout": POSTGRES_CONNECT_TIMEOUT_SECONDS,
            "options": f"-c statement_timeout={statement_timeout_ms}",
            **POSTGRES_TCP_PARAMETERS,
        }
    if migrations:
        engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    else:
        engine = create_engine(
            url,
            pool_pre_ping=True,
            pool_size=10,
            max_overflow=20,
            pool_timeout=POSTGRES_CONNECT_TIMEOUT_SECONDS,
            connect_args=connect_args,
        )
    if postgres and parsed.get_driver_name() == "psycopg" and not migrations:

        @event.listens_for(engine, "do_connect")
        def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
            return BoundedWaitConnection.connect(*cargs, **cparams)

    return engine


@contextmanager
def migration_engine(url: str | None = None) -> Iterator[Engine]:
    """A one-off engine for schema migrations: no statement timeout and no reply limit (an
    ALTER may take long on a large table); still a bounded connect."""
    engine = _create_engine(
        url or get_settings().resolved_database_url, write=True, migrations=True
    )
    try:
        yield engine
    finally:
        engine.dispose()


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


# Planner settings that leave a PostgreSQL plan only the reads of an index in its own order.
_INDEX_ORDER_ONLY = ("enable_sort", "enable_bitmapscan")


@contextmanager
def index_order(session: Session) -> Iterator[None]:
    """Plan the statements inside, on PostgreSQL, as reads of an index in its order that stop
    at their LIMIT, never a sort or a bitmap scan of every row a filter matches. A keyset page
    over an index whose columns are its filters and sort is such a read whatever the data, but
    a planner without statistics takes each filter to match 0.5 % of the rows, and then sorting
    them looks cheaper. The settings last until the block ends (its transaction's if it
    fails, which rolls them back). SQLite plans these reads from the indexes alone."""
    if session.get_bind().dialect.name != "postgresql":
        yield
        return
    settings = ", ".join(f"set_config('{name}', 'off', true)" for name in _INDEX_ORDER_ONLY)
    session.execute(text(f"SELECT {settings}"))
    yield
    for name in _INDEX_ORDER_ONLY:
        session.execute(text(f"RESET {name}"))


def ping_database() -> None:
    """One round trip to the database (readiness); raises when it cannot be reached."""
    with get_engine(write=False).connect() as connection:
        connection.execute(text("SELECT 1"))


def insert_ignoring_duplicates(
    session: Session, table: Any, rows: list[dict[str, Any]], *returning: Any
) -> list[Any]:
    """Insert the rows that do not exist yet; returns the `returning` columns of those inserted."""
    if not rows:
        return []
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        statement: Any = postgresql.insert(table).values(rows).on_conflict_do_nothing()
    elif dialect == "sqlite":
        statement = sqlite.insert(table).values(rows).on_conflict_do_nothing()
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        statement = insert(table).values(rows)
    if not returning:
        session.execute(statement)
        return []
    return list(session.execute(statement.returning(*returning)).all())
