"""Does a crowd of event-stream listeners slow training down? The same short job with no
listener and with `--listeners` clients on GET /jobs/{id}/events, in alternating rounds.

Starts the API (uvicorn) and one worker (`python -m worker`, DEVICE=cpu) as real processes on
the embedded SQLite default in a temporary VAR_DIR with a generated dataset and trains one
warm-up job. Then each round runs the job twice, without listeners and with them (listeners
first in odd rounds, so that a change in machine load lands on both sides). Each time a short
job is queued ahead of it, so that the listeners (asyncio + httpx clients in this process) are
all connected, and have their history, before the measured job starts; each must see every
epoch exactly once and the end. From the job's start to its end it measures: the per-epoch
seconds (as the engine measured them), the CPU seconds of the API process and of the listeners,
and how far apart the listeners received each epoch event. Only 127.0.0.1 is contacted.

    python -m bench.sse_load [--rounds 3] [--listeners 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

JOB = {
    "block": "mobile",
    "hyperparameters": {"epochs": 3, "batch_size": 64},
    "train_samples": 256,
    "test_samples": 64,
    "name": "event stream benchmark",
}
# Trains while the listeners connect, so that they all listen before the measured job starts.
BLOCKER = {
    "block": "mobile",
    "hyperparameters": {"epochs": 1, "batch_size": 64},
    "train_samples": 128,
    "test_samples": 64,
    "name": "event stream benchmark: queue ahead",
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _one_job(client: httpx.Client, api_pid: int, listeners: int) -> dict[str, Any]:
    """Submit a short blocker job and then the measured one, so that the listeners are all
    connected while the measured job still waits; measure from its start to its end."""
    from tests.support import listen_to_events, wait_for

    client.post("/jobs", json=BLOCKER)
    job_id = client.post("/jobs", json=JOB).json()["id"]
    streams: list[list[tuple[float, Any]]] = []
    errors: list[str] = []
    connected = threading.Event()

    def listen() -> None:
        try:
            path = f"/jobs/{job_id}/events"
            base_url = str(client.base_url)
            streams.extend(asyncio.run(listen_to_events(base_url, path, listeners, connected)))
        except Exception as error:
            errors.append(f"{type(error).__name__}: {error}")

    thread = threading.Thread(target=listen)
    if listeners:
        thread.start()
        connected.wait(timeout=120)
    waited_for_listeners = client.get(f"/jobs/{job_id}").json()["status"] == "queued"

    def status_is(*statuses: str) -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        return job if job["status"] in statuses else None

    wait_for(lambda: status_is("running", "succeeded", "failed", "cancelled"), timeout=600,
             interval=0.1, what=f"job {job_id} to start")  # fmt: skip
    api_cpu_before, client_cpu_before = _cpu_seconds(api_pid), time.process_time()
    started = time.monotonic()
    job = wait_for(lambda: status_is("succeeded", "failed", "cancelled"), timeout=1800,
                   interval=0.5, what=f"job {job_id} to end")  # fmt: skip
    wall = time.monotonic() - started
    api_cpu = _cpu_seconds(api_pid) - api_cpu_before
    client_cpu = time.process_time() - client_cpu_before
    if listeners:
        thread.join(timeout=120)
    metrics = client.get(f"/jobs/{job_id}/metrics").json()["metrics"]
    complete = 0
    for stream in streams:
        epochs = [event.json()["epoch"] for _, event in stream if event.event == "epoch"]
        if epochs == [1, 2, 3] and stream[-1][1].event == "end":
            complete += 1
    # How far apart the first and the last listener received each epoch event.
    spreads = []
    for epoch in (1, 2, 3):
        times = [
            received
            for stream in streams
            for received, event in stream
            if event.event == "epoch" and event.json()["epoch"] == epoch
        ]
        if times:
            spreads.append(max(times) - min(times))
    return {
        "job_id": job_id,
        "status": job["status"],
        "listeners": listeners,
        "listeners_connected_before_start": waited_for_listeners,
        "epoch_seconds": [row["seconds"] for row in metrics],
        "job_wall_seconds": wall,
        "api_cpu_seconds": api_cpu,
        "client_cpu_seconds": client_cpu,
        "listeners_complete": complete,
        "listener_errors": errors,
        "epoch_event_spread_ms_max": max(spreads, default=0.0) * 1000,
    }


def run(rounds: int, listeners: int, workdir: Path) -> dict[str, Any]:
    from engine.synthetic import generate_cifar
    from jobs.migrations import upgrade
    from tests.support import free_port, start_api, start_worker

    generate_cifar(
        workdir / "data", "cifar100", classes=10, train_per_class=40, test_per_class=10, seed=0
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DATABASE_URL"))},
        "VAR_DIR": str(workdir / "var"),
        "DATABASE_URL": f"sqlite:///{workdir / 'jobs.sqlite3'}",
        "DATA_DIR": str(workdir / "data"),
        "ALLOW_DOWNLOAD": "false",
        "DEVICE": "cpu",
        "API_KEY": "",
        "PYTHONUNBUFFERED": "1",
    }
    upgrade(env["DATABASE_URL"])
    port = free_port()
    api = start_api(env, workdir, port)
    worker = start_worker(env, workdir, "bench")
    jobs = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            warm_up = _one_job(client, api.pid, 0)  # the worker's imports and first model
            for number in range(rounds):
                order = (0, listeners) if number % 2 == 0 else (listeners, 0)
                for count in order:
                    jobs.append({"round": number + 1, **_one_job(client, api.pid, count)})
    finally:
        worker.stop()
        api.stop()
    return {"rounds": rounds, "listeners": listeners, "job": JOB, "warm_up": warm_up, "jobs": jobs}


def _print(result: dict[str, Any]) -> None:
    print(f"{'round':>5}{'listeners':>10}  {'seconds per epoch':<24}{'mean':>6}{'job s':>7}"
          f"{'API CPU s':>10}{'client CPU s':>13}{'complete':>9}{'spread ms':>10}")  # fmt: skip
    for job in result["jobs"]:
        seconds = job["epoch_seconds"]
        print(
            f"{job['round']:>5}{job['listeners']:>10}  "
            f"{', '.join(f'{value:.2f}' for value in seconds):<24}"
            f"{statistics.mean(seconds):>6.2f}{job['job_wall_seconds']:>7.1f}"
            f"{job['api_cpu_seconds']:>10.2f}{job['client_cpu_seconds']:>13.2f}"
            f"{job['listeners_complete']:>9}{job['epoch_event_spread_ms_max']:>10.0f}"
            + ("" if job["listeners_connected_before_start"] else "  (connected late)")
        )
        for error in job["listener_errors"]:
            print(f"      listener error: {error}")
    for count in sorted({job["listeners"] for job in result["jobs"]}):
        seconds = [s for job in result["jobs"] if job["listeners"] == count
                   for s in job["epoch_seconds"]]  # fmt: skip
        print(
            f"{count} listeners: median {statistics.median(seconds):.2f} s per epoch "
            f"(min {min(seconds):.2f}, max {max(seconds):.2f}, {len(seconds)} epochs)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="Rounds of two jobs each.")
    parser.add_argument("--listeners", type=int, default=200, help="Clients on the stream.")
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 20 or not 1 <= args.listeners <= 1000:
        parser.error("--rounds must be 1-20 and --listeners 1-1000")
    with tempfile.TemporaryDirectory(prefix="sse-load-") as workdir:
        result = run(args.rounds, args.listeners, Path(workdir))
    _print(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
