"""Read latency of the API while a job trains, on the embedded SQLite default.

Starts the API (uvicorn) and one worker (`python -m worker`, DEVICE=cpu) as real processes in a
temporary VAR_DIR with a generated dataset, records finished jobs with metrics through the
worker's lifecycle calls, and submits one small training job. Once it has trained an epoch,
every route of every job is fetched once (a service that has been up a while). Then come
`--rounds` rounds of three windows of `--seconds` each:

- quiet: no client (the epoch time alone);
- loaded: `--pollers` clients looping over GET /jobs/{id}, /jobs/{id}/metrics and /jobs plus
  one client fetching /jobs/{id}/plots/loss.png, each waiting `--interval` seconds between
  polls (a dashboard or CLI polling once a second; 0 for clients that never pause);
- control: no client, but a plain busy-loop process using as much CPU as the API and the
  clients used in the loaded window. On a machine where training takes every core, any
  process slows it; the control shows how much of the loaded window's slowdown is that CPU
  share alone, and how much (the difference) is the service's reads getting in the way of the
  worker's writes.

The quiet window comes first in even rounds and last in odd ones, so a drift in machine speed
lands on every kind. Prints each route's latency percentiles, the CPU seconds the API and the
clients used, and the job's median seconds per epoch in each kind of window. Only 127.0.0.1 is
contacted; every loop ends at its deadline.

    python -m bench.api_latency [--seconds 30] [--rounds 3] [--pollers 8] [--interval 1]
                                [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

SEEDED_JOBS = 20
SEEDED_EPOCHS = 50
TRAINING_JOB = {
    "block": "mobile",
    "hyperparameters": {"epochs": 1000, "batch_size": 64},
    "train_samples": 256,
    "test_samples": 64,
    "name": "latency benchmark",
}


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    return {
        "count": len(ordered),
        "p50_ms": at(0.50) * 1000,
        "p95_ms": at(0.95) * 1000,
        "p99_ms": at(0.99) * 1000,
        "max_ms": ordered[-1] * 1000,
    }


def _poll(
    base: str,
    job_ids: list[int],
    deadline: float,
    latencies: dict[str, list[float]],
    errors: list[str],
    lock: threading.Lock,
    offset: int,
    plots: bool,
    interval: float,
) -> None:
    """One client: a round of requests, a pause of `interval` seconds, until the deadline."""
    routes: list[tuple[str, Callable[[int], str]]]
    if plots:
        routes = [("/jobs/{id}/plots/loss.png", lambda job_id: f"/jobs/{job_id}/plots/loss.png")]
    else:
        routes = [
            ("/jobs/{id}", lambda job_id: f"/jobs/{job_id}"),
            ("/jobs/{id}/metrics", lambda job_id: f"/jobs/{job_id}/metrics"),
            ("/jobs", lambda _job_id: "/jobs"),
        ]
    # The standard library's client on one kept-alive connection: the load generator shares
    # the machine with the service, so it should cost as little CPU as a client can.
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    index = offset
    with contextlib.closing(connection):
        while time.monotonic() < deadline:
            job_id = job_ids[index % len(job_ids)]
            index += 1
            for name, path in routes:
                if time.monotonic() >= deadline:
                    break
                start = time.perf_counter()
                try:
                    connection.request("GET", path(job_id))
                    response = connection.getresponse()
                    response.read()
                    status = response.status
                except (OSError, http.client.HTTPException) as error:
                    connection.close()  # the next request opens a new connection
                    status, reason = 0, type(error).__name__
                else:
                    reason = str(status)
                elapsed = time.perf_counter() - start
                with lock:
                    if status == 200:
                        latencies[name].append(elapsed)
                    else:
                        errors.append(f"{name}: {reason}")
            time.sleep(max(0.0, min(interval, deadline - time.monotonic())))


def _poll_window(
    base: str,
    job_ids: list[int],
    seconds: float,
    pollers: int,
    interval: float,
    latencies: dict[str, list[float]],
    errors: list[str],
    lock: threading.Lock,
) -> None:
    """`pollers` JSON clients and one plot client, polling for `seconds`."""
    deadline = time.monotonic() + seconds
    threads = [
        threading.Thread(
            target=_poll,
            args=(base, job_ids, deadline, latencies, errors, lock, n, n == pollers, interval),
        )
        for n in range(pollers + 1)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


BURNER = """
import sys, time
share, seconds = float(sys.argv[1]), float(sys.argv[2])
period = 0.01
end = time.monotonic() + seconds
while time.monotonic() < end:
    start = time.process_time()
    while time.process_time() - start < share * period:
        pass
    time.sleep(period * (1 - share))
"""


def _burn_cpu(share: float, seconds: float) -> None:
    """A plain process that uses `share` of one core for `seconds` (a busy loop run in 10 ms
    periods), touching neither the API nor the database: the control for the polled window."""
    subprocess.run([sys.executable, "-c", BURNER, str(min(share, 1.0)), str(seconds)], check=True)


def _progress(message: str) -> None:
    print(f"[api_latency] {message}", file=sys.stderr, flush=True)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _epoch_seconds(metrics: list[dict[str, Any]], first: int, last: int) -> list[float]:
    return [row["seconds"] for row in metrics if first <= row["epoch"] <= last]


def service_environment(workdir: Path) -> dict[str, str]:
    """The environment of a benchmark's API and worker: the embedded default in `workdir`."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DATABASE_URL"))},
        "VAR_DIR": str(workdir / "var"),
        "DATA_DIR": str(workdir / "data"),
        "ALLOW_DOWNLOAD": "false",
        "DEVICE": "cpu",
        "API_KEY": "",
        "PYTHONUNBUFFERED": "1",
    }


@contextlib.contextmanager
def this_process_uses(env: dict[str, str]) -> Iterator[None]:
    """This process's settings and database engines follow `env` inside the block (the
    benchmark records finished jobs in the service's database), and what they were after it."""
    from jobs.db import dispose_engines
    from jobs.settings import get_settings

    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    get_settings.cache_clear()
    dispose_engines()
    try:
        yield
    finally:
        dispose_engines()
        os.environ.clear()
        os.environ.update(saved)
        get_settings.cache_clear()


def run(
    seconds: float, rounds: int, pollers: int, interval: float, workdir: Path
) -> dict[str, Any]:
    env = service_environment(workdir)
    with this_process_uses(env):
        return _run(seconds, rounds, pollers, interval, workdir, env)


def _run(
    seconds: float,
    rounds: int,
    pollers: int,
    interval: float,
    workdir: Path,
    env: dict[str, str],
) -> dict[str, Any]:
    from engine.synthetic import generate_cifar
    from jobs.migrations import upgrade
    from tests.support import drive_job, free_port, start_api, start_worker, wait_for

    generate_cifar(
        workdir / "data", "cifar100", classes=10, train_per_class=40, test_per_class=10, seed=0
    )
    upgrade()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api = start_api(env, workdir, port)
    worker = None
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            seeded = []
            for number in range(SEEDED_JOBS):
                spec = {"block": ("plain", "residual", "mobile")[number % 3]}
                spec["hyperparameters"] = {"epochs": SEEDED_EPOCHS}  # type: ignore[assignment]
                seeded.append(client.post("/jobs", json=spec).json()["id"])
            for job_id in seeded:
                drive_job(job_id, SEEDED_EPOCHS, finish="succeeded")
            live = client.post("/jobs", json=TRAINING_JOB).json()["id"]
            worker = start_worker(env, workdir, "bench")

            def epochs_done() -> int:
                return int(client.get(f"/jobs/{live}").json()["epochs_done"])

            # The first epoch carries the worker's start-up; both windows begin after it.
            wait_for(lambda: epochs_done() >= 1, timeout=300, what="the first epoch")
            # Steady state, as for a service that has been up a while: every route of every
            # job answered once (a finished job's plot is drawn once per process, then cached).
            for job_id in [*seeded, live]:
                for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/metrics"):
                    client.get(path)
                client.get(f"/jobs/{job_id}/plots/loss.png")
            latencies: dict[str, list[float]] = defaultdict(list)
            errors: list[str] = []
            lock = threading.Lock()
            job_ids = [*seeded, live]
            windows: list[tuple[str, int, int]] = []
            api_cpu = clients_cpu = window_cpu = 0.0
            for round_number in range(rounds):
                # The control window follows the loaded one, whose CPU use it repeats; the
                # quiet window comes first in even rounds and last in odd ones, so a drift in
                # machine speed lands on every kind.
                order = ("quiet", "loaded", "control")
                if round_number % 2:
                    order = ("loaded", "control", "quiet")
                for kind in order:
                    first = epochs_done()
                    _progress(f"round {round_number + 1}/{rounds}: {kind} window, {seconds:g} s")
                    if kind == "quiet":
                        time.sleep(seconds)
                    elif kind == "loaded":
                        api_before = _cpu_seconds(api.pid)
                        clients_before = _cpu_seconds(os.getpid())
                        _poll_window(
                            base, job_ids, seconds, pollers, interval, latencies, errors, lock
                        )
                        api_used = _cpu_seconds(api.pid) - api_before
                        clients_used = _cpu_seconds(os.getpid()) - clients_before
                        api_cpu, clients_cpu = api_cpu + api_used, clients_cpu + clients_used
                        window_cpu = api_used + clients_used
                    else:
                        _burn_cpu(window_cpu / seconds, seconds)
                    windows.append((kind, first, epochs_done()))
            metrics = client.get(f"/jobs/{live}/metrics").json()["metrics"]
            client.post(f"/jobs/{live}/cancel")
    finally:
        for process in (worker, api):
            if process is not None:
                process.stop(timeout=30)
    # An epoch counts for a window when it started and ended inside it.
    per_window = [(kind, _epoch_seconds(metrics, first + 2, last)) for kind, first, last in windows]

    def medians(number: int) -> dict[str, float]:
        """The median seconds per epoch of each window of round `number`."""
        windows_of_round = per_window[3 * number : 3 * number + 3]
        return {kind: statistics.median(times) for kind, times in windows_of_round if times}

    def median_of(kind: str) -> float | None:
        times = [t for window_kind, times in per_window if window_kind == kind for t in times]
        return statistics.median(times) if times else None

    round_ratios = []
    for number in range(rounds):
        by_kind = medians(number)
        if {"quiet", "loaded", "control"} <= by_kind.keys():
            round_ratios.append(
                {
                    "loaded": by_kind["loaded"] / by_kind["quiet"],
                    "control": by_kind["control"] / by_kind["quiet"],
                }
            )
    return {
        "seconds": seconds,
        "rounds": rounds,
        "pollers": pollers,
        "plot_pollers": 1,
        "interval_seconds": interval,
        "seeded_jobs": SEEDED_JOBS,
        "seeded_epochs": SEEDED_EPOCHS,
        "training_job": TRAINING_JOB,
        "latency": {name: _percentiles(samples) for name, samples in latencies.items()},
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
        "windows": [{"kind": kind, "epoch_seconds": times} for kind, times in per_window],
        "epoch_seconds_median": {kind: median_of(kind) for kind in ("quiet", "loaded", "control")},
        "round_ratios": round_ratios,
        "api_cpu_seconds_with_pollers": round(api_cpu, 2),
        "clients_cpu_seconds_with_pollers": round(clients_cpu, 2),
    }


def _print(result: dict[str, Any]) -> None:
    print(
        f"{result['pollers']} JSON pollers + 1 plot poller, {result['interval_seconds']:g} s "
        f"between polls; {result['rounds']} rounds of three {result['seconds']:.0f} s windows "
        f"(quiet, loaded, control); {result['seeded_jobs']} finished jobs of "
        f"{result['seeded_epochs']} epochs + 1 training"
    )
    print(f"{'route':<28}{'requests':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for name, row in sorted(result["latency"].items()):
        print(
            f"{name:<28}{row['count']:>9}{row['p50_ms']:>9.1f}{row['p95_ms']:>9.1f}"
            f"{row['p99_ms']:>9.1f}{row['max_ms']:>9.1f}"
        )
    print(f"failed requests: {result['errors']} {result['error_examples']}")
    polled = result["seconds"] * result["rounds"]
    print(
        f"CPU seconds in the polled windows: API {result['api_cpu_seconds_with_pollers']}, "
        f"clients {result['clients_cpu_seconds_with_pollers']} "
        f"(of {polled * (os.cpu_count() or 1):.0f} on {os.cpu_count()} cores)"
    )
    for window in result["windows"]:
        values = window["epoch_seconds"]
        shown = f"{statistics.median(values):.3f}" if values else "n/a"
        print(
            f"  {window['kind']:<7} window: {len(values):>3} epochs wholly inside, "
            f"median {shown} s per epoch"
        )
    median = result["epoch_seconds_median"]
    if all(median.values()):
        quiet = median["quiet"]
        print(
            f"training, median seconds per epoch: quiet {quiet:.3f}; with the clients "
            f"{median['loaded']:.3f} ({100 * (median['loaded'] / quiet - 1):+.1f} %); with a "
            f"plain process using the same CPU {median['control']:.3f} "
            f"({100 * (median['control'] / quiet - 1):+.1f} %)"
        )
        ratios = "; ".join(
            f"{ratio['loaded']:.3f} / {ratio['control']:.3f}" for ratio in result["round_ratios"]
        )
        print(f"per round, clients / plain CPU load against quiet: {ratios}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="Length of each window.")
    parser.add_argument(
        "--rounds", type=int, default=3, help="Pairs of windows (without, with clients)."
    )
    parser.add_argument("--pollers", type=int, default=8, help="JSON clients (plus one plot).")
    parser.add_argument(
        "--interval", type=float, default=1.0, help="Seconds each client waits between polls."
    )
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= 600 or not 1 <= args.pollers <= 64:
        parser.error("--seconds must be 1-600 and --pollers 1-64")
    if not 1 <= args.rounds <= 20:
        parser.error("--rounds must be 1-20")
    if not 0 <= args.interval <= 60:
        parser.error("--interval must be 0-60")
    with tempfile.TemporaryDirectory(prefix="api-latency-") as workdir:
        result = run(args.seconds, args.rounds, args.pollers, args.interval, Path(workdir))
    _print(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
