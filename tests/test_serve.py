"""`python -m app.serve` (the README's `make run`): the API and its worker start together and
stop together."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import service_environment
from tests.support import S3_TEST_CREDENTIALS, Process, S3Server, free_port, wait_for

pytestmark = pytest.mark.e2e


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A child that has exited but is not yet reaped is a zombie: gone for this purpose.
    status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return status != "Z"


def _worker_pids(database: Path) -> list[int]:
    if not database.exists():
        return []
    with sqlite3.connect(database) as connection:
        try:
            return [pid for (pid,) in connection.execute("SELECT pid FROM workers")]
        except sqlite3.OperationalError:  # not migrated yet
            return []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_stopping_serve_with_a_signal_stops_its_worker_too(
    tmp_path: Path, dataset_root: Path, signum: signal.Signals
) -> None:
    database = tmp_path / "jobs.sqlite3"
    env = service_environment(tmp_path, f"sqlite:///{database}", dataset_root)
    port = free_port()
    serve = Process(
        [sys.executable, "-m", "app.serve", "--port", str(port)], env, tmp_path / "serve.log"
    )
    worker_pid = 0
    try:
        (worker_pid,) = wait_for(
            lambda: _worker_pids(database),
            timeout=90,
            what="the worker's heartbeat row",
        )
        assert _alive(worker_pid)
        # The signal goes to serve alone, as `kill PID` or a closed terminal would send it, not
        # to its process group.
        os.kill(serve.pid, signum)
        serve.popen.wait(timeout=60)
        assert serve.popen.returncode == 128 + signum, serve.output()
        assert not _alive(worker_pid), f"the worker {worker_pid} outlived serve:\n{serve.output()}"
        # A worker that stops cleanly deletes its heartbeat row; a killed one would leave it.
        assert _worker_pids(database) == [], serve.output()
    finally:
        serve.kill()
        if worker_pid and _alive(worker_pid):
            os.kill(worker_pid, signal.SIGKILL)


@pytest.mark.parametrize(
    "command",
    [
        ["app.serve", "--port", "0"],
        ["uvicorn", "app.main:app", "--port", "0"],
        ["worker"],
    ],
    ids=["serve", "api", "worker"],
)
def test_a_missing_bucket_stops_the_start_in_one_line(
    command: list[str], s3_server: S3Server, tmp_path: Path, dataset_root: Path
) -> None:
    """ARTIFACT_URL naming a bucket that does not exist: each process exits at once, saying so
    in one line, without a traceback."""
    env = service_environment(
        tmp_path,
        f"sqlite:///{tmp_path / 'jobs.sqlite3'}",
        dataset_root,
        ARTIFACT_URL="s3://no-such-bucket/jobs",
        S3_ENDPOINT_URL=s3_server.url,
        **S3_TEST_CREDENTIALS,
    )
    finished = subprocess.run(
        [sys.executable, "-m", *command], env=env, capture_output=True, text=True, timeout=120
    )
    output = finished.stdout + finished.stderr
    assert finished.returncode != 0, output
    assert "Traceback" not in output, output
    problem = [line for line in output.splitlines() if "no-such-bucket" in line]
    assert len(problem) == 1, output
    assert (
        f"cannot start: ARTIFACT_URL: the bucket 'no-such-bucket' does not exist at "
        f"{s3_server.url}; create it (or fix the URL)"
    ) in problem[0], output


def test_a_port_in_use_is_one_line_naming_the_way_out(tmp_path: Path, dataset_root: Path) -> None:
    """Another program on the port: `make run` says so, and how to choose another, before it
    migrates or starts a worker."""
    env = service_environment(tmp_path, f"sqlite:///{tmp_path / 'jobs.sqlite3'}", dataset_root)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        finished = subprocess.run(
            [sys.executable, "-m", "app.serve"],
            env={**env, "PORT": str(port)},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert finished.returncode == 1
    assert finished.stdout == ""
    assert finished.stderr == (
        f"cannot start: 127.0.0.1:{port} is in use; listen on another port with "
        "PORT=<port> make run (or --port)\n"
    )
    assert not (tmp_path / "jobs.sqlite3").exists()
