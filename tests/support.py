"""Helpers for tests that run real processes: the API under uvicorn, Celery workers, Redis."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

if TYPE_CHECKING:
    from jobs.lifecycle import Claim

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    predicate: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    """Poll until predicate returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


class Process:
    """A child process with its output in a log file, shown when a test fails."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.popen = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group: no cleanup, as when a machine dies."""
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)
        self._log.close()

    def stop(self, timeout: float = 20) -> None:
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=30)
        self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


def start_worker(env: dict[str, str], log_dir: Path, name: str = "worker") -> Process:
    return Process(
        [sys.executable, "-m", "worker"], {**env, "WORKER_NAME": name}, log_dir / f"{name}.log"
    )


def start_api(
    env: dict[str, str], log_dir: Path, port: int, uvicorn_args: Sequence[str] = ()
) -> Process:
    """The API under uvicorn on 127.0.0.1:`port`, once it answers /health."""
    process = Process(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            *uvicorn_args,
        ],
        env,
        log_dir / f"api-{port}.log",
    )

    def healthy() -> bool:
        if not process.alive():
            raise AssertionError(f"the API exited:\n{process.output()}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, timeout=60, what="the API to answer /health")
    return process


def start_redis(port: int, log_dir: Path) -> Process:
    process = Process(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        dict(os.environ),
        log_dir / f"redis-{port}.log",
    )

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    wait_for(up, timeout=20, what=f"redis on port {port}")
    return process


def broker_messages(var_dir: Path) -> int:
    """Messages waiting in the embedded SQLite broker under VAR_DIR (0 before the first send)."""
    import sqlite3

    path = var_dir / "broker.sqlite3"
    if not path.exists():
        return 0
    with sqlite3.connect(path, timeout=30) as connection:
        tables = {
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if "kombu_message" not in tables:
            return 0
        return int(connection.execute("SELECT COUNT(*) FROM kombu_message").fetchone()[0])


def epoch_figures(epoch: int) -> dict[str, float]:
    """The metrics drive_job records for an epoch: train_loss 4/e, train_accuracy 0.1e,
    test_accuracy 0.05e."""
    return {
        "epoch": epoch,
        "train_loss": 4.0 / epoch,
        "train_accuracy": 0.1 * epoch,
        "test_loss": 3.0,
        "test_accuracy": 0.05 * epoch,
        "learning_rate": 0.01,
        "seconds": 2.0,
        "images_per_second": 25.0,
    }


def flip_bit_keeping_mtime(path: Path) -> None:
    """Damage a file at rest the way a bad disk or an intruder covering their tracks would: one
    bit in the middle flipped in place (same size, inode and volume), the mtime set back."""
    before = path.stat()
    with path.open("r+b") as file:
        file.seek(before.st_size // 2)
        byte = file.read(1)[0]
        file.seek(before.st_size // 2)
        file.write(bytes([byte ^ 0x10]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    kept = ("st_size", "st_mtime_ns", "st_ino", "st_dev")
    assert [getattr(after, name) for name in kept] == [getattr(before, name) for name in kept]


def drive_job(
    job_id: int,
    epochs: int,
    *,
    finish: str | None = None,
    checkpoint: bytes | None = None,
    checkpoint_epochs: tuple[int, ...] | None = None,
    seconds: dict[int, float] | None = None,
) -> Claim:
    """Take a job through the calls a worker makes (claim, record epochs 1..epochs, each
    checkpointed epoch's file written under ARTIFACT_DIR and recorded, optionally finish), in
    this process's settings. Epoch e has train_loss 4/e, train_accuracy 0.1e, test_accuracy
    0.05e and takes 2 s (or ``seconds[e]``); each checkpointed epoch (default: the last) gets a
    file holding ``checkpoint``."""
    import hashlib

    from jobs.artifacts import artifact_store
    from jobs.db import session_scope
    from jobs.lifecycle import (
        CheckpointRecord,
        claim_job,
        finish_job,
        record_checkpoint,
        record_epoch,
    )
    from jobs.settings import get_settings
    from jobs.tables import JobStatus

    with session_scope() as session:
        claim = claim_job(session, job_id, worker="test-worker", lease_seconds=600)
    assert claim is not None, f"job {job_id} is not claimable"
    store = artifact_store(get_settings())
    checkpointed = (epochs,) if checkpoint_epochs is None else checkpoint_epochs
    for e in range(1, epochs + 1):
        with session_scope() as session:
            figures = {**epoch_figures(e), "seconds": (seconds or {}).get(e, 2.0)}
            record_epoch(session, claim, figures, lease_seconds=600)
        if checkpoint is not None and e in checkpointed:
            content = checkpoint
            key = store.checkpoint_key(job_id, claim.attempt, e)
            path = store.staging_dir(job_id, claim.attempt) / Path(key).name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            stored = store.put(
                key, path, size_bytes=len(content), sha256=hashlib.sha256(content).hexdigest()
            )
            record = CheckpointRecord(
                e, stored.size_bytes, stored.sha256, stored.key, store_url=store.locator
            )
            with session_scope() as session:
                record_checkpoint(session, claim, record)
    if finish:
        with session_scope() as session:
            assert finish_job(session, claim, JobStatus(finish))
    return claim


class PostgresServer:
    """A private PostgreSQL cluster (initdb, then `postgres` in its own process group) that a
    test may stop, freeze (SIGSTOP) and thaw without touching any shared server. As root it runs
    as the `postgres` user, which PostgreSQL requires."""

    def __init__(self, port: int, log_dir: Path) -> None:
        import pwd
        import tempfile

        self.port = port
        self.log_dir = log_dir
        # Not under pytest's tmp_path: the server's user must be able to reach its folder.
        self.root = Path(tempfile.mkdtemp(prefix="cifar-pg-"))
        self._owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        if self._owner is not None:
            os.chown(self.root, self._owner.pw_uid, self._owner.pw_gid)
        self.process: Process | None = None
        subprocess.run(
            self._as_owner(["initdb", "-D", str(self.root / "data"), "-A", "trust", "-U",
                            "postgres", "--no-sync"]),
            check=True,
            capture_output=True,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_owner(self, args: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if self._owner is not None else args

    def start(self) -> None:
        self.process = Process(
            self._as_owner(["postgres", "-D", str(self.root / "data"), "-p", str(self.port),
                            "-k", str(self.root), "-c", "listen_addresses=127.0.0.1",
                            "-c", "fsync=off"]),
            dict(os.environ),
            self.log_dir / f"postgres-{self.port}.log",
        )  # fmt: skip

        def up() -> bool:
            if not self.process or not self.process.alive():
                raise AssertionError("PostgreSQL exited")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                return False

        wait_for(up, timeout=30, what=f"PostgreSQL on port {self.port}")

    def server_pids(self) -> list[int]:
        """The postmaster, then its children (each backend runs in its own session, so a signal
        to the postmaster's process group would not reach them)."""
        postmaster = int((self.root / "data" / "postmaster.pid").read_text().split()[0])
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                children.append(int(stat.parent.name))
        return [postmaster, *children]

    def freeze(self) -> None:
        """SIGSTOP the server and its backends: connections stay open, nothing answers."""
        for pid in self.server_pids():  # the postmaster first: it forks no new backend
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in reversed(self.server_pids()):
            os.kill(pid, signal.SIGCONT)
        # runuser stops itself when its child stops; resume it too.
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Fast shutdown (SIGINT): clients are disconnected, new connections refused."""
        if self.process is None:
            return
        if self.process.alive() and (self.root / "data" / "postmaster.pid").exists():
            self.thaw()
            os.kill(self.server_pids()[0], signal.SIGINT)
        self.process.popen.wait(timeout=30)
        self.process.stop()
        self.process = None

    def remove(self) -> None:
        import shutil

        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def redis_queue_job_ids(url: str, queue: str = "training") -> list[int]:
    """The job ids in the messages waiting in a Redis broker's queue (kombu's JSON envelope)."""
    import base64
    import json

    import redis

    client = redis.Redis.from_url(url)
    # kombu keeps one list per message priority: the queue's name, then name + "\x06\x16" + step.
    lists = [queue, *sorted(client.keys(queue.encode() + b"\x06\x16*"))]
    ids = []
    for raw in (item for name in lists for item in client.lrange(name, 0, -1)):
        envelope = json.loads(raw)
        args = json.loads(base64.b64decode(envelope["body"]))[0]
        ids.append(int(args[0]))
    return ids


def cli_environment(
    url: str | None,
    api_key: str | None = None,
    *,
    config_home: Path | None = None,
    token: str | None = None,
) -> dict[str, str]:
    """The environment for the `cifar-jobs` command: this checkout's cli package wherever it
    runs, the API's URL (None: unset) and key or token, and nothing of the caller's
    CIFAR_JOBS_* settings; its config folder is `config_home`, or one where nothing is stored,
    so that a login on this machine never leaks into a test."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CIFAR_JOBS_")}
    env.pop("COLUMNS", None)
    env.update({"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
    env["XDG_CONFIG_HOME"] = str(config_home or ROOT / "tests" / "no-config-home")
    if url is not None:
        env["CIFAR_JOBS_URL"] = url
    if api_key is not None:
        env["CIFAR_JOBS_API_KEY"] = api_key
    if token is not None:
        env["CIFAR_JOBS_TOKEN"] = token
    return env


def run_cli(
    *args: str,
    url: str | None,
    api_key: str | None = None,
    cwd: Path | None = None,
    timeout: float = 240,
    config_home: Path | None = None,
    token: str | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`python -m cli ARGS` as a separate process (the same code as the `cifar-jobs` script),
    its output captured; a pipe, not a terminal, so it prints plain lines."""
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=cwd or ROOT,
        env=cli_environment(url, api_key, config_home=config_home, token=token),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_one_line_error(result: subprocess.CompletedProcess[str], exit_status: int) -> str:
    """The command failed with this exit status and said why in one line on stderr, without a
    traceback; returns the message."""
    assert result.returncode == exit_status, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("cifar-jobs: ") and result.stderr.count("\n") == 1, (
        result.stderr
    )
    return result.stderr.removeprefix("cifar-jobs: ").strip()


def submitted_id(result: subprocess.CompletedProcess[str], kind: str = "job") -> int:
    """The id in the `<kind> N submitted` line of `cifar-jobs submit`."""
    import re

    found = re.search(rf"^{kind} (\d+) submitted", result.stdout, re.MULTILINE)
    assert found, (result.returncode, result.stdout, result.stderr)
    return int(found.group(1))


def wait_for_status(
    api: httpx.Client, job_id: int, statuses: tuple[str, ...], *, timeout: float = 180
) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job = api.get(f"/jobs/{job_id}").json()
        return job if job["status"] in statuses else None

    return wait_for(done, timeout=timeout, interval=0.5, what=f"job {job_id} to be {statuses}")


def is_keep_alive(event: Any) -> bool:
    """httpx_sse reports a keep-alive comment as an event without data; EventSource dispatches
    no event without data (the HTML standard's rule), so neither do the tests."""
    return not event.data


def read_event_stream(
    client: httpx.Client,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    stop: Callable[[Any], bool] | None = None,
) -> list[Any]:
    """The events (httpx_sse.ServerSentEvent) of a text/event-stream until the server closes it,
    or until `stop` is true of an event received (the client then disconnects)."""
    from httpx_sse import connect_sse

    received = []
    with connect_sse(client, "GET", url, headers=headers or {}) as source:
        assert source.response.status_code == 200, source.response.read()
        for event in source.iter_sse():
            if is_keep_alive(event):
                continue
            received.append(event)
            if stop is not None and stop(event):
                break
    return received


async def listen_to_events(
    base_url: str, path: str, listeners: int, connected: threading.Event
) -> list[list[tuple[float, Any]]]:
    """`listeners` clients of one event stream at once (asyncio + httpx, one connection each),
    each read to the stream's end: per client, (time.monotonic() at receipt, event) for every
    event. `connected` is set once every client has received its first event."""
    import asyncio

    from httpx_sse import aconnect_sse

    waiting = listeners
    limits = httpx.Limits(max_connections=listeners + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:

        async def listen() -> list[tuple[float, Any]]:
            nonlocal waiting
            received = []
            async with aconnect_sse(client, "GET", path) as source:
                async for event in source.aiter_sse():
                    if is_keep_alive(event):
                        continue
                    received.append((time.monotonic(), event))
                    if len(received) == 1:
                        waiting -= 1
                        if waiting == 0:
                            connected.set()
            return received

        return list(await asyncio.gather(*(listen() for _ in range(listeners))))


def epoch_row(epoch: int, accuracy: float = 0.5) -> dict[str, Any]:
    """One epoch's metrics as the trainer reports them."""
    return {
        "epoch": epoch,
        "train_loss": 1.0 / epoch,
        "train_accuracy": 0.4,
        "test_loss": 1.2,
        "test_accuracy": accuracy,
        "learning_rate": 0.01,
        "seconds": 1.0,
        "images_per_second": 10.0,
    }


def add_experiment(job_ids: list[int], name: str = "experiment") -> int:
    """Group existing jobs as one experiment, as if they had been submitted together: the
    experiment row, and its id on the jobs and on the events they have so far (numbered in id
    order for the experiment's stream; and so the kept status counts, made again from the
    rows)."""
    from sqlalchemy import update

    from jobs.db import session_scope
    from jobs.events import number_at_commit
    from jobs.status_counts import recount
    from jobs.tables import Experiment, Job, JobEvent

    with session_scope() as session:
        experiment = Experiment(name=name, tags=[], spec={})
        session.add(experiment)
        session.flush()
        grouped = {"experiment_id": experiment.id}
        session.execute(update(Job).where(Job.id.in_(job_ids)).values(grouped))
        session.execute(update(JobEvent).where(JobEvent.job_id.in_(job_ids)).values(grouped))
        number_at_commit(session, experiment.id)
        recount(session)
        return experiment.id


# Credentials for the S3 test server (moto accepts any); set for the test process and the
# service processes it starts, as the standard AWS variables a deployment would set.
S3_TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class S3Server:
    """moto's S3 server (`python -m moto.server`), a real S3 protocol endpoint on loopback that
    keeps its buckets in memory: a test may freeze it (SIGSTOP: connections stay open, nothing
    answers, its objects are kept) and thaw it."""

    def __init__(self, port: int, log_dir: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.process = Process(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            {**os.environ, **S3_TEST_CREDENTIALS},
            log_dir / f"moto-{port}.log",
        )

        def up() -> bool:
            if not self.process.alive():
                raise AssertionError(f"the S3 server exited:\n{self.process.output()}")
            try:
                return httpx.get(self.url, timeout=2).status_code < 500
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=60, what=f"the S3 server on port {port}")

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.url, **_boto3_credentials())

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def freeze(self) -> None:
        os.killpg(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process.alive():
            self.thaw()
        self.process.kill()


def _boto3_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_TEST_CREDENTIALS["AWS_DEFAULT_REGION"],
    }


def s3_objects(server: S3Server, bucket: str, prefix: str = "") -> dict[str, bytes]:
    """{key: bytes} of every object in the bucket under `prefix`."""
    client = server.client()
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return found


@contextmanager
def statements_of(*, write: bool) -> Iterator[list[str]]:
    """The SQL this process's read (or write) sessions run meanwhile."""
    from sqlalchemy import event

    from jobs.db import get_engine

    seen: list[str] = []

    def record(_connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    engine = get_engine(write=write)
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)
