"""`python -m app.serve`: migrate, start one worker and the API on the configured (by default
embedded: SQLite + SQLite broker) backends, print the URL, stop both on Ctrl-C."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import subprocess
import sys

import uvicorn

from jobs.artifacts.startup import check_artifact_store
from jobs.db import hide_password
from jobs.migrations import upgrade
from jobs.settings import Settings, get_settings


def _exit_on_signal(signum: int, _frame: object) -> None:
    # uvicorn handles SIGTERM itself while it serves, then raises the signal again once it has
    # shut down; without this the default action would end this process before the workers are
    # stopped, and they would go on running on their own.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--host", default=os.environ.get("HOST", "127.0.0.1"), help="Default: $HOST or 127.0.0.1."
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("PORT", "8000")),
        help="Default: $PORT or 8000.",
    )
    parser.add_argument("--workers", type=int, default=1, help="Worker processes to start.")
    args = parser.parse_args(argv)

    settings = get_settings()
    # Before anything starts, each problem in one line (not once per process, in a traceback).
    if _port_in_use(args.host, args.port):
        print(
            f"cannot start: {args.host}:{args.port} is in use; listen on another port with "
            f"PORT=<port> make run (or --port)",
            file=sys.stderr,
        )
        return 1
    try:
        check_artifact_store(settings)
    except ValueError as error:
        print(f"cannot start: {error}", file=sys.stderr)
        return 1
    upgrade()
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    worker_processes: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(args.workers):
            worker_processes.append(
                subprocess.Popen([sys.executable, "-m", "worker"], start_new_session=True)
            )
        _serve(args.host, args.port, settings)
    finally:
        _stop(worker_processes)
    return 0


def _port_in_use(host: str, port: int) -> bool:
    """Whether another process listens on the address (uvicorn would fail only after the
    migration and the workers had started)."""
    try:
        with socket.create_server((host, port)):
            return False
    except OSError as error:
        return error.errno == errno.EADDRINUSE


def _serve(host: str, port: int, settings: Settings) -> None:
    url = f"http://{host}:{port}"
    print(f"\nCIFAR training jobs: {url}   (API docs: {url}/docs)", flush=True)
    print(
        # Passwords in the URLs are not printed.
        f"database {hide_password(settings.resolved_database_url)} | "
        f"broker {hide_password(settings.resolved_broker_url)} | "
        f"data {settings.data_dir.resolve()} | artifacts {settings.resolved_artifact_dir}\n",
        flush=True,
    )
    uvicorn.run("app.main:app", host=host, port=port, log_level="info")


def _stop(worker_processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each worker (a warm shutdown: a running job is handed back to the queue), and
    SIGKILL the ones still running 30 s later."""
    for process in worker_processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in worker_processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


if __name__ == "__main__":
    raise SystemExit(main())
