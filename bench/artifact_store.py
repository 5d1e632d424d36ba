"""What the artifact store costs a training epoch: local disk against an S3 bucket.

Trains the same job (the engine's real `train`, on a generated CIFAR-100 subset, on the CPU)
once per backend, in alternating rounds, with checkpoints handed to the worker's upload thread
(`worker.uploads.CheckpointUploads`) exactly as the runner does:

- `none`: no checkpoints at all (the reference epoch time);
- `local`: the local-directory store (the file is stored where the engine wrote it);
- `s3`: the S3 store on moto's server on loopback (started here), multipart above 16 MiB.

Per backend it prints the median epoch time, its overhead against `none`, the time the training
loop spent in `on_checkpoint` per checkpoint (what blocks training), and how long after the last
epoch the uploads took to drain; and the CPU time moto's server used per checkpoint received,
which a real deployment spends on another machine. Only 127.0.0.1 is contacted.

    python -m bench.artifact_store [--block plain] [--epochs 4] [--train-per-class 40]
                                   [--rounds 2] [--backends none,local,s3] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def start_s3(root: Path) -> tuple[Any, str]:
    """moto's S3 server on a free port, with a bucket `bench`; (process, URL)."""
    import socket
    import subprocess

    import boto3
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = (root / "moto.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit("moto's S3 server did not start") from None
            time.sleep(0.2)
    boto3.client("s3", endpoint_url=url).create_bucket(Bucket="bench")
    return process, url


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_once(
    backend: str, config: Any, data_dir: Path, root: Path, s3_url: str | None
) -> dict[str, Any]:
    from engine.trainer import train
    from jobs.artifacts import ArtifactRecord, ArtifactStore
    from jobs.artifacts.local import LocalArtifactStore
    from jobs.artifacts.s3 import S3ArtifactStore
    from worker.uploads import CheckpointUploads

    run_root = Path(tempfile.mkdtemp(dir=root))
    store: ArtifactStore | None = None
    if backend == "local":
        store = LocalArtifactStore(run_root / "artifacts")
    elif backend == "s3":
        store = S3ArtifactStore("bench", run_root.name, endpoint_url=s3_url,
                                staging_root=run_root / "staging")  # fmt: skip
    blocking: list[float] = []
    stored_at: list[float] = []
    uploads = None
    if store is not None:

        def record(written: Any, stored: ArtifactRecord) -> None:
            stored_at.append(time.perf_counter())

        uploads = CheckpointUploads(
            store,
            lambda epoch: store.checkpoint_key(1, 1, epoch),
            record,
            timeout_seconds=600,
            name="bench-upload",
        )
        uploads.start()

    def on_checkpoint(written: Any) -> None:
        started = time.perf_counter()
        assert uploads is not None
        uploads.submit(written)
        blocking.append(time.perf_counter() - started)

    result = train(
        config,
        data_dir=data_dir,
        device="cpu",
        checkpoint_dir=store.staging_dir(1, 1) if store is not None else None,
        on_checkpoint=on_checkpoint if store is not None else None,
    )
    trained = time.perf_counter()
    drain = 0.0
    if uploads is not None:
        assert uploads.drain(600) and uploads.failure is None, uploads.failure
        drain = time.perf_counter() - trained
        uploads.close()
    seconds = [item.seconds for item in result.history]
    return {
        "epoch_seconds": seconds,
        "blocking": blocking,
        "drain": drain,
        "checkpoints": len(stored_at),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--block", default="plain", choices=["plain", "residual", "mobile"])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-per-class", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backends", default="none,local,s3")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args(argv)
    backends = [name.strip() for name in args.backends.split(",") if name.strip()]
    for name in backends:
        if name not in ("none", "local", "s3"):
            parser.error(f"unknown backend {name!r}")

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    import torch

    from engine.config import TrainConfig
    from engine.synthetic import generate_cifar

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-artifacts-") as temp:
        root = Path(temp)
        data_dir = root / "data"
        generate_cifar(data_dir, "cifar100", classes=10, train_per_class=args.train_per_class,
                       test_per_class=10, seed=0)  # fmt: skip
        config = TrainConfig.model_validate(
            {"block": args.block, "epochs": args.epochs, "batch_size": 64, "seed": 1,
             "train_samples": 10 * args.train_per_class, "test_samples": 100}
        )  # fmt: skip
        s3_process, s3_url = start_s3(root) if "s3" in backends else (None, None)
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in backends}
        try:
            for round_number in range(args.rounds):
                for name in backends:  # alternating, so drift in the machine's load is shared
                    print(f"round {round_number + 1}/{args.rounds}: {name}", flush=True)
                    server_cpu = _cpu_seconds(s3_process.pid) if s3_process else 0.0
                    run = run_once(name, config, data_dir, root, s3_url)
                    if name == "s3" and s3_process is not None:
                        run["server_cpu"] = _cpu_seconds(s3_process.pid) - server_cpu
                    results[name].append(run)
        finally:
            if s3_process is not None:
                s3_process.terminate()
                s3_process.wait(timeout=30)

    def epochs(name: str) -> list[float]:
        # The first epoch of each run warms up (allocations, caches): left out.
        return [s for run in results[name] for s in run["epoch_seconds"][1:]]

    reference = statistics.median(epochs("none")) if "none" in results else None
    print(f"\n{args.block} block, {args.epochs} epochs x {args.rounds} rounds, CPU, "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip
    header = (
        f"{'backend':8} {'epoch s (median)':>17} {'overhead':>9} "
        f"{'blocking ms/ckpt (median, max)':>31} {'drain s':>8}"
    )
    print(header)
    print("-" * len(header))
    for name in backends:
        median = statistics.median(epochs(name))
        overhead = "" if reference is None or name == "none" else f"{(median / reference - 1):+.1%}"
        blocking = [b * 1000 for run in results[name] for b in run["blocking"]]
        blocked = f"{statistics.median(blocking):.2f}, {max(blocking):.2f}" if blocking else "-"
        drain = statistics.median(run["drain"] for run in results[name])
        print(f"{name:8} {median:17.3f} {overhead:>9} {blocked:>31} {drain:8.2f}")
    if "s3" in results:
        checkpoints = sum(run["checkpoints"] for run in results["s3"])
        server = sum(run.get("server_cpu", 0.0) for run in results["s3"])
        print(
            f"\nthe S3 server (moto, on this machine) used {server / max(checkpoints, 1):.2f} "
            "CPU seconds per checkpoint received; on a deployment its machine is another one"
        )


if __name__ == "__main__":
    main()
