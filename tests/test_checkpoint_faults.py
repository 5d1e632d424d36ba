"""Checkpoint downloads and listings while the bytes or the store misbehave, against a live API:
a file written over during a download, and its answer when the store does not."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from jobs import submission
from jobs.db import session_scope
from jobs.settings import get_settings
from jobs.specs import JobCreate
from tests.support import Process, drive_job, free_port, start_api

pytestmark = pytest.mark.e2e

SPEC = JobCreate(block="mobile", hyperparameters={"epochs": 1}, train_samples=10)
# Far more than the socket buffers between the API and the client hold: while the client reads
# nothing, the API has read only the first few MB of the file.
BIG = 32 * 1024 * 1024


def new_job_with_checkpoint(content: bytes) -> int:
    """A succeeded one-epoch job whose checkpoint holds `content`, in this process's settings."""
    with session_scope() as session:
        job_id = submission.create_job(session, SPEC, settings=get_settings()).job.id
    drive_job(job_id, 1, finish="succeeded", checkpoint=content)
    return job_id


@pytest.fixture
def live(configure, sqlite_url: str, tmp_path: Path) -> Iterator[tuple[httpx.Client, dict]]:  # type: ignore[no-untyped-def]
    """An API under uvicorn on this test's SQLite file and ARTIFACT_DIR."""
    env = configure(sqlite_url)
    port = free_port()
    process: Process = start_api(env, tmp_path, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as api:
            yield api, env
    finally:
        process.stop()


def flip_tail(path: Path) -> None:
    """Write over the last bytes of the file in place, as a process writing to it would."""
    with path.open("r+b") as file:
        file.seek(-64, os.SEEK_END)
        tail = file.read()
        file.seek(-64, os.SEEK_END)
        file.write(bytes(b ^ 0xFF for b in tail))


def read_while_flipping(api: httpx.Client, url: str, path: Path, headers: dict) -> bytes:
    """Start the download, write over the end of the file once its first bytes have arrived,
    then read the rest: the bytes received, or httpx's error for a transfer cut short."""
    with api.stream("GET", url, headers=headers) as response:
        assert response.status_code in (200, 206), response.read()
        chunks = response.iter_raw(256 * 1024)
        received = next(chunks)
        flip_tail(path)
        for chunk in chunks:
            received += chunk
        return received


@pytest.mark.parametrize("headers", [{}, {"Range": "bytes=0-"}], ids=["whole", "range"])
def test_a_file_written_over_during_a_download_never_reaches_the_client_whole(
    live: tuple[httpx.Client, dict], headers: dict
) -> None:
    """The file was checked before the first byte; the bytes that follow are hashed as they are
    sent (a whole download) or the file's identity checked again (a range), and the last chunk
    is held back when they no longer match: the client sees a broken transfer, never a complete
    answer whose bytes differ from the ETag."""
    from jobs.artifacts import artifact_store

    api, _ = live
    content = os.urandom(BIG)
    job_id = new_job_with_checkpoint(content)
    url = f"/jobs/{job_id}/checkpoints/final"
    assert api.get(url).content == content  # verified once: the API remembers its sha256
    store = artifact_store(get_settings())
    path = store.path(store.checkpoint_key(job_id, 1, 1))  # type: ignore[attr-defined]

    with pytest.raises(httpx.RemoteProtocolError):
        received = read_while_flipping(api, url, path, headers)
        # Had the transfer completed, its bytes would still have to be the ETag's.
        assert hashlib.sha256(received).hexdigest() == hashlib.sha256(content).hexdigest()
    damaged = api.get(url)
    assert damaged.status_code == 500 and damaged.json()["error"] == "checkpoint_damaged"


@pytest.fixture
def live_on_s3(  # type: ignore[no-untyped-def]
    configure, sqlite_url: str, private_s3, tmp_path: Path
) -> Iterator[httpx.Client]:
    """An API under uvicorn whose checkpoints are in the bucket `jobs` of a private S3 server."""
    env = configure(
        sqlite_url,
        ARTIFACT_URL="s3://jobs/ckpt",
        S3_ENDPOINT_URL=private_s3.url,
        ARTIFACT_STAGING_DIR=str(tmp_path / "staging"),
    )
    port = free_port()
    process: Process = start_api(env, tmp_path, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=15) as api:
            yield api
    finally:
        process.stop()


def test_checkpoint_routes_answer_503_within_5_s_while_the_store_answers_nothing(
    live_on_s3: httpx.Client, private_s3
) -> None:  # type: ignore[no-untyped-def]
    """Each request to the store has one deadline, retries included (botocore's own three
    tries of 5 + 20 s made these routes hang 20 to 80 s), and the listing asks the store once
    for all the job's objects, not once per checkpoint."""
    import time

    api = live_on_s3
    content = os.urandom(64 * 1024)
    job_id = new_job_with_checkpoint(content)
    listing = f"/jobs/{job_id}/checkpoints"
    url = f"{listing}/final"
    assert [row["state"] for row in api.get(listing).json()] == ["intact"] * 3
    assert api.get(url).content == content

    private_s3.freeze()  # connections are accepted, nothing answers
    try:
        for method, path in (("GET", listing), ("HEAD", url), ("GET", url)):
            started = time.monotonic()
            response = api.request(method, path)
            took = time.monotonic() - started
            assert response.status_code == 503, (method, path, response.status_code)
            assert response.headers["retry-after"] == "5"
            if method == "GET":
                assert response.json()["error"] == "artifact_store_unavailable"
            assert took < 5, (method, path, took)
    finally:
        private_s3.thaw()
    assert api.get(url).content == content
