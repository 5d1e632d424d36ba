"""CPU time the API spends per read request, with nothing else running.

Starts the API (uvicorn) as a real process on a temporary embedded SQLite database, records
`--jobs` finished jobs of `--epochs` epochs each through the worker's lifecycle calls, then sends
`--requests` sequential requests to each read route (cycling over the jobs, on one kept-alive
connection) and prints, per route, the API process's CPU milliseconds per request (from
/proc, Linux) and the wall milliseconds per request. `--http` and `--loop` are handed to
uvicorn, to compare its HTTP parsers and event loops. `--auth` sets what each request carries:
nothing (no API_KEY, no accounts), the API key, or a user's token (looked up by its hash on
every request, jobs.accounts). Only 127.0.0.1 is contacted.

    python -m bench.api_cpu [--requests 1000] [--jobs 20] [--epochs 50]
                            [--http auto|h11|httptools] [--loop auto|asyncio|uvloop]
                            [--auth none|key|token] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.api_latency import (
    _cpu_seconds,
    service_environment,
    this_process_uses,
)

ROUTES = ("/jobs/{id}", "/jobs/{id}/metrics", "/jobs", "/health")
BENCH_KEY = "api-cpu-benchmark-key"


def _get(
    connection: http.client.HTTPConnection, path: str, headers: dict[str, str] | None = None
) -> int:
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    response.read()
    return response.status


def run(
    requests: int,
    jobs: int,
    epochs: int,
    parser: str,
    loop: str,
    workdir: Path,
    auth: str = "none",
) -> dict[str, Any]:
    env = service_environment(workdir)
    if auth != "none":
        env["API_KEY"] = BENCH_KEY
    with this_process_uses(env):
        return _run(requests, jobs, epochs, parser, loop, workdir, env, auth)


def _credentials(connection: http.client.HTTPConnection, auth: str) -> dict[str, str]:
    """The headers each request carries: none, the key, or a new user's token."""
    if auth == "none":
        return {}
    key = {"X-API-Key": BENCH_KEY}
    if auth == "key":
        return key
    connection.request(
        "POST", "/users", json.dumps({"name": "bench"}), {**key, "Content-Type": "application/json"}
    )
    token = json.loads(connection.getresponse().read())["token"]["token"]
    return {"Authorization": f"Bearer {token}"}


def _run(
    requests: int,
    jobs: int,
    epochs: int,
    parser: str,
    loop: str,
    workdir: Path,
    env: dict[str, str],
    auth: str,
) -> dict[str, Any]:
    from jobs import wiring
    from jobs.migrations import upgrade
    from tests.support import drive_job, free_port, start_api

    # The finished jobs are recorded here, as a worker would: its reactions too.
    wiring.connect()
    upgrade()
    port = free_port()
    api = start_api(env, workdir, port, ["--http", parser, "--loop", loop])
    results: dict[str, Any] = {}
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        with contextlib.closing(connection):
            headers = _credentials(connection, auth)
            job_ids = []
            for number in range(jobs):
                body = {"block": ("plain", "residual", "mobile")[number % 3]}
                body["hyperparameters"] = {"epochs": epochs}  # type: ignore[assignment]
                connection.request(
                    "POST",
                    "/jobs",
                    json.dumps(body),
                    {**headers, "Content-Type": "application/json"},
                )
                reply = connection.getresponse()
                job_ids.append(json.loads(reply.read())["id"])
            for job_id in job_ids:
                drive_job(job_id, epochs, finish="succeeded")
            # Recording the jobs outlasts uvicorn's keep-alive: start on a new connection.
            connection.close()
            for route in ROUTES:
                paths = [route.replace("{id}", str(job_id)) for job_id in job_ids]
                for path in paths:  # warm-up: every path once
                    _get(connection, path, headers)
                cpu_before, start = _cpu_seconds(api.pid), time.perf_counter()
                for number in range(requests):
                    status = _get(connection, paths[number % len(paths)], headers)
                    if status != 200:
                        raise SystemExit(f"GET {paths[number % len(paths)]} answered {status}")
                wall = time.perf_counter() - start
                cpu = _cpu_seconds(api.pid) - cpu_before
                results[route] = {
                    "api_cpu_ms_per_request": 1000 * cpu / requests,
                    "wall_ms_per_request": 1000 * wall / requests,
                }
    finally:
        api.stop(timeout=30)
    return {
        "requests": requests,
        "jobs": jobs,
        "epochs": epochs,
        "http": parser,
        "loop": loop,
        "auth": auth,
        "routes": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="Requests per route.")
    parser.add_argument("--jobs", type=int, default=20, help="Finished jobs in the database.")
    parser.add_argument("--epochs", type=int, default=50, help="Epochs of each job.")
    parser.add_argument("--http", choices=("auto", "h11", "httptools"), default="auto")
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    parser.add_argument(
        "--auth",
        choices=("none", "key", "token"),
        default="none",
        help="What each request carries: nothing (no API_KEY), the key, or a user's token.",
    )
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 100_000 or not 1 <= args.jobs <= 1000:
        parser.error("--requests must be 1-100000 and --jobs 1-1000")
    if not 1 <= args.epochs <= 1000:
        parser.error("--epochs must be 1-1000")
    with tempfile.TemporaryDirectory(prefix="api-cpu-") as workdir:
        result = run(
            args.requests, args.jobs, args.epochs, args.http, args.loop, Path(workdir), args.auth
        )
    print(
        f"{result['requests']} sequential requests per route, {result['jobs']} finished jobs "
        f"of {result['epochs']} epochs, uvicorn --http {result['http']} --loop {result['loop']}, "
        f"credentials: {result['auth']}"
    )
    print(f"{'route':<22}{'API CPU ms/request':>20}{'wall ms/request':>18}")
    for route, row in result["routes"].items():
        print(
            f"{route:<22}{row['api_cpu_ms_per_request']:>20.2f}{row['wall_ms_per_request']:>18.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
