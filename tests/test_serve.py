"""`python -m app.serve` (the README's `make run`): the API and its worker start together and
stop together."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
from pathlib import Path

import pytest

from tests.conftest import service_environment
from tests.support import Process, free_port, wait_for

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
