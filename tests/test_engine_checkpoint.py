"""Checkpoint files: naming, atomic hashed writes, a full disk, verification, the writer."""

from __future__ import annotations

import errno
import hashlib
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from engine.checkpoint import (
    CheckpointFile,
    CheckpointWriter,
    StorageFull,
    checkpoint_file_epoch,
    checkpoint_file_name,
    copy_to_cpu,
    file_sha256,
    load_checkpoint,
    payload_bytes,
    save_checkpoint,
    verify_checkpoint,
)


def _payload(megabytes: float = 0.1, epoch: int = 1) -> dict[str, object]:
    values = int(megabytes * 1_000_000 / 4)
    return {"model": {"weight": torch.arange(values, dtype=torch.float32)}, "epoch": epoch}


def test_file_names_follow_one_scheme() -> None:
    assert checkpoint_file_name(1) == "epoch-0001.pt"
    assert checkpoint_file_name(123) == "epoch-0123.pt"
    assert checkpoint_file_name(12345) == "epoch-12345.pt"
    for epoch in (1, 42, 1000, 12345):
        assert checkpoint_file_epoch(Path("x") / checkpoint_file_name(epoch)) == epoch
    for name in ("latest.pt", "epoch-1.pt", "epoch-0001.pt.tmp", ".epoch-0001.pt-abc.tmp"):
        assert checkpoint_file_epoch(Path(name)) is None
    with pytest.raises(ValueError):
        checkpoint_file_name(-1)


def test_save_hashes_the_bytes_it_writes_and_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "nested" / checkpoint_file_name(3)
    payload = _payload(epoch=3)
    written = save_checkpoint(path, payload)
    data = path.read_bytes()
    assert written == CheckpointFile(
        epoch=3, path=path, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
    )
    assert file_sha256(path) == written.sha256
    assert verify_checkpoint(path, written.sha256, written.size_bytes)
    assert torch.equal(load_checkpoint(path)["model"]["weight"], payload["model"]["weight"])
    assert sorted(item.name for item in path.parent.iterdir()) == [path.name]  # no temp file


def test_verify_rejects_changed_truncated_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / checkpoint_file_name(1)
    written = save_checkpoint(path, _payload())
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    assert not verify_checkpoint(path, written.sha256, written.size_bytes)
    path.write_bytes(bytes(data[:-1]))
    assert not verify_checkpoint(path, written.sha256, written.size_bytes)
    path.unlink()
    assert not verify_checkpoint(path, written.sha256, written.size_bytes)


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs (needs root, as in the CI container); skipped where mounting fails."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_raises_storage_full_and_leaves_nothing(tiny_filesystem: Path) -> None:
    path = tiny_filesystem / "run" / checkpoint_file_name(2)
    payload = _payload(megabytes=4, epoch=2)
    with pytest.raises(StorageFull) as raised:
        save_checkpoint(path, payload)
    error = raised.value
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC
    assert error.needed_bytes == payload_bytes(payload) == 4_000_000
    assert str(path) in str(error) and "4,000,000 bytes" in str(error)
    assert list(path.parent.iterdir()) == []
    # The same folder still takes a checkpoint that fits.
    small = save_checkpoint(path, _payload(megabytes=0.1, epoch=2))
    assert verify_checkpoint(path, small.sha256, small.size_bytes)


def test_copy_to_cpu_is_independent_of_the_live_tensors() -> None:
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "n": 3}
    copied = copy_to_cpu(state)
    before = copied["model"]["weight"].clone()
    momentum_before = copied["optimizer"]["state"][0]["momentum_buffer"].clone()
    optimizer.step()  # changes the live weights and momentum in place
    assert not torch.equal(model.weight.detach(), before)
    assert torch.equal(copied["model"]["weight"], before)
    assert torch.equal(copied["optimizer"]["state"][0]["momentum_buffer"], momentum_before)
    assert copied["n"] == 3 and type(copied["model"]) is type(state["model"])


def test_writer_writes_in_the_background_one_at_a_time(tmp_path: Path) -> None:
    with CheckpointWriter() as writer:
        assert writer.completed() == [] and writer.flush() == []
        for epoch in (1, 2, 3):
            writer.submit(epoch, tmp_path / checkpoint_file_name(epoch), _payload(epoch=epoch))
        finished = writer.flush()
        assert [item.epoch for item in finished] == [1, 2, 3]
        for item in finished:
            assert item.path == tmp_path / checkpoint_file_name(item.epoch)
            assert verify_checkpoint(item.path, item.sha256, item.size_bytes)
            assert load_checkpoint(item.path)["epoch"] == item.epoch
        assert writer.flush() == [] and writer.completed() == []
    assert not any(thread.name.startswith("checkpoint") for thread in threading.enumerate())
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(4, tmp_path / checkpoint_file_name(4), _payload())


def test_writer_raises_a_failed_write_in_the_callers_thread(tiny_filesystem: Path) -> None:
    with CheckpointWriter() as writer:
        writer.submit(1, tiny_filesystem / checkpoint_file_name(1), _payload(megabytes=4))
        with pytest.raises(StorageFull):
            writer.flush()
    assert list(tiny_filesystem.iterdir()) == []
