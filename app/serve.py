"""`python -m app.serve`: migrate, start one worker and the API on the configured (by default
embedded: SQLite + SQLite broker) backends, print the URL, stop both on Ctrl-C."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

import uvicorn

from jobs.db import hide_password
from jobs.migrations import upgrade
from jobs.settings import get_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--workers", type=int, default=1, help="Worker processes to start.")
    args = parser.parse_args(argv)

    settings = get_settings()
    upgrade()
    worker_processes = [
        subprocess.Popen([sys.executable, "-m", "worker"], start_new_session=True)
        for _ in range(args.workers)
    ]
    url = f"http://{args.host}:{args.port}"
    print(f"\nCIFAR training jobs: {url}   (API docs: {url}/docs)", flush=True)
    print(
        # Passwords in the URLs are not printed.
        f"database {hide_password(settings.resolved_database_url)} | "
        f"broker {hide_password(settings.resolved_broker_url)} | "
        f"data {settings.data_dir.resolve()} | artifacts {settings.resolved_artifact_dir}\n",
        flush=True,
    )
    try:
        uvicorn.run("app.main:app", host=args.host, port=args.port, log_level="info")
    finally:
        for process in worker_processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in worker_processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
