"""Where a job's artifacts (checkpoints) live: one interface, one backend per URL scheme.

Callers name objects by key (`jobs/7/attempt-2/epoch-0005.pt`), never by path, so the worker
and the API work the same on a local directory or an object store. What makes a damaged object
unusable (its size and sha256 checked against the record before it is served or resumed from,
and a verification cache keyed by what a rewrite cannot keep unchanged) is here, shared by
every backend, not in the callers.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

if TYPE_CHECKING:
    from jobs.settings import Settings

logger = logging.getLogger(__name__)

# The engine names the files it writes the same way (engine.checkpoint.checkpoint_file_name), so
# the local backend stores a checkpoint where it was written, without a copy.
CHECKPOINT_NAME_FORMAT = "epoch-{epoch:04d}.pt"

# A backend is imported only when its scheme is used, so the local store needs no cloud SDK.
BACKENDS: dict[str, str] = {
    "file": "jobs.artifacts.local:LocalArtifactStore",
    "s3": "jobs.artifacts.s3:S3ArtifactStore",
}


@dataclass(frozen=True)
class StoreOptions:
    """What a backend may need besides its URL (hashable: stores are cached per URL and
    options). `endpoint_url`: an S3-compatible server other than AWS. `staging_root`: the local
    folder where a remote backend's checkpoints wait for their upload and resumed ones are
    downloaded to. `request_deadline_seconds`: how long one request to a remote backend may
    take, its retries included (a process answering clients); None: the backend's own, patient
    waits (a worker, whose uploads may retry for minutes anyway)."""

    endpoint_url: str | None = None
    staging_root: Path | None = None
    request_deadline_seconds: float | None = None


# Set by a process that answers clients (the API: app.unavailable), for every store it opens.
_request_deadline_seconds: float | None = None


def set_request_deadline(seconds: float | None) -> None:
    """Give each request this process makes to a remote store one deadline, retries included:
    a store that does not answer costs a client a few seconds, not botocore's minute."""
    global _request_deadline_seconds
    _request_deadline_seconds = seconds


class ArtifactStoreUnavailable(OSError):
    """The store could not be reached (or answered with a server error); trying again later may
    work."""


@dataclass(frozen=True)
class ArtifactRecord:
    """What is recorded of a stored object (a `checkpoint_files` row's key, size and sha256),
    and what it is checked against; the row also names the store (store_locator)."""

    key: str
    size_bytes: int
    sha256: str


class ArtifactState(StrEnum):
    INTACT = "intact"  # present, with the recorded size and sha256
    DAMAGED = "damaged"  # present, but its bytes are not the recorded ones
    MISSING = "missing"  # no object under the key (or a key that names nothing in the store)


class ArtifactMissing(LookupError):
    """No object under this key."""


class ArtifactDamaged(ValueError):
    """The object's bytes do not match its recorded size and sha256."""


class ArtifactObject(ABC):
    """One stored object opened for reading: its size, modification time and byte ranges.

    Reads return the bytes of the object as it was opened (the local backend holds the open
    file, so a replacement of the key meanwhile does not mix two objects in one response).
    """

    chunk_size = 1024 * 1024

    def __init__(self, key: str, size: int, modified: float) -> None:
        self.key = key
        self.size = size
        self.modified = modified  # POSIX seconds

    @property
    @abstractmethod
    def identity(self) -> Hashable:
        """What identifies these exact bytes to the verification cache: it changes whenever the
        object is written, and cannot be set back afterwards."""

    @abstractmethod
    def read(self, start: int, length: int) -> bytes:
        """Up to `length` bytes from offset `start`; fewer only at the end of the object."""

    def chunks(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes from `start` up to `end` (exclusive; default the end), in chunks."""
        end = self.size if end is None else min(end, self.size)
        while start < end:
            chunk = self.read(start, min(self.chunk_size, end - start))
            if not chunk:
                raise ArtifactDamaged(f"{self.key} ended at byte {start} of {self.size}")
            start += len(chunk)
            yield chunk

    def unchanged(self) -> bool:
        """Whether the object still has the identity it was opened with (nothing written to
        it since). True for a backend whose reads are bound to the version opened."""
        return True

    # Not abstract: a backend that holds nothing open between reads has nothing to release.
    def close(self) -> None:  # noqa: B027
        """Release what reading needed."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class ArtifactStore(ABC):
    """Where checkpoint bytes live. Backends implement storing, deleting and opening objects;
    the key layout and the integrity checks are shared."""

    # Digests of recently hashed objects, by identity: a repeated download of an unchanged
    # object is not hashed again. Bounded, as one entry per object version ever read.
    max_cached_digests = 4096

    def __init__(self) -> None:
        self._digests: OrderedDict[Hashable, str] = OrderedDict()
        self._digests_lock = threading.Lock()
        # Set by open_store: what a checkpoint row records of this store (store_locator).
        self.locator = ""

    @classmethod
    @abstractmethod
    def from_url(cls, url: str, options: StoreOptions | None = None) -> Self:
        """The store at `url` (e.g. `file:///srv/artifacts`); ValueError naming what is wrong
        with a malformed one."""

    # -- key layout ------------------------------------------------------------------------

    @staticmethod
    def job_prefix(job_id: int) -> str:
        return f"jobs/{job_id}/"

    @classmethod
    def attempt_prefix(cls, job_id: int, attempt: int) -> str:
        # One prefix per attempt: a stale worker never overwrites its successor's objects.
        return f"{cls.job_prefix(job_id)}attempt-{attempt}/"

    @classmethod
    def checkpoint_key(cls, job_id: int, attempt: int, epoch: int) -> str:
        if epoch < 0:
            raise ValueError(f"epoch must not be negative, got {epoch}")
        return cls.attempt_prefix(job_id, attempt) + CHECKPOINT_NAME_FORMAT.format(epoch=epoch)

    # -- what backends implement -----------------------------------------------------------

    @abstractmethod
    def staging_dir(self, job_id: int, attempt: int) -> Path:
        """The local directory the engine writes an attempt's checkpoint files into before
        `put` stores them."""

    @abstractmethod
    def put(self, key: str, source: Path, *, size_bytes: int, sha256: str) -> ArtifactRecord:
        """Store the complete local file `source` (size and sha256 as hashed while it was
        written) under `key`; the source is the store's afterwards. Returns what to record."""

    @abstractmethod
    def delete(self, keys: Iterable[str]) -> None:
        """Remove these objects; a key with no object is skipped."""

    @abstractmethod
    def delete_job(self, job_id: int) -> None:
        """Remove every object of the job, all attempts."""

    @abstractmethod
    def open(self, key: str) -> ArtifactObject:
        """The object under `key`, unverified; ArtifactMissing when there is none."""

    @abstractmethod
    def local_file(self, record: ArtifactRecord) -> Path:
        """A local file holding the object's bytes, checked against the record, for the engine
        to load; ArtifactMissing when there is none, ArtifactDamaged when its bytes are not the
        recorded ones."""

    # -- what a backend may add (not abstract: a local directory needs none of it) -----------

    def check(self) -> None:  # noqa: B027
        """Fail at start-up, naming what is wrong, when the store cannot work as configured (a
        bucket that does not exist); ArtifactStoreUnavailable when it cannot be reached now."""

    def discard_staging(self, job_id: int, attempt: int) -> None:  # noqa: B027
        """Remove what an attempt left in local staging (files not stored, local copies made
        for it to resume from); nothing for a backend whose staging folder is the store."""

    def prepare_staging(self, job_id: int, attempt: int) -> Path:
        """The attempt's staging folder, before it writes anything there. A backend whose
        staging is a local folder of its own marks it as this process's (see
        discard_dead_staging) and removes what earlier attempts of the job left on this
        machine: the new attempt holds the lease, so they are dead."""
        return self.staging_dir(job_id, attempt)

    def discard_dead_staging(self) -> int:
        """Remove the staging folders of attempts whose worker process on this machine is no
        longer running (killed: its files will never be stored); how many files. Nothing for a
        backend whose staging folder is the store."""
        return 0

    def discard_stale_staging(self, *, older_than_seconds: float) -> int:
        """Remove local staging files older than this (left by a worker that was killed before
        it could store them: its attempt resumed from the store, elsewhere); how many."""
        return 0

    def abort_incomplete_uploads(
        self, prefix: str = "", *, older_than_seconds: float = 0, excluding: str | None = None
    ) -> int:
        """Abandon unfinished uploads under `prefix` started more than `older_than_seconds`
        ago (a worker killed mid-upload leaves them), except those under `excluding`; how
        many. None for a backend whose writes leave nothing half-done behind."""
        return 0

    def release_local_file(self, path: Path) -> None:  # noqa: B027
        """The engine has loaded a file `local_file` returned: remove it if it was a copy."""

    def download_url(
        self, key: str, *, expires_seconds: int, filename: str | None = None
    ) -> str | None:
        """A URL a client can fetch the object from directly for `expires_seconds` (as an
        attachment named `filename`), or None when the backend has none (the API then streams
        the bytes itself)."""
        return None

    def describe(self) -> str:
        """Where the objects are, for messages (no credentials)."""
        return type(self).__name__

    # -- integrity, the same for every backend ---------------------------------------------

    def open_verified(self, key: str, *, size_bytes: int, sha256: str) -> ArtifactObject:
        """The object under `key`, once its size and sha256 are the recorded ones: hashed on
        first sight of this identity, from the cache afterwards. ArtifactMissing, or
        ArtifactDamaged (nothing of it is to be used)."""
        opened = self.open(key)
        try:
            if opened.size != size_bytes or self._digest(opened) != sha256:
                raise ArtifactDamaged(
                    f"{key} does not match its recorded size ({size_bytes}) and sha256 ({sha256})"
                )
        except BaseException:
            opened.close()
            raise
        return opened

    def state(self, key: str, *, size_bytes: int, sha256: str) -> ArtifactState:
        """Whether the object is intact, damaged or missing (hashing it unless cached)."""
        try:
            self.open_verified(key, size_bytes=size_bytes, sha256=sha256).close()
        except ArtifactMissing:
            return ArtifactState.MISSING
        except ArtifactDamaged:
            return ArtifactState.DAMAGED
        return ArtifactState.INTACT

    def listed_states(self, records: Sequence[ArtifactRecord]) -> dict[str, ArtifactState]:
        """{key: state} of the records, for a listing: by default each object checked as
        `state` does (on a local disk a stat, and a hash on first sight). A remote backend
        answers from one listing of the store instead of a request per object."""
        return {
            record.key: self.state(record.key, size_bytes=record.size_bytes, sha256=record.sha256)
            for record in records
        }

    def known_digest(self, identity: Hashable) -> str | None:
        """The sha256 remembered for this identity, if it was hashed (or stored) before."""
        with self._digests_lock:
            return self._digests.get(identity)

    def newest_intact(self, records: Sequence[ArtifactRecord]) -> ArtifactRecord | None:
        """The first intact one of `records` (give them newest first), or None."""
        for record in records:
            found = self.state(record.key, size_bytes=record.size_bytes, sha256=record.sha256)
            if found == ArtifactState.INTACT:
                return record
            logger.warning("%s is %s; trying an older one", record.key, found)
        return None

    def remember_digest(self, identity: Hashable, digest: str) -> None:
        """Record the sha256 of the object with this identity, hashed by the caller (a backend
        that has just checked what it stored or downloaded), so it is not read again."""
        with self._digests_lock:
            self._digests[identity] = digest
            self._digests.move_to_end(identity)
            while len(self._digests) > self.max_cached_digests:
                self._digests.popitem(last=False)

    def forget_digest(self, identity: Hashable) -> None:
        """Drop what is remembered of this identity: bytes read since did not hash to it, so
        the next request hashes the object again."""
        with self._digests_lock:
            self._digests.pop(identity, None)

    def _digest(self, opened: ArtifactObject) -> str:
        identity = opened.identity
        with self._digests_lock:
            digest = self._digests.get(identity)
            if digest is not None:
                self._digests.move_to_end(identity)
                return digest
        hasher = hashlib.sha256()
        for chunk in opened.chunks():
            hasher.update(chunk)
        digest = hasher.hexdigest()
        self.remember_digest(identity, digest)
        return digest


def artifact_url(settings: Settings) -> str:
    """Where the settings keep artifacts, as a URL: ARTIFACT_URL (a local path is a file URL),
    else the local ARTIFACT_DIR."""
    url = settings.artifact_url
    if url is None:
        return settings.resolved_artifact_dir.as_uri()
    if "://" not in url:
        return Path(url).expanduser().resolve().as_uri()
    return url


def store_options(settings: Settings) -> StoreOptions:
    return StoreOptions(
        endpoint_url=settings.s3_endpoint_url,
        staging_root=settings.resolved_artifact_staging_dir,
        request_deadline_seconds=_request_deadline_seconds,
    )


# An S3 store's locator carries the server it is on (S3_ENDPOINT_URL when it was recorded), so
# a checkpoint stays readable after the setting changes.
ENDPOINT_PARAMETER = "endpoint_url"


def store_locator(url: str, options: StoreOptions | None = None) -> str:
    """What a checkpoint row records of the store that holds it: the store's URL, and for an
    S3 store on another server than AWS that server (`?endpoint_url=...`). `store_at` opens
    it again whatever the settings are by then."""
    if urlsplit(url).scheme == "s3" and options is not None and options.endpoint_url:
        return f"{url}?{urlencode({ENDPOINT_PARAMETER: options.endpoint_url})}"
    return url


@lru_cache(maxsize=16)
def open_store(url: str, options: StoreOptions | None = None) -> ArtifactStore:
    """The store for `url`, by its scheme; one per URL and options per process, so its
    verification cache lasts across requests. ValueError for a URL no backend takes."""
    scheme = urlsplit(url).scheme
    if scheme not in BACKENDS:
        raise ValueError(
            f"No artifact store for {scheme or 'a URL without a scheme'}:// ({url}); "
            f"known: {', '.join(sorted(BACKENDS))}"
        )
    module, _, name = BACKENDS[scheme].partition(":")
    backend: type[ArtifactStore] = getattr(importlib.import_module(module), name)
    store = backend.from_url(url, options)
    store.locator = store_locator(url, options)
    return store


def configured_locator(settings: Settings) -> str:
    """The configured store's locator: what new checkpoints record."""
    return store_locator(artifact_url(settings), store_options(settings))


def artifact_store(settings: Settings) -> ArtifactStore:
    """The configured store: where new checkpoints go."""
    return store_at(configured_locator(settings), settings)


def store_at(locator: str, settings: Settings) -> ArtifactStore:
    """The store a checkpoint row names (its `store_locator`), with this process's staging
    folder; ValueError, naming the locator, when no backend can open it here."""
    parts = urlsplit(locator)
    endpoint = None
    if parts.scheme == "s3" and parts.query:
        query = parse_qs(parts.query)
        endpoint = query.get(ENDPOINT_PARAMETER, [None])[0]
        if set(query) != {ENDPOINT_PARAMETER} or endpoint is None:
            raise ValueError(f"{locator!r} is not a store this service recorded")
        locator = urlunsplit(parts._replace(query=""))
    options = StoreOptions(
        endpoint_url=endpoint,
        staging_root=settings.resolved_artifact_staging_dir,
        request_deadline_seconds=_request_deadline_seconds,
    )
    return open_store(locator, options)
