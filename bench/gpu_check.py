"""The GPU check: engine-vs-naive throughput, the service's epochs, concurrent jobs.

Run by ``bench/gpu_check.sh`` (which installs the service's wheels first). Three steps, each
with its own time budget; a step that fails or runs out of time is recorded as such and the
next one still runs. Results go to ``OUT/gpu-check.json`` (rewritten after every step) and a
short ``OUT/gpu-check.md``. ``--tiny`` (or ``GPU_CHECK_TINY=1``) runs every step at toy size
on the CPU, to check the script itself on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Sizes:
    """How big each step is: the real check on a GPU, or the tiny one on a CPU."""

    device: str
    train_per_class: int
    test_per_class: int
    bench_images: int
    bench_rounds: int
    bench_batch_size: int
    service_epochs: int
    concurrent_train_samples: int
    concurrent_jobs: tuple[int, ...]
    bench_budget_seconds: float
    compile_budget_seconds: float
    service_budget_seconds: float
    concurrency_budget_seconds: float
    compile_backend: str = "inductor"


FULL = Sizes(
    device="cuda",
    train_per_class=500,  # CIFAR-100's size: 50,000 train and 10,000 test images
    test_per_class=100,
    bench_images=6144,
    bench_rounds=3,
    bench_batch_size=128,
    service_epochs=3,
    concurrent_train_samples=10_000,
    concurrent_jobs=(1, 2, 3, 4),
    bench_budget_seconds=90,  # with the data (up to 60 s): at most 7.5 minutes in all
    compile_budget_seconds=120,
    service_budget_seconds=90,
    concurrency_budget_seconds=90,
)
TINY = Sizes(
    device="cpu",
    train_per_class=3,  # 300 train and 100 test images
    test_per_class=1,
    bench_images=32,
    bench_rounds=1,
    bench_batch_size=16,
    service_epochs=1,
    concurrent_train_samples=32,
    concurrent_jobs=(1, 2),
    bench_budget_seconds=240,
    compile_budget_seconds=240,
    service_budget_seconds=240,
    concurrency_budget_seconds=300,
    compile_backend="aot_eager",  # inductor's code generation takes minutes on a small CPU
)


class Report:
    """The results so far, written to disk after every change."""

    def __init__(self, out: Path, sizes: Sizes) -> None:
        self.out = out
        self.data: dict[str, Any] = {
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "sizes": sizes.__dict__,
            "steps": {},
        }
        out.mkdir(parents=True, exist_ok=True)

    def step(self, name: str, result: dict[str, Any]) -> None:
        self.data["steps"][name] = result
        self.save()

    def save(self) -> None:
        (self.out / "gpu-check.json").write_text(json.dumps(self.data, indent=2, default=str))
        (self.out / "gpu-check.md").write_text(markdown(self.data))


def run_step(
    report: Report, name: str, budget_seconds: float, body: Callable[[dict[str, Any]], None]
) -> None:
    """Run one step; whatever it recorded in its dict is kept even when it fails."""
    result: dict[str, Any] = {"status": "running", "budget_seconds": budget_seconds}
    start = time.monotonic()
    print(f"== {name} (budget {budget_seconds:.0f} s)", flush=True)
    try:
        body(result)
        result["status"] = result.get("status_override", "ok")
    except Exception as error:
        result["status"] = "failed"
        result["error"] = f"{type(error).__name__}: {error}"
        result["traceback"] = traceback.format_exc(limit=5)
        print(result["traceback"], file=sys.stderr, flush=True)
    result.pop("status_override", None)
    result["seconds"] = round(time.monotonic() - start, 1)
    report.step(name, result)


# -- step 1: throughput -----------------------------------------------------------------------


def bench_step(
    sizes: Sizes, data_dir: Path, compile_mode: str, budget_seconds: float
) -> Callable[[dict[str, Any]], None]:
    """The engine against the naive loop, every block in fp32 and bf16, in a child process
    that is stopped at the budget (rows finished by then are kept)."""

    def body(result: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory(prefix="gpu-check-bench-") as temp_dir:
            json_path = Path(temp_dir) / "rows.json"
            command = [
                sys.executable, "-m", "bench.gpu_check", "_bench",
                "--device", sizes.device, "--compile", compile_mode,
                "--images", str(sizes.bench_images), "--rounds", str(sizes.bench_rounds),
                "--batch-size", str(sizes.bench_batch_size),
                "--data-dir", str(data_dir), "--json", str(json_path),
                "--compile-backend", sizes.compile_backend,
            ]  # fmt: skip
            completed = _run_with_budget(command, budget_seconds)
            result["returncode"] = completed
            if json_path.exists():
                result.update(json.loads(json_path.read_text()))
            if completed != 0:
                result["status_override"] = "timed out" if completed is None else "failed"

    return body


def _bench_child(argv: list[str]) -> int:
    """In the child: run the benchmark, rewriting the JSON after every finished row."""
    import torch

    from bench.train_throughput import environment, format_row, run_benchmark
    from engine import trainer

    parser = argparse.ArgumentParser()
    parser.add_argument("--device")
    parser.add_argument("--compile", choices=["off", "on"])
    parser.add_argument("--images", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--compile-backend", default="inductor")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    trainer._COMPILE_BACKEND = args.compile_backend
    results: dict[str, Any] = {
        "environment": environment(device),
        "compile_backend": args.compile_backend,
        "rows": [],
    }

    def record(row: Any) -> None:
        print(format_row(row), flush=True)
        results["rows"].append(row.summary())
        args.json.write_text(json.dumps(results, indent=2))

    args.json.write_text(json.dumps(results, indent=2))
    for block in ("plain", "residual", "mobile"):
        run_benchmark(
            device=device,
            blocks=[block],
            precisions=["fp32", "bf16"],
            compile_modes=[args.compile == "on"],
            images=args.images,
            rounds=args.rounds,
            batch_size=args.batch_size,
            data_dir=args.data_dir,
            report=record,
        )
    return 0


def _run_with_budget(command: list[str], budget_seconds: float) -> int | None:
    """The command's exit status, or None when it ran past the budget and was stopped."""
    process = subprocess.Popen(command, cwd=ROOT, start_new_session=True)
    try:
        return process.wait(timeout=budget_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return None


# -- steps 2 and 3: the service ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _descendants(pid: int) -> list[int]:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    found = [int(child) for child in children]
    for child in list(found):
        found.extend(_descendants(child))
    return found


class Service:
    """``python -m app.serve``: the API and its worker(s) on the embedded SQLite default."""

    def __init__(
        self,
        var_dir: Path,
        data_dir: Path,
        device: str,
        *,
        concurrency: int = 1,
    ) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "VAR_DIR": str(var_dir),
            "DATA_DIR": str(data_dir),
            "DEVICE": device,
            "ALLOW_DOWNLOAD": "false",
            "MAX_QUEUED_JOBS": "1000",
            "WORKER_CONCURRENCY": str(concurrency),
        }
        var_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = var_dir / "serve.log"
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.serve",
                "--port",
                str(self.port),
            ],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the service did not answer within {timeout:.0f} s")

    def submit(self, spec: dict[str, Any]) -> int:
        import httpx

        response = httpx.post(f"{self.url}/jobs", json=spec, timeout=30)
        response.raise_for_status()
        return int(response.json()["id"])

    def job(self, job_id: int) -> dict[str, Any]:
        import httpx

        response = httpx.get(f"{self.url}/jobs/{job_id}", timeout=30)
        response.raise_for_status()
        job: dict[str, Any] = response.json()
        return job

    def metrics(self, job_id: int) -> dict[str, Any]:
        import httpx

        response = httpx.get(f"{self.url}/jobs/{job_id}/metrics", timeout=30)
        response.raise_for_status()
        metrics: dict[str, Any] = response.json()
        return metrics

    def wait_finished(self, job_ids: list[int], deadline: float) -> dict[int, dict[str, Any]]:
        jobs: dict[int, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            jobs = {job_id: self.job(job_id) for job_id in job_ids}
            if all(job["ended"] for job in jobs.values()):
                return jobs
            time.sleep(1)
        return jobs

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM the server (it stops its workers), then SIGKILL whatever is left."""
        family = _descendants(self.process.pid)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._log.close()


def _engine_epoch_seconds(config: dict[str, Any], data_dir: Path, device: str) -> list[float]:
    """Seconds per epoch of the same spec trained by the engine directly, in a child process."""
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from engine.config import TrainConfig\n"
        "from engine.trainer import train\n"
        "config = TrainConfig.model_validate_json(sys.argv[1])\n"
        "result = train(config, data_dir=Path(sys.argv[2]), device=sys.argv[3])\n"
        "print(json.dumps([m.seconds for m in result.history]))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, json.dumps(config), str(data_dir), device],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    seconds: list[float] = json.loads(completed.stdout.strip().splitlines()[-1])
    return seconds


def service_step(
    sizes: Sizes, data_dir: Path, work_dir: Path, budget_seconds: float
) -> Callable[[dict[str, Any]], None]:
    """A plain job over HTTP; its per-epoch seconds beside the engine's own."""

    def body(result: dict[str, Any]) -> None:
        deadline = time.monotonic() + budget_seconds
        spec = {"block": "plain", "hyperparameters": {"epochs": sizes.service_epochs}}
        result["spec"] = spec
        service = Service(work_dir / "service", data_dir, sizes.device)
        try:
            service.wait_ready(timeout=60)
            job_id = service.submit(spec)
            jobs = service.wait_finished([job_id], deadline)
            job = jobs[job_id]
            result["job_status"] = job["status"]
            result["job_error"] = job.get("error")
            metrics = service.metrics(job_id)["metrics"]
            result["service_epoch_seconds"] = [row["seconds"] for row in metrics]
            if job["status"] != "succeeded":
                result["status_override"] = f"job {job['status']}"
                result["service_log"] = service.log_tail()
                return
        finally:
            service.stop()
        config = {"block": "plain", "epochs": sizes.service_epochs}
        result["engine_epoch_seconds"] = _engine_epoch_seconds(config, data_dir, sizes.device)

    return body


def _overlap_seconds(jobs: list[dict[str, Any]]) -> float:
    """Seconds during which at least two of the jobs were running at once."""
    spans = []
    for job in jobs:
        if job.get("started_at") and job.get("finished_at"):
            spans.append(
                (
                    datetime.fromisoformat(job["started_at"]).timestamp(),
                    datetime.fromisoformat(job["finished_at"]).timestamp(),
                )
            )
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running, overlap, last = 0, 0.0, 0.0
    for moment, change in events:
        if running >= 2:
            overlap += moment - last
        running += change
        last = moment
    return overlap


def concurrency_step(
    sizes: Sizes, data_dir: Path, work_dir: Path, budget_seconds: float
) -> Callable[[dict[str, Any]], None]:
    """N one-epoch jobs at once for each N: total training images/s of the service."""

    def body(result: dict[str, Any]) -> None:
        result["mode"] = "WORKER_CONCURRENCY=N"
        result["runs"] = runs = []
        step_deadline = time.monotonic() + budget_seconds
        for count in sizes.concurrent_jobs:
            if time.monotonic() > step_deadline - 10:
                result["status_override"] = "timed out"
                break
            run: dict[str, Any] = {"jobs": count}
            runs.append(run)
            service = Service(
                work_dir / f"concurrent-{count}",
                data_dir,
                sizes.device,
                concurrency=count,
            )
            try:
                service.wait_ready(timeout=60)
                spec = {
                    "block": "plain",
                    "hyperparameters": {"epochs": 1},
                    "train_samples": sizes.concurrent_train_samples,
                    "test_samples": 1000,
                }
                start = time.monotonic()
                job_ids = [service.submit({**spec, "name": f"c{index}"}) for index in range(count)]
                jobs = list(service.wait_finished(job_ids, step_deadline).values())
                wall = time.monotonic() - start
                run["statuses"] = [job["status"] for job in jobs]
                run["wall_seconds"] = round(wall, 2)
                done = sum(job["status"] == "succeeded" for job in jobs)
                run["train_images_per_second"] = round(
                    done * sizes.concurrent_train_samples / wall, 1
                )
                run["overlap_seconds"] = round(_overlap_seconds(jobs), 2)
                run["ran_concurrently"] = count == 1 or run["overlap_seconds"] > 0
                if done != count:
                    run["service_log"] = service.log_tail()
                    result["status_override"] = "jobs failed"
            finally:
                service.stop()
        if any(not run.get("ran_concurrently", True) for run in runs):
            result["note"] = "WORKER_CONCURRENCY is accepted but the jobs ran one at a time"

    return body


# -- report -----------------------------------------------------------------------------------


def markdown(data: dict[str, Any]) -> str:
    lines = [f"# GPU check, {data['started']}", ""]
    steps = data["steps"]
    for name in ("throughput", "throughput_compiled"):
        step = steps.get(name)
        if step is None:
            continue
        env = step.get("environment", {})
        machine = env.get("gpu", env.get("cpu"))
        lines += [
            f"## {name} ({step['status']}, {step['seconds']} s) on {machine}",
            "",
            "| block | precision | compile | naive img/s | engine img/s | ratio min/median/max "
            "| first step s |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in step.get("rows", []):
            first = row["first_step_seconds"]
            lines.append(
                f"| {row['block']} | {row['precision']} | {'on' if row['compile'] else 'off'} "
                f"| {row['naive_images_per_second']:.0f} | {row['engine_images_per_second']:.0f} "
                f"| {row['ratio_min']:.2f} / {row['ratio_median']:.2f} / {row['ratio_max']:.2f} "
                f"| {'-' if first is None else f'{first:.1f}'} |"
            )
        if "error" in step:
            lines.append(f"\nerror: {step['error']}")
        lines.append("")
    service = steps.get("service")
    if service is not None:
        lines += [f"## service: one plain job ({service['status']}, {service['seconds']} s)", ""]
        lines += [
            "| epoch | job seconds (GET /jobs/{id}/metrics) | engine seconds |",
            "|---|---|---|",
        ]
        job_seconds = service.get("service_epoch_seconds", [])
        engine_seconds = service.get("engine_epoch_seconds", [])
        for epoch in range(max(len(job_seconds), len(engine_seconds))):
            job = f"{job_seconds[epoch]:.2f}" if epoch < len(job_seconds) else "-"
            engine = f"{engine_seconds[epoch]:.2f}" if epoch < len(engine_seconds) else "-"
            lines.append(f"| {epoch + 1} | {job} | {engine} |")
        for key in ("job_status", "job_error", "error"):
            if service.get(key):
                lines.append(f"\n{key}: {service[key]}")
        lines.append("")
    concurrency = steps.get("concurrency")
    if concurrency is not None:
        lines += [
            f"## concurrent jobs, {concurrency.get('mode')} ({concurrency['status']}, "
            f"{concurrency['seconds']} s)",
            "",
            "| jobs | succeeded | wall s | train img/s | seconds with 2+ running |",
            "|---|---|---|---|---|",
        ]
        for run in concurrency.get("runs", []):
            statuses = run.get("statuses", [])
            lines.append(
                f"| {run['jobs']} | {statuses.count('succeeded')}/{run['jobs']} "
                f"| {run.get('wall_seconds', '-')} | {run.get('train_images_per_second', '-')} "
                f"| {run.get('overlap_seconds', '-')} |"
            )
        for key in ("note", "error"):
            if concurrency.get(key):
                lines.append(f"\n{key}: {concurrency[key]}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_bench"]:
        return _bench_child(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__)
    parser.add_argument(
        "--tiny", action="store_true", default=bool(os.environ.get("GPU_CHECK_TINY"))
    )
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-check-out"))
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args(argv)
    sizes = TINY if args.tiny else FULL
    report = Report(args.out, sizes)
    print(f"GPU check ({'tiny, CPU' if args.tiny else 'full'}); results in {args.out}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-", dir=args.work_dir) as temp_dir:
        work_dir = Path(temp_dir)
        data_dir = work_dir / "data"

        def generate(result: dict[str, Any]) -> None:
            from engine.synthetic import generate_cifar

            generate_cifar(
                data_dir,
                "cifar100",
                train_per_class=sizes.train_per_class,
                test_per_class=sizes.test_per_class,
            )
            result["train_images"] = sizes.train_per_class * 100
            result["test_images"] = sizes.test_per_class * 100

        run_step(report, "data", 60, generate)
        run_step(
            report,
            "throughput",
            sizes.bench_budget_seconds,
            bench_step(sizes, data_dir, "off", sizes.bench_budget_seconds),
        )
        run_step(
            report,
            "throughput_compiled",
            sizes.compile_budget_seconds,
            bench_step(sizes, data_dir, "on", sizes.compile_budget_seconds),
        )
        run_step(
            report,
            "service",
            sizes.service_budget_seconds,
            service_step(sizes, data_dir, work_dir, sizes.service_budget_seconds),
        )
        run_step(
            report,
            "concurrency",
            sizes.concurrency_budget_seconds,
            concurrency_step(sizes, data_dir, work_dir, sizes.concurrency_budget_seconds),
        )
    report.data["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    report.save()
    print((args.out / "gpu-check.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
