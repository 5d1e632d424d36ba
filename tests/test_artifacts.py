"""The artifact store on a real directory: keys, storing, verifying (and its cache), reading
byte ranges, deleting."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from jobs.artifacts import (
    ArtifactDamaged,
    ArtifactMissing,
    ArtifactRecord,
    ArtifactState,
    artifact_store,
    open_store,
)
from jobs.artifacts.local import LocalArtifactObject, LocalArtifactStore
from jobs.settings import Settings
from tests.support import flip_bit_keeping_mtime

CONTENT = bytes(range(256)) * 64  # 16384 bytes, each offset recognisable


@pytest.fixture
def store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "artifacts")


def write_checkpoint(
    store: LocalArtifactStore, job_id: int, attempt: int, epoch: int, content: bytes = CONTENT
) -> ArtifactRecord:
    """What the worker does: the engine writes into the staging folder, the store stores it."""
    key = store.checkpoint_key(job_id, attempt, epoch)
    path = store.staging_dir(job_id, attempt) / Path(key).name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return store.put(key, path, size_bytes=len(content), sha256=hashlib.sha256(content).hexdigest())


def test_keys_follow_the_layout_and_the_engine_writes_where_they_are_stored(
    store: LocalArtifactStore,
) -> None:
    from engine.checkpoint import checkpoint_file_name

    assert store.checkpoint_key(7, 2, 5) == "jobs/7/attempt-2/epoch-0005.pt"
    assert store.checkpoint_key(7, 2, 12345) == "jobs/7/attempt-2/epoch-12345.pt"
    staging = store.staging_dir(7, 2)
    assert staging == store.root / "jobs" / "7" / "attempt-2"
    for epoch in (0, 5, 12345):
        # The engine's file name in the staging folder is the key's file: stored without a copy.
        key = store.checkpoint_key(7, 2, epoch)
        assert store.path(key) == staging / checkpoint_file_name(epoch)
    with pytest.raises(ValueError):
        store.checkpoint_key(7, 2, -1)


def test_put_in_place_records_without_copying(store: LocalArtifactStore) -> None:
    record = write_checkpoint(store, 3, 1, 4)
    assert record == ArtifactRecord(
        "jobs/3/attempt-1/epoch-0004.pt", len(CONTENT), hashlib.sha256(CONTENT).hexdigest()
    )
    path = store.path(record.key)
    inode = path.stat().st_ino
    assert path.read_bytes() == CONTENT and path.stat().st_ino == inode
    assert sorted(p.name for p in path.parent.iterdir()) == ["epoch-0004.pt"]
    # A file that is not the size it was written with is refused, not recorded.
    with pytest.raises(ArtifactDamaged):
        store.put(record.key, path, size_bytes=len(CONTENT) + 1, sha256=record.sha256)


def test_put_from_elsewhere_copies_checks_and_takes_over_the_file(
    store: LocalArtifactStore, tmp_path: Path
) -> None:
    digest = hashlib.sha256(CONTENT).hexdigest()
    source = tmp_path / "written.pt"
    source.write_bytes(CONTENT)
    record = store.put(
        "jobs/1/attempt-1/epoch-0001.pt", source, size_bytes=len(CONTENT), sha256=digest
    )
    assert store.path(record.key).read_bytes() == CONTENT and not source.exists()

    source.write_bytes(CONTENT[:-1] + b"x")  # not the bytes it claims to be
    with pytest.raises(ArtifactDamaged):
        store.put("jobs/1/attempt-1/epoch-0002.pt", source, size_bytes=len(CONTENT), sha256=digest)
    folder = store.path("jobs/1/attempt-1")
    assert sorted(p.name for p in folder.iterdir()) == ["epoch-0001.pt"]  # no temporary left


def test_state_is_intact_damaged_or_missing(store: LocalArtifactStore) -> None:
    record = write_checkpoint(store, 1, 1, 1)

    def state(key: str = record.key, size: int = record.size_bytes, sha: str = record.sha256):
        return store.state(key, size_bytes=size, sha256=sha)

    assert state() == ArtifactState.INTACT
    assert state(size=record.size_bytes - 1) == ArtifactState.DAMAGED
    assert state(sha="0" * 64) == ArtifactState.DAMAGED
    assert state(key="jobs/1/attempt-1/epoch-0009.pt") == ArtifactState.MISSING
    assert state(key="jobs/1/attempt-1") == ArtifactState.MISSING  # a folder is no object
    store.path(record.key).write_bytes(CONTENT[:-1] + b"\x00")  # rewritten, same size
    assert state() == ArtifactState.DAMAGED


def test_keys_leading_out_of_the_root_name_nothing(
    store: LocalArtifactStore, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.pt"
    outside.write_bytes(CONTENT)
    digest = hashlib.sha256(CONTENT).hexdigest()
    link = store.root / "jobs" / "1" / "link.pt"
    link.parent.mkdir(parents=True)
    link.symlink_to(outside)
    for key in ("../outside.pt", str(outside), "jobs/1/link.pt", "", "."):
        with pytest.raises(ArtifactMissing):
            store.open(key)
        assert store.state(key, size_bytes=len(CONTENT), sha256=digest) == ArtifactState.MISSING
        store.delete([key])
    assert outside.read_bytes() == CONTENT


def test_verification_is_cached_until_the_file_is_written_even_with_its_mtime_set_back(
    store: LocalArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = write_checkpoint(store, 1, 1, 1)
    other = write_checkpoint(store, 1, 1, 2)
    reads: list[str] = []
    real_read = LocalArtifactObject.read

    def counted(self: LocalArtifactObject, start: int, length: int) -> bytes:
        reads.append(self.key)
        return real_read(self, start, length)

    monkeypatch.setattr(LocalArtifactObject, "read", counted)

    def verify(checked: ArtifactRecord) -> ArtifactState:
        return store.state(checked.key, size_bytes=checked.size_bytes, sha256=checked.sha256)

    assert verify(record) == ArtifactState.INTACT and reads == [record.key]
    assert verify(record) == ArtifactState.INTACT and reads == [record.key]  # from the cache

    flip_bit_keeping_mtime(store.path(record.key))
    assert verify(record) == ArtifactState.DAMAGED and reads == [record.key] * 2
    with pytest.raises(ArtifactDamaged):
        store.open_verified(record.key, size_bytes=record.size_bytes, sha256=record.sha256)
    assert reads == [record.key] * 2  # a damaged file's digest is remembered too
    assert verify(other) == ArtifactState.INTACT  # the other file is untouched


def test_open_reads_ranges_of_the_bytes_it_opened(store: LocalArtifactStore) -> None:
    record = write_checkpoint(store, 1, 1, 1)
    path = store.path(record.key)
    with store.open_verified(
        record.key, size_bytes=record.size_bytes, sha256=record.sha256
    ) as opened:
        assert opened.key == record.key and opened.size == len(CONTENT)
        assert opened.modified == path.stat().st_mtime
        assert opened.read(0, 10) == CONTENT[:10]
        assert opened.read(1000, 300) == CONTENT[1000:1300]
        assert opened.read(len(CONTENT) - 5, 100) == CONTENT[-5:]  # short only at the end
        assert opened.read(len(CONTENT), 10) == b""
        opened.chunk_size = 1000
        chunks = list(opened.chunks(500, 3600))
        assert [len(chunk) for chunk in chunks] == [1000, 1000, 1000, 100]
        assert b"".join(chunks) == CONTENT[500:3600]
        assert b"".join(opened.chunks()) == CONTENT
        # Replacing the key's file meanwhile does not change what this object reads.
        replacement = path.with_name("new.tmp")
        replacement.write_bytes(b"x" * len(CONTENT))
        os.replace(replacement, path)
        assert opened.read(0, 10) == CONTENT[:10]
    with pytest.raises(ValueError):
        opened.read(0, 1)  # closed


def test_delete_keys_and_a_whole_job(store: LocalArtifactStore) -> None:
    first = write_checkpoint(store, 1, 1, 1)
    second = write_checkpoint(store, 1, 1, 2)
    retry = write_checkpoint(store, 1, 2, 3)
    neighbour = write_checkpoint(store, 2, 1, 1)

    store.delete([first.key, "jobs/1/attempt-1/epoch-0099.pt"])  # a missing key is skipped
    assert not store.path(first.key).exists() and store.path(second.key).exists()
    with pytest.raises(ArtifactMissing):
        store.open(first.key)

    store.delete_job(1)
    for gone in (second, retry):
        assert store.state(gone.key, size_bytes=gone.size_bytes, sha256=gone.sha256) == "missing"
    assert not (store.root / "jobs" / "1").exists()
    store.delete_job(1)  # nothing left: not an error
    assert store.path(neighbour.key).read_bytes() == CONTENT


def test_newest_intact_skips_damaged_and_missing_objects(store: LocalArtifactStore) -> None:
    oldest = write_checkpoint(store, 1, 1, 1)
    middle = write_checkpoint(store, 1, 1, 2)
    newest = write_checkpoint(store, 1, 1, 3)
    flip_bit_keeping_mtime(store.path(newest.key))
    store.delete([middle.key])
    assert store.newest_intact([newest, middle, oldest]) == oldest
    store.delete([oldest.key])
    assert store.newest_intact([newest, middle, oldest]) is None


def test_the_configured_store_is_the_local_directory_one_per_location(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var")
    store = artifact_store(settings)
    assert isinstance(store, LocalArtifactStore)
    assert store.root == settings.resolved_artifact_dir
    # One store per location, so its verification cache outlives a request.
    assert artifact_store(Settings(var_dir=tmp_path / "var")) is store
    assert artifact_store(Settings(artifact_dir=tmp_path / "elsewhere")) is not store
    with pytest.raises(ValueError, match="No artifact store for s4://"):
        open_store("s4://bucket/prefix")
    with pytest.raises(ValueError, match="not a local file URL"):
        LocalArtifactStore.from_url("file://otherhost/srv/artifacts")
