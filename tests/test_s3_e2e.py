"""Checkpoints in an S3 bucket with real processes: the API, workers that share no disk (each
its own staging folder and ARTIFACT_DIR), and moto's S3 server on loopback. A job leaves no
checkpoint on local disk and is served byte-exact from the bucket; a worker killed mid-upload
leaves nothing recorded and the job resumes on another worker from the store; training goes on
while the store answers nothing."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import service_environment
from tests.support import (
    Process,
    S3Server,
    run_cli,
    s3_objects,
    start_worker,
    wait_for,
    wait_for_status,
)
from tests.test_reliability import JOB, Service

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PREFIX = "ckpt"


@contextmanager
def s3_service(tmp_path: Path, dataset_root: Path, server: S3Server) -> Iterator[Service]:
    """The API on the bucket `jobs` (no worker yet); its VAR_DIR holds the database and broker,
    which the workers reach, but no artifact."""
    env = service_environment(
        tmp_path,
        f"sqlite:///{tmp_path / 'jobs.sqlite3'}",
        dataset_root,
        ARTIFACT_URL=f"s3://jobs/{PREFIX}",
        S3_ENDPOINT_URL=server.url,
    )
    running = Service(env, tmp_path)
    try:
        yield running
    finally:
        running.close()


def start_s3_worker(svc: Service, machine: Path, name: str, **extra: str) -> Process:
    """A worker as on a machine of its own: its own staging folder and ARTIFACT_DIR."""
    env = {
        **svc.env,
        "ARTIFACT_STAGING_DIR": str(machine / "staging"),
        "ARTIFACT_DIR": str(machine / "artifacts"),
        **extra,
    }
    worker = start_worker(env, svc.log_dir, name=name)
    svc.workers.append(worker)
    return worker


def checkpoint_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*.pt*") if path.is_file())


def test_a_job_on_s3_keeps_nothing_local_and_is_served_byte_exact_from_the_bucket(
    tmp_path: Path, dataset_root: Path, private_s3: S3Server
) -> None:
    with s3_service(tmp_path, dataset_root, private_s3) as svc:
        start_s3_worker(svc, tmp_path / "machine1", "worker1")
        job_id = svc.submit({**JOB, "hyperparameters": {"epochs": 2, "batch_size": 32}})
        job = wait_for_status(svc.api, job_id, ("succeeded", "failed"), timeout=240)
        assert job["status"] == "succeeded", svc.logs()
        assert checkpoint_files(tmp_path) == []  # no machine kept a checkpoint

        objects = s3_objects(private_s3, "jobs", f"{PREFIX}/jobs/{job_id}/")
        listing = {row["name"]: row for row in svc.api.get(f"/jobs/{job_id}/checkpoints").json()}
        final = listing["final"]
        assert final["state"] == "intact" and final["epoch"] == 2
        content = objects[f"{PREFIX}/jobs/{job_id}/attempt-1/epoch-0002.pt"]
        assert hashlib.sha256(content).hexdigest() == final["sha256"]
        assert len(content) == final["size_bytes"]

        whole = svc.api.get(final["url"])
        assert whole.status_code == 200 and whole.content == content
        assert whole.headers["etag"] == f'"{final["sha256"]}"'
        assert whole.headers["content-length"] == str(len(content))
        part = svc.api.get(final["url"], headers={"Range": "bytes=1000-4999"})
        assert part.status_code == 206 and part.content == content[1000:5000]
        assert part.headers["content-range"] == f"bytes 1000-4999/{len(content)}"
        tail = svc.api.get(final["url"], headers={"Range": "bytes=-100"})
        assert tail.status_code == 206 and tail.content == content[-100:]
        head = svc.api.head(final["url"])
        assert head.status_code == 200 and head.headers["content-length"] == str(len(content))
        assert head.content == b""
        cached = svc.api.get(final["url"], headers={"If-None-Match": whole.headers["etag"]})
        assert cached.status_code == 304

        # A presigned redirect: the bytes come straight from the bucket.
        redirect = svc.api.get(final["url"], params={"redirect": "true"})
        assert redirect.status_code == 307 and redirect.headers["etag"] == whole.headers["etag"]
        assert redirect.headers["location"].startswith(private_s3.url)
        assert httpx.get(redirect.headers["location"]).content == content

        # cifar-jobs download, unchanged, verifies what it got against the sha256.
        target = tmp_path / "downloaded.pt"
        result = run_cli(
            "download", str(job_id), "final", "-o", str(target), url=f"http://127.0.0.1:{svc.port}"
        )
        assert result.returncode == 0, result.stderr
        assert target.read_bytes() == content and "verified" in result.stdout

        # The object replaced in the bucket (same size): listed damaged, never served.
        private_s3.client().put_object(
            Bucket="jobs",
            Key=f"{PREFIX}/jobs/{job_id}/attempt-1/epoch-0002.pt",
            Body=bytes(b ^ 0xFF for b in content),
        )
        for response in (
            svc.api.get(final["url"]),
            svc.api.get(final["url"], headers={"Range": "bytes=0-99"}),
            svc.api.head(final["url"]),
            svc.api.get(final["url"], params={"redirect": "true"}),
        ):
            assert response.status_code == 500, response.headers
        damaged = {row["name"]: row for row in svc.api.get(f"/jobs/{job_id}/checkpoints").json()}
        assert damaged["final"]["state"] == "damaged"


def test_killed_mid_upload_nothing_is_recorded_and_another_worker_resumes_from_the_store(
    tmp_path: Path, dataset_root: Path, private_s3: S3Server
) -> None:
    """The plain net's checkpoint (about 90 MB) is uploaded in parts. The worker is killed
    while the upload of epoch 2 is in flight (the store frozen meanwhile, so the kill lands
    mid-upload); the next worker, on another machine, resumes from epoch 1 in the bucket."""
    spec = {
        "block": "plain",
        "hyperparameters": {"epochs": 3, "batch_size": 16, "seed": 5},
        "train_samples": 32,
        "test_samples": 16,
    }
    client = private_s3.client()

    def uploads() -> list[dict]:
        return list(client.list_multipart_uploads(Bucket="jobs").get("Uploads", []))

    with s3_service(tmp_path, dataset_root, private_s3) as svc:
        first = start_s3_worker(svc, tmp_path / "machine1", "worker1")
        job_id = svc.submit(spec)
        wait_for(
            lambda: any(row["epoch"] == 1 for row in svc.api.get(f"/jobs/{job_id}/checkpoints")
                        .json()),
            timeout=300,
            what="epoch 1's checkpoint to be recorded",
        )  # fmt: skip
        epoch2 = f"{PREFIX}/jobs/{job_id}/attempt-1/epoch-0002.pt"
        wait_for(
            lambda: any(item["Key"] == epoch2 for item in uploads()),
            timeout=300,
            interval=0.05,
            what="epoch 2's multipart upload to start",
        )
        private_s3.freeze()
        try:
            first.kill()
        finally:
            private_s3.thaw()
        # Nothing of epoch 2 is an object, nor recorded: only an incomplete upload remains.
        assert epoch2 not in s3_objects(private_s3, "jobs")
        assert [item["Key"] for item in uploads()] == [epoch2]
        recorded = svc.api.get(f"/jobs/{job_id}/checkpoints").json()
        assert {row["epoch"] for row in recorded} == {1}
        assert svc.job(job_id)["status"] == "running"

        second = start_s3_worker(svc, tmp_path / "machine2", "worker2")
        job = wait_for_status(svc.api, job_id, ("succeeded", "failed"), timeout=400)
        assert job["status"] == "succeeded" and job["attempt"] == 2, (job, svc.logs())
        assert [row["epoch"] for row in svc.metrics(job_id)] == [1, 2, 3]
        log = second.output()
        assert f"job {job_id} resuming from {tmp_path / 'machine2' / 'staging'}" in log, log
        assert uploads() == []  # the abandoned upload was aborted
        # Only the killed machine keeps the file it was uploading (the next worker started there
        # removes it); the machine that finished the job keeps nothing.
        assert checkpoint_files(tmp_path / "machine2") == []
        assert [path.name for path in checkpoint_files(tmp_path)] == ["epoch-0002.pt"]
        listing = {row["name"]: row for row in svc.api.get(f"/jobs/{job_id}/checkpoints").json()}
        served = svc.api.get(listing["final"]["url"])
        assert hashlib.sha256(served.content).hexdigest() == listing["final"]["sha256"]
        key = f"{PREFIX}/jobs/{job_id}/attempt-2/epoch-0003.pt"
        assert s3_objects(private_s3, "jobs", key)[key] == served.content


def test_training_goes_on_while_the_store_answers_nothing_and_no_epoch_is_lost(
    tmp_path: Path, dataset_root: Path, private_s3: S3Server
) -> None:
    with s3_service(tmp_path, dataset_root, private_s3) as svc:
        start_s3_worker(svc, tmp_path / "machine1", "worker1")
        job_id = svc.submit({**JOB, "hyperparameters": {"epochs": 4, "batch_size": 32}})
        wait_for(lambda: svc.job(job_id)["epochs_done"] >= 1, timeout=240, what="an epoch")
        private_s3.freeze()
        try:
            frozen_at = svc.job(job_id)["epochs_done"]
            # Epochs go on being trained and recorded with the store down.
            wait_for(
                lambda: svc.job(job_id)["epochs_done"] >= frozen_at + 2,
                timeout=240,
                what="two more epochs with the store down",
            )
            time.sleep(2)
            assert svc.job(job_id)["status"] == "running"  # not succeeded before its upload
        finally:
            private_s3.thaw()
        job = wait_for_status(svc.api, job_id, ("succeeded", "failed"), timeout=240)
        assert job["status"] == "succeeded", svc.logs()
        assert [row["epoch"] for row in svc.metrics(job_id)] == [1, 2, 3, 4]
        listing = {row["name"]: row for row in svc.api.get(f"/jobs/{job_id}/checkpoints").json()}
        assert listing["final"]["epoch"] == 4
        for row in listing.values():
            assert row["state"] == "intact"
            assert hashlib.sha256(svc.api.get(row["url"]).content).hexdigest() == row["sha256"]
        assert checkpoint_files(tmp_path) == []


def test_a_killed_workers_staging_files_are_removed_when_a_worker_starts_on_its_machine(
    tmp_path: Path, dataset_root: Path, private_s3: S3Server
) -> None:
    """The worker is killed with checkpoints waiting in its staging folder (the store frozen,
    so none is uploaded); a worker started on the same machine removes them at once, long
    before the day-old sweep and even before the lease expires, since their owner is gone."""
    machine = tmp_path / "machine1"
    lease = {"LEASE_SECONDS": "60", "HEARTBEAT_SECONDS": "0.5"}
    with s3_service(tmp_path, dataset_root, private_s3) as svc:
        first = start_s3_worker(svc, machine, "worker1", **lease)
        job_id = svc.submit({**JOB, "hyperparameters": {"epochs": 30, "batch_size": 32}})
        staging = machine / "staging" / "jobs" / str(job_id) / "attempt-1"
        wait_for(lambda: svc.job(job_id)["epochs_done"] >= 1, timeout=240, what="an epoch")
        private_s3.freeze()
        try:
            wait_for(
                lambda: len(checkpoint_files(staging)) >= 2,
                timeout=240,
                what="two checkpoints waiting for their upload",
            )
            first.kill()
        finally:
            private_s3.thaw()
        assert checkpoint_files(staging)
        start_s3_worker(svc, machine, "worker2", **lease)
        wait_for(
            lambda: not staging.exists(), timeout=30, what="the killed attempt's staging folder"
        )
        job = svc.job(job_id)
        assert job["status"] == "running" and job["attempt"] == 1  # its lease has not expired
        assert checkpoint_files(machine / "staging") == []
        assert "staging file(s) of attempts whose worker was killed" in svc.logs()
        svc.api.post(f"/jobs/{job_id}/cancel")
