"""The S3 artifact store against a real S3 protocol server (moto's, on loopback): storing small
and multipart objects, ranged reads, verification and its cache, objects replaced in the bucket,
resume copies, deletion, abandoned multipart uploads, and configuration errors."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx
import pytest

from jobs.artifacts import (
    ArtifactDamaged,
    ArtifactMissing,
    ArtifactRecord,
    ArtifactState,
    ArtifactStoreUnavailable,
    StoreOptions,
    artifact_store,
    open_store,
)
from jobs.artifacts.local import LocalArtifactStore
from jobs.artifacts.s3 import MIB, S3ArtifactObject, S3ArtifactStore
from jobs.settings import Settings
from tests.support import S3Server, free_port, s3_objects

CONTENT = bytes(range(256)) * 64  # 16384 bytes, each offset recognisable
# Over the test store's multipart threshold: three parts of 5 MiB (S3's smallest part) or less.
LARGE = os.urandom(12 * MIB)


@pytest.fixture
def store(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> S3ArtifactStore:
    return S3ArtifactStore(
        s3_bucket,
        "ckpt",
        endpoint_url=s3_server.url,
        staging_root=tmp_path / "staging",
        multipart_threshold=5 * MIB,
        multipart_chunksize=5 * MIB,
    )


def write_checkpoint(
    store: S3ArtifactStore, job_id: int, attempt: int, epoch: int, content: bytes = CONTENT
) -> ArtifactRecord:
    """What the worker does: the engine writes into the staging folder, the store uploads."""
    key = store.checkpoint_key(job_id, attempt, epoch)
    path = store.staging_dir(job_id, attempt) / Path(key).name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return store.put(key, path, size_bytes=len(content), sha256=hashlib.sha256(content).hexdigest())


@pytest.mark.parametrize("content", [CONTENT, LARGE, b""], ids=["single", "multipart", "empty"])
def test_put_uploads_checks_and_removes_the_staged_file(
    store: S3ArtifactStore, s3_server: S3Server, content: bytes
) -> None:
    digest = hashlib.sha256(content).hexdigest()
    record = write_checkpoint(store, 7, 2, 5, content)
    assert record == ArtifactRecord("jobs/7/attempt-2/epoch-0005.pt", len(content), digest)
    # The staged file is gone; the object is in the bucket under the prefix, with its sha256.
    assert list(store.staging_dir(7, 2).iterdir()) == []
    assert s3_objects(s3_server, store.bucket) == {f"ckpt/{record.key}": content}
    head = s3_server.client().head_object(Bucket=store.bucket, Key=f"ckpt/{record.key}")
    assert head["Metadata"] == {"sha256": digest}
    if content is LARGE:
        assert head["ETag"].endswith('-3"'), head["ETag"]  # uploaded in three parts
    assert store.state(record.key, size_bytes=len(content), sha256=digest) == ArtifactState.INTACT


def test_a_staged_file_that_is_not_what_was_written_is_not_stored(
    store: S3ArtifactStore, s3_server: S3Server
) -> None:
    source = store.staging_dir(1, 1) / "epoch-0001.pt"
    source.parent.mkdir(parents=True)
    source.write_bytes(CONTENT[:-1] + b"x")
    with pytest.raises(ArtifactDamaged):
        store.put(
            "jobs/1/attempt-1/epoch-0001.pt",
            source,
            size_bytes=len(CONTENT),
            sha256=hashlib.sha256(CONTENT).hexdigest(),
        )
    assert s3_objects(s3_server, store.bucket) == {} and source.exists()


def test_reads_are_ranged_gets_of_the_version_opened(
    store: S3ArtifactStore, s3_server: S3Server
) -> None:
    record = write_checkpoint(store, 1, 1, 1, LARGE)
    with store.open_verified(
        record.key, size_bytes=record.size_bytes, sha256=record.sha256
    ) as opened:
        assert opened.size == len(LARGE)
        assert opened.read(0, 10) == LARGE[:10]
        assert opened.read(5 * MIB - 3, 300) == LARGE[5 * MIB - 3 : 5 * MIB + 297]
        assert opened.read(len(LARGE) - 5, 100) == LARGE[-5:]  # short only at the end
        assert opened.read(len(LARGE), 10) == b""
        opened.read_ahead = 1000  # several windows, each one request
        assert b"".join(opened.chunks(100, 4000)) == LARGE[100:4000]
        # The key rewritten in the bucket: this object refuses to read the new bytes.
        s3_server.client().put_object(
            Bucket=store.bucket, Key=f"ckpt/{record.key}", Body=b"y" * len(LARGE)
        )
        with pytest.raises(ArtifactDamaged, match="rewritten"):
            opened.read(2 * MIB, 10)
    with pytest.raises(ValueError):
        opened.read(0, 1)  # closed


def test_an_object_replaced_in_the_bucket_is_damaged_and_never_served_or_resumed(
    store: S3ArtifactStore, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = write_checkpoint(store, 1, 1, 1)
    older = write_checkpoint(store, 1, 1, 2, CONTENT[::-1])
    reads: list[str] = []
    real_read = S3ArtifactObject.read

    def counted(self: S3ArtifactObject, start: int, length: int) -> bytes:
        reads.append(self.key)
        return real_read(self, start, length)

    monkeypatch.setattr(S3ArtifactObject, "read", counted)

    def state(checked: ArtifactRecord = record) -> ArtifactState:
        return store.state(checked.key, size_bytes=checked.size_bytes, sha256=checked.sha256)

    # Verified when it was stored: served without reading it again.
    assert state() == ArtifactState.INTACT and reads == []
    # Replaced by other bytes of the same size (a new ETag and time): read once, damaged.
    tampered = bytearray(CONTENT)
    tampered[len(CONTENT) // 2] ^= 0x10
    s3_server.client().put_object(
        Bucket=store.bucket,
        Key=f"ckpt/{record.key}",
        Body=bytes(tampered),
        Metadata={"sha256": record.sha256},  # even claiming the recorded digest
    )
    assert state() == ArtifactState.DAMAGED and reads == [record.key]
    with pytest.raises(ArtifactDamaged):
        store.open_verified(record.key, size_bytes=record.size_bytes, sha256=record.sha256)
    assert reads == [record.key]  # the damaged version's digest is remembered too
    with pytest.raises(ArtifactDamaged):
        store.local_file(record)
    assert not (store.staging_root / "resume" / record.key).exists()
    assert list((store.staging_root / "resume" / record.key).parent.iterdir()) == []
    assert store.newest_intact([record, older]) == older
    s3_server.client().delete_object(Bucket=store.bucket, Key=f"ckpt/{older.key}")
    assert state(older) == ArtifactState.MISSING
    assert store.newest_intact([record, older]) is None


def test_local_file_downloads_a_verified_copy_for_resuming(store: S3ArtifactStore) -> None:
    record = write_checkpoint(store, 3, 1, 4, LARGE)
    path = store.local_file(record)
    assert path.read_bytes() == LARGE
    assert path.is_relative_to(store.staging_root)
    store.release_local_file(path)
    assert not path.exists()
    with pytest.raises(ArtifactMissing):
        store.local_file(ArtifactRecord("jobs/3/attempt-1/epoch-0009.pt", 1, "0" * 64))
    with pytest.raises(ArtifactDamaged):
        store.local_file(ArtifactRecord(record.key, record.size_bytes, "0" * 64))


def test_delete_keys_a_whole_job_and_its_incomplete_uploads(
    store: S3ArtifactStore, s3_server: S3Server
) -> None:
    first = write_checkpoint(store, 1, 1, 1)
    second = write_checkpoint(store, 1, 1, 2)
    retry = write_checkpoint(store, 1, 2, 3)
    neighbour = write_checkpoint(store, 2, 1, 1)
    client = s3_server.client()
    client.create_multipart_upload(Bucket=store.bucket, Key=f"ckpt/{store.checkpoint_key(1, 3, 4)}")

    store.delete([first.key, "jobs/1/attempt-1/epoch-0099.pt", "../escape"])
    with pytest.raises(ArtifactMissing):
        store.open(first.key)
    assert store.open(second.key).size == len(CONTENT)

    store.delete_job(1)
    assert set(s3_objects(s3_server, store.bucket)) == {f"ckpt/{neighbour.key}"}
    assert client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []
    for gone in (second, retry):
        assert store.state(gone.key, size_bytes=gone.size_bytes, sha256=gone.sha256) == "missing"
    store.delete_job(1)  # nothing left: not an error


def test_an_interrupted_multipart_upload_is_never_an_object_and_is_aborted(
    store: S3ArtifactStore, s3_server: S3Server
) -> None:
    """What a worker killed mid-upload leaves: parts of an upload that was never completed."""
    client = s3_server.client()
    key = store.checkpoint_key(5, 1, 1)
    upload = client.create_multipart_upload(Bucket=store.bucket, Key=f"ckpt/{key}")
    client.upload_part(
        Bucket=store.bucket,
        Key=f"ckpt/{key}",
        UploadId=upload["UploadId"],
        PartNumber=1,
        Body=LARGE[: 5 * MIB],
    )
    other = client.create_multipart_upload(Bucket=store.bucket, Key="elsewhere/x")
    with pytest.raises(ArtifactMissing):
        store.open(key)
    assert store.state(key, size_bytes=1, sha256="0" * 64) == ArtifactState.MISSING

    assert store.abort_incomplete_uploads(store.job_prefix(6)) == 0  # another job's prefix
    assert store.abort_incomplete_uploads(excluding=store.attempt_prefix(5, 1)) == 0
    assert store.abort_incomplete_uploads() == 1  # only under the store's prefix
    uploads = client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    assert [item["UploadId"] for item in uploads] == [other["UploadId"]]
    assert s3_objects(s3_server, store.bucket, "ckpt/") == {}


def test_a_presigned_download_url_serves_the_bytes(store: S3ArtifactStore) -> None:
    record = write_checkpoint(store, 1, 1, 1)
    url = store.download_url(record.key, expires_seconds=60, filename="job-1-latest.pt")
    assert url is not None
    response = httpx.get(url)
    assert response.status_code == 200 and response.content == CONTENT
    assert 'filename="job-1-latest.pt"' in response.headers["content-disposition"]
    assert LocalArtifactStore(Path("/nonexistent")).download_url("k", expires_seconds=1) is None


def test_the_configured_store_follows_artifact_url(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    settings = Settings(
        var_dir=tmp_path / "var",
        artifact_url=f"s3://{s3_bucket}/some/prefix/",
        s3_endpoint_url=s3_server.url,
    )
    store = artifact_store(settings)
    assert isinstance(store, S3ArtifactStore)
    assert (store.bucket, store.prefix, store.endpoint_url) == (
        s3_bucket,
        "some/prefix",
        s3_server.url,
    )
    assert store.staging_root == (tmp_path / "var" / "staging").resolve()
    assert artifact_store(settings) is store  # one per location: its cache outlives a request
    store.check()
    # A path, or a file URL, is the local directory backend.
    local = artifact_store(Settings(var_dir=tmp_path / "var", artifact_url=str(tmp_path / "a")))
    assert isinstance(local, LocalArtifactStore) and local.root == (tmp_path / "a").resolve()
    default = artifact_store(Settings(var_dir=tmp_path / "var", artifact_url=""))
    assert isinstance(default, LocalArtifactStore)
    assert default.root == (tmp_path / "var" / "artifacts").resolve()


@pytest.mark.parametrize(
    ("url", "endpoint", "message"),
    [
        ("s3://", None, "is not an S3 bucket name"),
        ("s3://Bad_Bucket/x", None, "is not an S3 bucket name"),
        ("s3://user:secret@bucket/x", None, "is not an S3 bucket name"),
        ("s3://bucket/a/../b", None, "segment"),
        ("s3://bucket/x?versioning=1", None, "no query"),
        ("s3://bucket/x", "127.0.0.1:9000", "S3_ENDPOINT_URL"),
    ],
)
def test_a_malformed_url_is_refused_naming_what_is_wrong(
    url: str, endpoint: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        open_store(url, StoreOptions(endpoint_url=endpoint))


def test_a_missing_bucket_or_an_unreachable_server_is_said_at_start_up(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    missing = S3ArtifactStore("no-such-bucket", endpoint_url=s3_server.url, staging_root=tmp_path)
    with pytest.raises(ValueError, match="bucket 'no-such-bucket' does not exist"):
        missing.check()
    nobody = S3ArtifactStore(
        s3_bucket, endpoint_url=f"http://127.0.0.1:{free_port()}", staging_root=tmp_path
    )
    with pytest.raises(ArtifactStoreUnavailable, match="checking the bucket"):
        nobody.check()


def test_stale_staging_files_are_removed(store: S3ArtifactStore) -> None:
    """What a killed worker leaves in its staging folder: removed once older than the limit."""
    staged = store.staging_dir(4, 1) / "epoch-0002.pt"
    staged.parent.mkdir(parents=True)
    staged.write_bytes(CONTENT)
    fresh = store.staging_dir(5, 1) / "epoch-0001.pt"
    fresh.parent.mkdir(parents=True)
    fresh.write_bytes(CONTENT)
    day_ago = staged.stat().st_mtime - 2 * 86400
    os.utime(staged, (day_ago, day_ago))
    assert store.discard_stale_staging(older_than_seconds=86400) == 1
    assert not staged.exists() and not staged.parent.exists() and fresh.exists()


def test_a_listing_asks_the_store_once_for_all_objects_and_reads_none(
    store: S3ArtifactStore, s3_server: S3Server
) -> None:
    """States for a listing from one LIST: missing when not listed, damaged when the size
    differs or this process hashed that version to another sha256, intact otherwise."""
    kept = write_checkpoint(store, 6, 1, 1)
    replaced = write_checkpoint(store, 6, 2, 2, CONTENT[::-1])
    shortened = write_checkpoint(store, 6, 2, 3)
    deleted = write_checkpoint(store, 6, 2, 4)
    client = s3_server.client()
    client.put_object(Bucket=store.bucket, Key=f"ckpt/{replaced.key}", Body=CONTENT)
    client.put_object(Bucket=store.bucket, Key=f"ckpt/{shortened.key}", Body=CONTENT[1:])
    client.delete_object(Bucket=store.bucket, Key=f"ckpt/{deleted.key}")
    assert store.state(replaced.key, size_bytes=replaced.size_bytes, sha256=replaced.sha256) == (
        ArtifactState.DAMAGED
    )  # hashed once, by a download
    requests: list[str] = []
    store.client.meta.events.register(
        "before-call.s3", lambda model, **_: requests.append(model.name)
    )
    records = [kept, replaced, shortened, deleted]
    assert store.listed_states(records) == {
        kept.key: ArtifactState.INTACT,
        replaced.key: ArtifactState.DAMAGED,
        shortened.key: ArtifactState.DAMAGED,
        deleted.key: ArtifactState.MISSING,
    }
    assert requests == ["ListObjectsV2"]


def test_with_a_deadline_a_store_that_does_not_answer_is_unavailable_within_it(
    s3_bucket: str, tmp_path: Path
) -> None:
    """The API's store: one deadline per request, retries included. A server that accepts
    connections and never answers (as a frozen one) costs one try; a refused one is tried
    again while the deadline allows."""
    import socket
    import time

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # the kernel accepts connections that nobody reads from
    refused = free_port()
    try:
        for port in (silent.getsockname()[1], refused):
            store = S3ArtifactStore(
                s3_bucket,
                endpoint_url=f"http://127.0.0.1:{port}",
                staging_root=tmp_path,
                request_deadline_seconds=4.0,
            )
            record = ArtifactRecord("jobs/1/attempt-1/epoch-0001.pt", 1, "x")
            for request in ("open", "listed_states"):
                started = time.monotonic()
                with pytest.raises(ArtifactStoreUnavailable):
                    if request == "open":
                        store.open(record.key)
                    else:
                        store.listed_states([record])
                assert time.monotonic() - started < 4.5, (port, request)
    finally:
        silent.close()


def test_a_killed_attempts_staging_goes_at_once_and_a_new_attempt_clears_the_jobs_older_ones(
    store: S3ArtifactStore,
) -> None:
    """Each attempt marks its staging folder with its process: a folder whose process on this
    machine has exited is removed, with the job's resume copies; this process's own, and an
    unmarked one, stay. A new attempt of a job removes its earlier attempts' folders."""
    import subprocess
    import sys

    dead = store.staging_dir(1, 1)
    marking = (
        "from pathlib import Path; from jobs.artifacts.owners import write_marker; "
        f"write_marker(Path({str(dead)!r}))"
    )
    subprocess.run([sys.executable, "-c", marking], check=True, cwd=Path(__file__).parents[1])
    (dead / "epoch-0002.pt").write_bytes(CONTENT)
    resume_copy = store.staging_root / "resume" / store.checkpoint_key(1, 1, 1)
    resume_copy.parent.mkdir(parents=True)
    resume_copy.write_bytes(CONTENT)
    live = store.prepare_staging(2, 1)
    (live / "epoch-0001.pt").write_bytes(CONTENT)
    unmarked = store.staging_dir(3, 1)
    unmarked.mkdir(parents=True)
    (unmarked / "epoch-0001.pt").write_bytes(CONTENT)

    assert store.discard_dead_staging() == 1
    assert not dead.parent.exists() and not resume_copy.exists()
    assert (live / "epoch-0001.pt").exists() and (unmarked / "epoch-0001.pt").exists()
    assert store.discard_dead_staging() == 0

    assert store.prepare_staging(2, 2) == store.staging_dir(2, 2)
    assert not live.exists() and store.staging_dir(2, 2).is_dir()

    # A live attempt's folder is not the day-old sweep's, however old its mark.
    current = store.staging_dir(2, 2)
    for path in current.iterdir():
        os.utime(path, (0, 0))
    assert store.discard_stale_staging(older_than_seconds=86400) == 0
    assert any(current.iterdir())
