"""The local-directory backend: each key is a file under the root (ARTIFACT_DIR), shared by the
API and the workers through the file system."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Hashable, Iterable
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit
from urllib.request import url2pathname

from jobs.artifacts.store import (
    ArtifactDamaged,
    ArtifactMissing,
    ArtifactObject,
    ArtifactRecord,
    ArtifactStore,
    StoreOptions,
)

# Refuses a symbolic link swapped in as the last component after the path was resolved.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)


class LocalArtifactObject(ArtifactObject):
    """An open file: reads come from its descriptor (pread, no shared offset, so one object
    serves concurrent ranges), whatever happens to the path meanwhile."""

    def __init__(self, key: str, path: Path, fd: int, status: os.stat_result) -> None:
        super().__init__(key, status.st_size, status.st_mtime)
        self._fd: int | None = fd
        # Size, mtime and inode alone are kept by a write in place followed by os.utime; the
        # ctime moves on every write and cannot be set back, and st_dev tells volumes apart.
        self._identity = (
            str(path),
            status.st_dev,
            status.st_ino,
            status.st_size,
            status.st_mtime_ns,
            status.st_ctime_ns,
        )

    @property
    def identity(self) -> Hashable:
        return self._identity

    def unchanged(self) -> bool:
        # A write in place keeps the descriptor's file but moves its ctime.
        if self._fd is None:
            raise ValueError(f"{self.key} is closed")
        status = os.fstat(self._fd)
        now = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns,
               status.st_ctime_ns)  # fmt: skip
        return now == self._identity[1:]

    def read(self, start: int, length: int) -> bytes:
        if self._fd is None:
            raise ValueError(f"{self.key} is closed")
        parts: list[bytes] = []
        while length > 0:
            chunk = os.pread(self._fd, length, start)
            if not chunk:
                break
            parts.append(chunk)
            start += len(chunk)
            length -= len(chunk)
        return b"".join(parts)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        # A response that was never sent must not leak its descriptor.
        self.close()


class LocalArtifactStore(ArtifactStore):
    """Objects as files under `root`. A key that resolves outside the root (`../x`, an
    absolute path, a symbolic link leading out) names nothing."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = Path(root).resolve()

    @classmethod
    def from_url(cls, url: str, options: StoreOptions | None = None) -> Self:
        parts = urlsplit(url)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise ValueError(f"not a local file URL: {url}")
        return cls(Path(url2pathname(parts.path)))

    def path(self, key: str) -> Path:
        """The file of `key`, inside the root; ArtifactMissing for a key that leads out."""
        path = (self.root / key).resolve()
        if path == self.root or not path.is_relative_to(self.root):
            raise ArtifactMissing(f"{key!r} is not a key of {self.root}")
        return path

    def staging_dir(self, job_id: int, attempt: int) -> Path:
        # The final folder itself: the engine's atomic write is the store's write, no copy.
        return self.path(self.attempt_prefix(job_id, attempt))

    def put(self, key: str, source: Path, *, size_bytes: int, sha256: str) -> ArtifactRecord:
        target = self.path(key)
        source = Path(source).resolve()
        if source == target:
            # Written in place by the engine, which hashed it on the way.
            if target.stat().st_size != size_bytes:
                raise ArtifactDamaged(f"{key} has {target.stat().st_size} bytes, not {size_bytes}")
            return ArtifactRecord(key, size_bytes, sha256)
        self._copy_in(source, target, size_bytes=size_bytes, sha256=sha256)
        source.unlink()
        return ArtifactRecord(key, size_bytes, sha256)

    def _copy_in(self, source: Path, target: Path, *, size_bytes: int, sha256: str) -> None:
        """Copy `source` to `target` atomically (temporary file, fsync, rename), checking the
        bytes copied against the size and sha256 given."""
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(
            prefix=f".{target.name}-", suffix=".tmp", dir=target.parent
        )
        try:
            digest = hashlib.sha256()
            copied = 0
            with os.fdopen(fd, "wb") as out, source.open("rb") as file:
                while chunk := file.read(1024 * 1024):
                    digest.update(chunk)
                    copied += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if copied != size_bytes or digest.hexdigest() != sha256:
                raise ArtifactDamaged(
                    f"{source} does not match the size ({size_bytes}) and sha256 ({sha256}) "
                    "it was written with"
                )
            os.replace(temp_name, target)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            try:
                self.path(key).unlink(missing_ok=True)
            except ArtifactMissing:
                continue

    def delete_job(self, job_id: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.path(self.job_prefix(job_id)))

    def open(self, key: str) -> LocalArtifactObject:
        path = self.path(key)
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as error:
            raise ArtifactMissing(f"no object {key!r} in {self.root}") from error
        except OSError as error:
            if error.errno != errno.ELOOP:  # a link swapped in after the path was resolved
                raise
            raise ArtifactMissing(f"{key!r} in {self.root} is a symbolic link") from error
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                raise ArtifactMissing(f"{key!r} in {self.root} is not a file")
        except BaseException:
            os.close(fd)
            raise
        return LocalArtifactObject(key, path, fd, status)

    def local_file(self, record: ArtifactRecord) -> Path:
        # The stored file itself: no copy (the check is cached for an unchanged file).
        self.open_verified(record.key, size_bytes=record.size_bytes, sha256=record.sha256).close()
        return self.path(record.key)

    def describe(self) -> str:
        return str(self.root)
