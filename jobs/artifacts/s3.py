"""The S3 backend: objects in a bucket of any S3-compatible server (AWS, Ceph, SeaweedFS, Garage,
R2), for API and worker processes that share no disk (`ARTIFACT_URL=s3://bucket/prefix`,
`S3_ENDPOINT_URL` for a server other than AWS, credentials from the standard AWS environment
variables and files).

The client is boto3: the longest-maintained S3 client for Python, it talks to every
S3-compatible server through an endpoint URL, reads credentials from the standard AWS chain, and
its transfer manager (s3transfer) uploads a large file in parts, several at once, each request
retried with backoff by botocore, and completes or aborts the multipart upload as a unit.
obstore (Rust, with an async API) would be a newer and faster alternative; speed does not
matter here, since an upload runs beside training, and boto3 is what S3-compatible servers test
against.

Writing: the engine writes a checkpoint into a local staging folder (ARTIFACT_STAGING_DIR) and
`put` uploads it (multipart above `multipart_threshold`) with its sha256 as object metadata,
then checks the stored object against the file: its size, and its ETag against the MD5 (or the
multipart MD5 of the same parts) computed in the pass that re-hashed the file. A server whose
ETag is not an MD5 (SSE-KMS, some S3-compatible servers) has the object read back and hashed
instead. Only then is the local file removed and the record returned for the caller to record.
A multipart upload is invisible until it is completed, so a worker killed mid-upload leaves no
object, only an incomplete upload, which `abort_incomplete_uploads` removes.

Reading: `open` is a HEAD (size, ETag, Last-Modified); reads are ranged GETs made conditional on
that ETag (If-Match), so an opened object never mixes the bytes of two versions of its key. The
verification cache is keyed by (endpoint, bucket, key, ETag, size, Last-Modified): rewriting an
object changes its ETag and its time. A listing's states come from one LIST of the job's objects
and the cache, not from a request per object.

Waiting: a worker's client retries each request three times with botocore's backoff (four
tries), each waiting up to 5 s to connect and 20 s for an answer. A process that answers
clients (the API) instead gives each request one deadline with its retries included
(`request_deadline_seconds`): one try of at most 1 + 2 s, and another only while one more
fits, so a store that does not answer is a 503 within the deadline rather than a minute's
hang (a refused connection is retried a few times within it)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, NoCredentialsError
from botocore.exceptions import ConnectionError as StoreConnectionError
from s3transfer.utils import ChunksizeAdjuster

from jobs.artifacts.owners import (
    MARKER_NAME,
    owned_by_the_dead,
    owned_by_the_living,
    write_marker,
)
from jobs.artifacts.store import (
    ArtifactDamaged,
    ArtifactMissing,
    ArtifactObject,
    ArtifactRecord,
    ArtifactState,
    ArtifactStore,
    ArtifactStoreUnavailable,
    StoreOptions,
)

T = TypeVar("T")
MIB = 1024 * 1024
# Bucket names as S3 allows them (3 to 63 lowercase letters, digits, dots and hyphens).
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchUpload"})
# An error code that says the request itself was refused for good, not that the server is down.
_REFUSED_CODES = frozenset({"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"})
# Answers that say the server is busy or failing for now, as botocore's standard retries count.
_BUSY_CODES = frozenset({"SlowDown", "Throttling", "RequestTimeout", "InternalError"})
# One try of a request under a deadline: to connect, then to hear the first byte of an answer.
DEADLINE_CONNECT_SECONDS = 1.0
DEADLINE_READ_SECONDS = 2.0
FIRST_DEADLINE_RETRY_SECONDS = 0.1


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _worth_retrying(error: Exception) -> bool:
    """A connection that failed or timed out, or a server that says it is busy or failing."""
    if isinstance(error, ClientError):
        return _status(error) >= 500 or _code(error) in _BUSY_CODES
    return isinstance(error, StoreConnectionError | HTTPClientError)


class S3ArtifactObject(ArtifactObject):
    """An object as one HEAD saw it. Reads are ranged GETs with If-Match on its ETag: a read
    after the key was rewritten raises ArtifactDamaged instead of returning the new bytes.
    Sequential reads continue one open response (a window of `read_ahead` bytes) rather than
    sending a request per read."""

    read_ahead = 64 * MIB

    def __init__(
        self, store: S3ArtifactStore, key: str, size: int, modified: float, etag: str
    ) -> None:
        super().__init__(key, size, modified)
        self.etag = etag
        self._store = store
        self._lock = threading.Lock()
        self._body: Any = None
        self._at = 0  # the offset the open body reads next
        self._window_end = 0  # where the open body ends (exclusive)
        self._closed = False

    @property
    def identity(self) -> Hashable:
        store = self._store
        return store.object_identity(store.full_key(self.key), self.etag, self.size, self.modified)

    def read(self, start: int, length: int) -> bytes:
        if self._closed:
            raise ValueError(f"{self.key} is closed")
        end = min(self.size, start + max(length, 0))
        parts: list[bytes] = []
        with self._lock:
            while start < end:
                if self._body is None or self._at != start or start >= self._window_end:
                    self._open_window(start, max(end, min(self.size, start + self.read_ahead)))
                want = min(end, self._window_end) - start
                try:
                    chunk = self._body.read(want)
                except Exception as error:  # a dropped connection or a read timeout
                    self._drop_body()
                    raise ArtifactStoreUnavailable(
                        f"reading {self.key} from {self._store.describe()} failed: {error}"
                    ) from error
                if not chunk:
                    self._drop_body()
                    raise ArtifactDamaged(f"{self.key} ended at byte {start} of {self.size}")
                parts.append(chunk)
                start += len(chunk)
                self._at = start
        return b"".join(parts)

    def _open_window(self, start: int, stop: int) -> None:
        self._drop_body()
        store = self._store
        try:
            response = store.within_deadline(
                lambda: store.client.get_object(
                    Bucket=store.bucket,
                    Key=store.full_key(self.key),
                    Range=f"bytes={start}-{stop - 1}",
                    IfMatch=self.etag,
                )
            )
        except ClientError as error:
            if _code(error) == "PreconditionFailed" or _status(error) == 412:
                raise ArtifactDamaged(f"{self.key} was rewritten after it was opened") from error
            if _code(error) in _MISSING_CODES:
                raise ArtifactMissing(f"{self.key} was deleted after it was opened") from error
            if _code(error) == "InvalidRange" or _status(error) == 416:
                raise ArtifactDamaged(f"{self.key} is shorter than {self.size} bytes") from error
            raise store.unavailable(f"reading {self.key}", error) from error
        except BotoCoreError as error:
            raise store.unavailable(f"reading {self.key}", error) from error
        self._body = response["Body"]
        self._at = start
        self._window_end = stop

    def _drop_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            with contextlib.suppress(Exception):
                body.close()

    def close(self) -> None:
        self._closed = True
        with self._lock:
            self._drop_body()


class S3ArtifactStore(ArtifactStore):
    """Objects in `bucket` under `prefix` (keys are `prefix/jobs/7/attempt-2/epoch-0005.pt`);
    checkpoints are written into `staging_root` first and resumed ones downloaded there."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        staging_root: Path,
        multipart_threshold: int = 16 * MIB,
        multipart_chunksize: int = 16 * MIB,
        request_deadline_seconds: float | None = None,
    ) -> None:
        super().__init__()
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.staging_root = Path(staging_root).resolve()
        self.request_deadline_seconds = request_deadline_seconds
        session = boto3.session.Session()
        if request_deadline_seconds is None:
            # botocore's standard retry mode: throttling, 5xx and dropped connections are
            # retried with exponential backoff and jitter; callers retry for longer on top.
            # Bounded waits: a store that does not answer costs a download at most about a
            # minute, and an upload a try of the caller's retry loop.
            # (max_attempts counts the retries: four tries in all.)
            retries: dict[str, Any] = {"mode": "standard", "max_attempts": 3}
            connect_timeout, read_timeout = 5.0, 20.0
        else:
            # One try per botocore call: within_deadline retries while the deadline allows.
            retries = {"mode": "standard", "total_max_attempts": 1}
            connect_timeout, read_timeout = DEADLINE_CONNECT_SECONDS, DEADLINE_READ_SECONDS
        config = Config(
            retries=retries,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=16,
            # No CRC32 of every part on top: each upload is already checked by the MD5 ETag
            # the server computes from what it received and by the sha256 of the staged file,
            # and a third pass over a 90 MB checkpoint costs CPU on both ends while training.
            request_checksum_calculation="when_required",
            # Path-style addressing: S3-compatible servers rarely have a DNS name per bucket.
            s3={"addressing_style": "path"} if endpoint_url else {},
        )
        self.client = session.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=session.region_name or "us-east-1",
            config=config,
        )
        self.transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=4,
        )

    @classmethod
    def from_url(cls, url: str, options: StoreOptions | None = None) -> Self:
        options = options or StoreOptions()
        parts = urlsplit(url)
        if parts.scheme != "s3":
            raise ValueError(f"ARTIFACT_URL {url!r} is not an s3:// URL")
        if not _BUCKET_NAME.fullmatch(parts.netloc) or ".." in parts.netloc:
            raise ValueError(
                f"ARTIFACT_URL {url!r}: {parts.netloc!r} is not an S3 bucket name (3 to 63 "
                "lowercase letters, digits, dots and hyphens); write s3://bucket/prefix"
            )
        if parts.query or parts.fragment:
            raise ValueError(f"ARTIFACT_URL {url!r}: an s3:// URL has no query or fragment")
        prefix = parts.path.strip("/")
        if prefix and any(segment in ("", ".", "..") for segment in prefix.split("/")):
            raise ValueError(f"ARTIFACT_URL {url!r}: the prefix {prefix!r} has an empty, . or "
                             ".. segment")  # fmt: skip
        endpoint = options.endpoint_url
        if endpoint is not None:
            endpoint_parts = urlsplit(endpoint)
            if endpoint_parts.scheme not in ("http", "https") or not endpoint_parts.hostname:
                raise ValueError(
                    f"S3_ENDPOINT_URL {endpoint!r} is not an http:// or https:// URL of a server"
                )
        staging_root = options.staging_root or Path(tempfile.gettempdir()) / "cifar-jobs-staging"
        return cls(
            parts.netloc,
            prefix,
            endpoint_url=endpoint,
            staging_root=staging_root,
            request_deadline_seconds=options.request_deadline_seconds,
        )

    # -- naming ----------------------------------------------------------------------------

    def full_key(self, key: str) -> str:
        """The bucket key of `key`; ArtifactMissing for one that is not a store key."""
        if not key or key.startswith("/") or any(s in ("", ".", "..") for s in key.split("/")):
            raise ArtifactMissing(f"{key!r} is not a key of {self.describe()}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}"
        return f"{where} at {self.endpoint_url}" if self.endpoint_url else where

    def unavailable(self, doing: str, error: Exception) -> Exception:
        """The exception for a failed request: a refusal (wrong credentials, no permission) is
        a configuration error that retrying will not fix, anything else an outage."""
        if isinstance(error, NoCredentialsError):
            return ValueError(
                f"{doing} in {self.describe()}: no AWS credentials found (set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or ~/.aws/credentials)"
            )
        if isinstance(error, ClientError) and _code(error) in _REFUSED_CODES:
            return PermissionError(f"{doing} in {self.describe()} was refused: {error}")
        return ArtifactStoreUnavailable(f"{doing} in {self.describe()} failed: {error}")

    def within_deadline(self, request: Callable[[], T]) -> T:
        """`request` (one call of the client), tried again after a connection failure or a
        busy server only while another try still fits in `request_deadline_seconds`; without
        a deadline, once (botocore retries on its own)."""
        deadline = self.request_deadline_seconds
        if deadline is None:
            return request()
        longest_try = DEADLINE_CONNECT_SECONDS + DEADLINE_READ_SECONDS
        started = time.monotonic()
        wait = FIRST_DEADLINE_RETRY_SECONDS
        while True:
            try:
                return request()
            except (ClientError, BotoCoreError) as error:
                elapsed = time.monotonic() - started
                if not _worth_retrying(error) or elapsed + wait + longest_try > deadline:
                    raise
            time.sleep(wait)
            wait *= 2

    # -- the interface ---------------------------------------------------------------------

    def check(self) -> None:
        try:
            self.within_deadline(lambda: self.client.head_bucket(Bucket=self.bucket))
        except ClientError as error:
            if _code(error) in ("404", "NoSuchBucket") or _status(error) == 404:
                raise ValueError(
                    f"ARTIFACT_URL: the bucket {self.bucket!r} does not exist at "
                    f"{self.endpoint_url or 'AWS S3'}; create it (or fix the URL)"
                ) from error
            raise self.unavailable("checking the bucket", error) from error
        except BotoCoreError as error:
            raise self.unavailable("checking the bucket", error) from error

    def staging_dir(self, job_id: int, attempt: int) -> Path:
        return self.staging_root / self.attempt_prefix(job_id, attempt)

    def discard_staging(self, job_id: int, attempt: int) -> None:
        shutil.rmtree(self.staging_dir(job_id, attempt), ignore_errors=True)

    def _resume_copies(self, job_id: int) -> Path:
        return self.staging_root / "resume" / self.job_prefix(job_id)

    def prepare_staging(self, job_id: int, attempt: int) -> Path:
        folder = self.staging_dir(job_id, attempt)
        if folder.parent.is_dir():
            for earlier in folder.parent.iterdir():
                if earlier != folder:
                    shutil.rmtree(earlier, ignore_errors=True)
        shutil.rmtree(self._resume_copies(job_id), ignore_errors=True)
        write_marker(folder)
        return folder

    def discard_dead_staging(self) -> int:
        removed = 0
        for folder in sorted((self.staging_root / "jobs").glob("*/attempt-*")):
            if not folder.is_dir() or not owned_by_the_dead(folder):
                continue
            removed += sum(
                1 for path in folder.rglob("*") if path.is_file() and path.name != MARKER_NAME
            )
            shutil.rmtree(folder, ignore_errors=True)
            job_folder = folder.parent
            if not any(job_folder.glob("attempt-*")):
                # No attempt of the job is left on this machine: nor is a use for its copies.
                with contextlib.suppress(ValueError):
                    shutil.rmtree(self._resume_copies(int(job_folder.name)), ignore_errors=True)
                with contextlib.suppress(OSError):
                    job_folder.rmdir()
        return removed

    def discard_stale_staging(self, *, older_than_seconds: float) -> int:
        cutoff = time.time() - older_than_seconds
        removed = 0
        if not self.staging_root.is_dir():
            return 0
        # A live attempt's folder is its own (its mark is as old as the attempt).
        live = [
            path for path in self.staging_root.glob("jobs/*/attempt-*") if owned_by_the_living(path)
        ]
        for path in sorted(self.staging_root.rglob("*"), reverse=True):  # files before folders
            if any(path.is_relative_to(folder) for folder in live):
                continue
            with contextlib.suppress(OSError):
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
                elif path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
        return removed

    def put(self, key: str, source: Path, *, size_bytes: int, sha256: str) -> ArtifactRecord:
        source = Path(source)
        full_key = self.full_key(key)
        hashed_size, hashed_sha256, expected_etag = self._hash_file(source)
        if hashed_size != size_bytes or hashed_sha256 != sha256:
            raise ArtifactDamaged(
                f"{source} does not match the size ({size_bytes}) and sha256 ({sha256}) it was "
                "written with"
            )
        doing = f"storing {key}"
        try:
            self.client.upload_file(
                str(source),
                self.bucket,
                full_key,
                ExtraArgs={
                    "Metadata": {"sha256": sha256},
                    "ContentType": "application/octet-stream",
                },
                Config=self.transfer,
            )
            head = self.client.head_object(Bucket=self.bucket, Key=full_key)
        except S3UploadFailedError as error:
            cause = error.__cause__ or error.__context__
            raise self.unavailable(doing, cause if isinstance(cause, Exception) else error) from (
                error
            )
        except (ClientError, BotoCoreError) as error:
            raise self.unavailable(doing, error) from error
        stored = self._object(key, head)
        damaged = None
        if stored.size != size_bytes or head.get("Metadata", {}).get("sha256") != sha256:
            damaged = f"{key} was stored with {stored.size} bytes and other metadata"
        elif stored.etag.strip('"') != expected_etag:
            # Not an MD5 ETag: read the object back.
            hasher = hashlib.sha256()
            with stored:
                for chunk in stored.chunks():
                    hasher.update(chunk)
            if hasher.hexdigest() != sha256:
                damaged = f"{key} was stored with other bytes than {source}"
        if damaged is not None:
            with contextlib.suppress(ClientError, BotoCoreError):
                self.client.delete_object(Bucket=self.bucket, Key=full_key)
            raise ArtifactDamaged(damaged)
        self.remember_digest(stored.identity, sha256)
        source.unlink(missing_ok=True)
        return ArtifactRecord(key, size_bytes, sha256)

    def _hash_file(self, source: Path) -> tuple[int, str, str]:
        """The file's size, sha256, and the ETag S3 gives it when uploaded with this store's
        transfer settings: the MD5 of the bytes, or for a multipart upload the MD5 of the parts'
        MD5s followed by `-<parts>`."""
        size = source.stat().st_size
        sha256 = hashlib.sha256()
        if size < self.transfer.multipart_threshold:
            part_size = size or 1
        else:
            part_size = ChunksizeAdjuster().adjust_chunksize(
                self.transfer.multipart_chunksize, size
            )
        part_digests: list[bytes] = []
        with source.open("rb") as file:
            while True:
                part = hashlib.md5(usedforsecurity=False)
                read = 0
                while read < part_size and (block := file.read(min(part_size - read, MIB))):
                    sha256.update(block)
                    part.update(block)
                    read += len(block)
                if read == 0 and part_digests:
                    break
                part_digests.append(part.digest())
                if read < part_size:
                    break
        if size < self.transfer.multipart_threshold:
            etag = part_digests[0].hex()
        else:
            combined = hashlib.md5(b"".join(part_digests), usedforsecurity=False).hexdigest()
            etag = f"{combined}-{len(part_digests)}"
        return size, sha256.hexdigest(), etag

    def delete(self, keys: Iterable[str]) -> None:
        full_keys = []
        for key in keys:
            try:
                full_keys.append(self.full_key(key))
            except ArtifactMissing:
                continue
        self._delete_full_keys(full_keys)

    def _delete_full_keys(self, full_keys: list[str]) -> None:
        for start in range(0, len(full_keys), 1000):  # DeleteObjects takes 1000 at most
            batch = [{"Key": key} for key in full_keys[start : start + 1000]]
            try:
                self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            except (ClientError, BotoCoreError) as error:
                raise self.unavailable("deleting objects", error) from error

    def delete_job(self, job_id: int) -> None:
        prefix = self.full_key(self.job_prefix(job_id).rstrip("/")) + "/"
        keys: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                keys.extend(item["Key"] for item in page.get("Contents", []))
        except (ClientError, BotoCoreError) as error:
            raise self.unavailable(f"listing job {job_id}'s objects", error) from error
        self._delete_full_keys(keys)
        self.abort_incomplete_uploads(self.job_prefix(job_id))

    def abort_incomplete_uploads(
        self, prefix: str = "", *, older_than_seconds: float = 0, excluding: str | None = None
    ) -> int:
        kept = self.full_key(excluding.rstrip("/")) + "/" if excluding else None
        if prefix:
            full_prefix = self.full_key(prefix.rstrip("/")) + "/"
        else:
            full_prefix = f"{self.prefix}/" if self.prefix else ""
        cutoff = datetime.fromtimestamp(time.time() - older_than_seconds, UTC)
        aborted = 0
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=full_prefix
            )
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] > cutoff or (kept and upload["Key"].startswith(kept)):
                        continue
                    with contextlib.suppress(ClientError):  # already completed or aborted
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        aborted += 1
        except (ClientError, BotoCoreError) as error:
            raise self.unavailable("listing incomplete uploads", error) from error
        return aborted

    def _object(self, key: str, head: dict[str, Any]) -> S3ArtifactObject:
        return S3ArtifactObject(
            self,
            key,
            int(head["ContentLength"]),
            head["LastModified"].timestamp(),
            str(head["ETag"]),
        )

    def open(self, key: str) -> S3ArtifactObject:
        full_key = self.full_key(key)
        try:
            head = self.within_deadline(
                lambda: self.client.head_object(Bucket=self.bucket, Key=full_key)
            )
        except ClientError as error:
            if _code(error) in _MISSING_CODES or _status(error) == 404:
                raise ArtifactMissing(f"no object {key!r} in {self.describe()}") from error
            raise self.unavailable(f"opening {key}", error) from error
        except BotoCoreError as error:
            raise self.unavailable(f"opening {key}", error) from error
        return self._object(key, head)

    def listed_states(self, records: Sequence[ArtifactRecord]) -> dict[str, ArtifactState]:
        """From one LIST of the objects under the records' common folder: missing when not
        listed, damaged when its size differs or this process hashed that version (key, ETag,
        size, time) to another sha256, else intact. An intact object's bytes are not read
        here; a download checks them before it sends any."""
        listed = self._list([record.key for record in records])
        states = {}
        for record in records:
            item = listed.get(record.key)
            if item is None:
                states[record.key] = ArtifactState.MISSING
                continue
            size = int(item["Size"])
            version = (str(item["ETag"]), size, item["LastModified"].timestamp())
            digest = self.known_digest(self.object_identity(item["Key"], *version))
            damaged = size != record.size_bytes or digest not in (None, record.sha256)
            states[record.key] = ArtifactState.DAMAGED if damaged else ArtifactState.INTACT
        return states

    def _list(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """{key: LIST entry} of those of `keys` that name an object, from one listing of the
        folder they all share."""
        full_keys = {}
        for key in keys:
            with contextlib.suppress(ArtifactMissing):  # not a key: no object
                full_keys[self.full_key(key)] = key
        if not full_keys:
            return {}
        common = os.path.commonprefix(sorted(full_keys))
        prefix = common[: common.rfind("/") + 1]  # a whole folder: "ckpt/jobs/7/"
        found: dict[str, dict[str, Any]] = {}
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        try:
            while True:
                page = self.within_deadline(lambda: self.client.list_objects_v2(**arguments))
                for item in page.get("Contents", []):
                    if item["Key"] in full_keys:
                        found[full_keys[item["Key"]]] = item
                if not page.get("IsTruncated"):
                    return found
                arguments["ContinuationToken"] = page["NextContinuationToken"]
        except (ClientError, BotoCoreError) as error:
            raise self.unavailable(f"listing {prefix}", error) from error

    def object_identity(self, full_key: str, etag: str, size: int, modified: float) -> Hashable:
        """What the verification cache knows an object's version by."""
        return ("s3", self.endpoint_url, self.bucket, full_key, etag, size, modified)

    def local_file(self, record: ArtifactRecord) -> Path:
        # Downloaded and hashed in one pass; the verified copy replaces any earlier one.
        target = self.staging_root / "resume" / record.key
        target.parent.mkdir(parents=True, exist_ok=True)
        with self.open(record.key) as opened:
            if opened.size != record.size_bytes:
                raise ArtifactDamaged(
                    f"{record.key} has {opened.size} bytes, not the recorded {record.size_bytes}"
                )
            fd, temp_name = tempfile.mkstemp(
                prefix=f".{target.name}-", suffix=".part", dir=target.parent
            )
            try:
                hasher = hashlib.sha256()
                with os.fdopen(fd, "wb") as out:
                    for chunk in opened.chunks():
                        hasher.update(chunk)
                        out.write(chunk)
                digest = hasher.hexdigest()
                self.remember_digest(opened.identity, digest)
                if digest != record.sha256:
                    raise ArtifactDamaged(
                        f"{record.key} does not match its recorded sha256 ({record.sha256})"
                    )
                os.replace(temp_name, target)
            except BaseException:
                Path(temp_name).unlink(missing_ok=True)
                raise
        return target

    def release_local_file(self, path: Path) -> None:
        path = Path(path)
        if path.is_relative_to(self.staging_root / "resume"):
            path.unlink(missing_ok=True)

    def download_url(
        self, key: str, *, expires_seconds: int, filename: str | None = None
    ) -> str | None:
        params = {"Bucket": self.bucket, "Key": self.full_key(key)}
        if filename is not None:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        url: str = self.client.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=expires_seconds
        )
        return url
