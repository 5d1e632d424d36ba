"""Shared fixtures. Database tests run on SQLite and PostgreSQL; tests that need PostgreSQL or
Redis skip with a reason when the server is absent, and fail under CI=true."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from jobs import wiring

# The browser fixtures (page, screenshots) for every browser test.
pytest_plugins = ["tests.browser"]

if TYPE_CHECKING:
    from tests.support import S3Server

# The tests change jobs in this process, as the API and the worker do.
wiring.connect()

POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def require_server(name: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if IN_CI:
        pytest.fail(f"{message}; CI needs it (start it before the tests).", pytrace=False)
    pytest.skip(f"{message}: start it to run this test")


# Test tiers, applied to every test by the fixtures it uses: `pure` (no database, no server),
# `db` (a migrated database, in-process), `e2e` (real API/worker/database/broker processes).
# `make test-fast` runs `-m "not e2e"` and starts no server.
SERVER_FIXTURES = {
    "live_api",
    "live_server",
    "cli_api",
    "cli_keyed_api",
    "cli_accounts_api",
    "s3_server",
    "s3_bucket",
    "private_s3",
}
DATABASE_FIXTURES = {
    "database_url",
    "sqlite_url",
    "client",
    "configure",
    "postgres_template",
    "db",
    "empty_database_url",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if item.get_closest_marker("e2e") or fixtures & SERVER_FIXTURES:
            item.add_marker(pytest.mark.e2e)
        elif fixtures & DATABASE_FIXTURES:
            item.add_marker(pytest.mark.db)
        else:
            item.add_marker(pytest.mark.pure)


def _clear_caches() -> None:
    from jobs.db import dispose_engines
    from jobs.queue import get_celery
    from jobs.settings import get_settings

    dispose_engines()
    get_settings.cache_clear()
    get_celery.cache_clear()


@pytest.fixture(scope="session")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated CIFAR-100 (10 classes used) in the official format."""
    from engine.synthetic import generate_cifar

    root = tmp_path_factory.mktemp("data")
    generate_cifar(root, "cifar100", classes=10, train_per_class=20, test_per_class=8, seed=0)
    return root


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A migrated template database: each test process takes one copy of it and empties it
    before each test (_ReusedPostgres)."""
    require_server("PostgreSQL", "127.0.0.1", 5432)
    from jobs.migrations import upgrade

    name = f"cifar_template_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)
    from jobs.db import dispose_engines

    dispose_engines()
    yield name
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _postgres_copy(template: str) -> Iterator[str]:
    name = f"cifar_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        from jobs.db import dispose_engines

        dispose_engines()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


_MIGRATED_VERSION = text("SELECT version_num FROM alembic_version")


class _ReusedPostgres:
    """One copy of the template per test process, emptied before each test that takes it:
    emptying the tables costs a few milliseconds, a new copy and its drop about half a second.
    A copy that cannot be emptied, or whose schema a test changed, is replaced by a new one."""

    def __init__(self, template: str) -> None:
        self.template = template
        self.copies = _postgres_copy(template)
        self.url = next(self.copies)
        self.version = self._version()

    def _version(self) -> str:
        engine = create_engine(self.url, poolclass=NullPool)
        try:
            with engine.connect() as connection:
                return str(connection.execute(_MIGRATED_VERSION).scalar_one())
        finally:
            engine.dispose()

    def _empty(self) -> None:
        engine = create_engine(self.url, poolclass=NullPool)
        try:
            with engine.begin() as connection:
                connection.execute(text("SET LOCAL lock_timeout = '2s'"))
                tables = connection.execute(
                    text(
                        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                        "AND tablename <> 'alembic_version' ORDER BY tablename"
                    )
                ).scalars()
                names = ", ".join(f'"{name}"' for name in tables)
                connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
                if connection.execute(_MIGRATED_VERSION).scalar_one() != self.version:
                    raise RuntimeError("a test changed the schema")
        finally:
            engine.dispose()

    def fresh(self) -> str:
        from jobs.db import dispose_engines

        dispose_engines()
        try:
            self._empty()
        except Exception:  # any failure: start over from the template
            self.copies.close()
            self.copies = _postgres_copy(self.template)
            self.url = next(self.copies)
        return self.url

    def close(self) -> None:
        self.copies.close()


@pytest.fixture(scope="session")
def reused_postgres(postgres_template: str) -> Iterator[_ReusedPostgres]:
    database = _ReusedPostgres(postgres_template)
    yield database
    database.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file; each test gets a copy (copying it is 100 times faster than
    running the migrations)."""
    from jobs.db import dispose_engines
    from jobs.migrations import upgrade

    path = tmp_path_factory.mktemp("sqlite-template") / "jobs.sqlite3"
    upgrade(f"sqlite:///{path}")
    dispose_engines()
    with closing(sqlite3.connect(path)) as connection:
        # Everything in the main file, so that a copy of that file alone is whole.
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


def _sqlite_copy(template: Path, tmp_path: Path) -> str:
    path = tmp_path / "jobs.sqlite3"
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database of each kind."""
    if request.param == "sqlite":
        yield _sqlite_copy(request.getfixturevalue("sqlite_template"), tmp_path)
    else:
        database: _ReusedPostgres = request.getfixturevalue("reused_postgres")
        yield database.fresh()
        from jobs.db import dispose_engines

        dispose_engines()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind, not migrated (for tests of a migration on the rows an
    earlier revision holds)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.sqlite3'}"
        return
    require_server("PostgreSQL", "127.0.0.1", 5432)
    name = f"cifar_empty_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        from jobs.db import dispose_engines

        dispose_engines()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    return _sqlite_copy(sqlite_template, tmp_path)


def require_s3_server_package() -> None:
    """moto's server is a dev requirement: missing, the S3 tests skip, or fail under CI."""
    import importlib.util

    if importlib.util.find_spec("moto") is not None and importlib.util.find_spec("flask"):
        return
    message = "moto[server] is not installed"
    if IN_CI:
        pytest.fail(f"{message}; CI needs it (pip install -r requirements-dev.txt).", pytrace=False)
    pytest.skip(f"{message}: install requirements-dev.txt to run this test")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One S3 protocol server (moto's) for the session; tests take a bucket of their own."""
    require_s3_server_package()
    from tests.support import S3Server, free_port

    server = S3Server(free_port(), tmp_path_factory.mktemp("s3"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new, empty bucket on `s3_server`; this process has the server's credentials."""
    from tests.support import S3_TEST_CREDENTIALS

    for key, value in S3_TEST_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    return s3_server.create_bucket(f"test-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def private_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """An S3 server of this test's own, which it may freeze and thaw, with a bucket `jobs`;
    this process has its credentials."""
    require_s3_server_package()
    from tests.support import S3_TEST_CREDENTIALS, S3Server, free_port

    for key, value in S3_TEST_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    server = S3Server(free_port(), tmp_path)
    try:
        server.create_bucket("jobs")
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url() -> str:
    require_server("Redis", "127.0.0.1", 6379)
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    return REDIS_URL


def service_environment(
    tmp_path: Path,
    database_url: str,
    dataset_root: Path,
    broker_url: str | None = None,
    **extra: str,
) -> dict[str, str]:
    """The settings a service process reads, as environment variables."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CELERY_", "DATABASE_URL", "API_KEY"))
    }
    env.update(
        {
            "VAR_DIR": str(tmp_path / "var"),
            "DATABASE_URL": database_url,
            "DATA_DIR": str(dataset_root),
            "ALLOW_DOWNLOAD": "false",
            "DEVICE": "cpu",
            "HEARTBEAT_SECONDS": "0.5",
            "LEASE_SECONDS": "4",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if broker_url:
        env["CELERY_BROKER_URL"] = broker_url
    env.update(extra)
    return env


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, dataset_root: Path):
    """Point this process's settings at a database (and optional broker and extras)."""

    def apply(database_url: str, broker_url: str | None = None, **extra: str) -> dict[str, str]:
        env = service_environment(tmp_path, database_url, dataset_root, broker_url, **extra)
        for key in ("CELERY_BROKER_URL", "API_KEY"):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            if os.environ.get(key) != value:
                monkeypatch.setenv(key, value)
        _clear_caches()
        return env

    yield apply
    _clear_caches()


@pytest.fixture
def db_settings() -> dict[str, str]:
    """Settings a test module's `db` needs besides the database (override it in the module)."""
    return {}


@pytest.fixture
def db(configure, database_url: str, db_settings: dict[str, str]) -> str:
    """This process configured for a migrated, empty database of each kind."""
    configure(database_url, **db_settings)
    return database_url


# With TEST_API_KEY set, every in-process client's API runs with that API_KEY and sends it: the
# in-process tests then check that the built-in admin may do all a service without accounts
# lets anyone do (`TEST_API_KEY=k make test-fast`).
TEST_API_KEY = os.environ.get("TEST_API_KEY") or None
# For the tests of a service without API_KEY, which TEST_API_KEY would give one.
without_api_key = pytest.mark.skipif(
    TEST_API_KEY is not None, reason="checks a service without API_KEY; TEST_API_KEY sets one"
)


@pytest.fixture
def client(configure, database_url: str):
    """An in-process API client on each database, with the embedded broker (no worker)."""
    from fastapi.testclient import TestClient

    keyed = {} if TEST_API_KEY is None else {"API_KEY": TEST_API_KEY}
    configure(database_url, **keyed)
    from app.main import create_app

    headers = {} if TEST_API_KEY is None else {"X-API-Key": TEST_API_KEY}
    with TestClient(create_app(), headers=headers) as test_client:
        yield test_client


# The API key of `cli_keyed_api`.
CLI_API_KEY = "cli-s3cret"


def _cli_service(
    tmp_path_factory: pytest.TempPathFactory, dataset_root: Path, *, worker: bool, **extra: str
) -> Iterator[str]:
    from jobs.migrations import upgrade
    from tests.support import free_port, start_api, start_worker

    root = tmp_path_factory.mktemp("cli-api")
    database_url = f"sqlite:///{root / 'jobs.sqlite3'}"
    upgrade(database_url)
    env = service_environment(root, database_url, dataset_root, **extra)
    port = free_port()
    api = start_api(env, root, port)
    worker_process = start_worker(env, root) if worker else None
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        if worker_process is not None:
            worker_process.stop()
        api.stop()


@pytest.fixture(scope="module")
def cli_api(tmp_path_factory: pytest.TempPathFactory, dataset_root: Path) -> Iterator[str]:
    """The URL of an API with one worker, on the embedded default, for this module's tests of
    the command line."""
    yield from _cli_service(tmp_path_factory, dataset_root, worker=True)


@pytest.fixture(scope="module")
def cli_keyed_api(tmp_path_factory: pytest.TempPathFactory, dataset_root: Path) -> Iterator[str]:
    """The URL of an API that needs CLI_API_KEY and queues at most 2 jobs, without a worker
    (its jobs stay queued)."""
    yield from _cli_service(
        tmp_path_factory, dataset_root, worker=False, API_KEY=CLI_API_KEY, MAX_QUEUED_JOBS="2"
    )


@pytest.fixture(scope="module")
def cli_accounts_api(tmp_path_factory: pytest.TempPathFactory, dataset_root: Path) -> Iterator[str]:
    """The URL of an API with accounts (API_KEY is CLI_API_KEY, the built-in admin's) and no
    worker (its jobs stay queued)."""
    yield from _cli_service(tmp_path_factory, dataset_root, worker=False, API_KEY=CLI_API_KEY)
