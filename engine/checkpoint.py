"""Checkpoints: one file per epoch, written atomically (in the background) and hashed on the way.

A payload holds only types the restricted unpickler accepts: state dicts, tensors, numbers,
strings and plain lists/dicts (the config and history as dicts, never dataclasses), and is read
back with ``torch.load(weights_only=True)``. The engine writes ``epoch-NNNN.pt`` after every
epoch and nothing else; which epoch file is the latest, the best or the final one is the
caller's decision, made from the metrics.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import tempfile
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import torch
from torch import nn

from engine.checkpoint_files import file_sha256 as file_sha256
from engine.checkpoint_files import verify_checkpoint as verify_checkpoint
from models.registry import build_model

CHECKPOINT_FILE_FORMAT = "epoch-{epoch:04d}.pt"
_CHECKPOINT_FILE_PATTERN = re.compile(r"epoch-(\d{4,})\.pt")
_NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass(frozen=True)
class CheckpointFile:
    """One checkpoint on disk, as written: its epoch, where it is, its size and sha256."""

    epoch: int
    path: Path
    size_bytes: int
    sha256: str


class StorageFull(OSError):
    """A checkpoint did not fit: the file system (or the user's quota) is full.

    Carries the errno (ENOSPC or EDQUOT), the path and how many bytes the checkpoint needs, so
    the message says what to free and where. Nothing half-written is left behind.
    """

    def __init__(
        self, error_number: int, path: Path, needed_bytes: int, free_bytes: int | None
    ) -> None:
        free = "unknown" if free_bytes is None else f"{free_bytes:,}"
        super().__init__(
            error_number,
            f"no space to write checkpoint {path}: it needs about {needed_bytes:,} bytes and "
            f"{path.parent} has {free} bytes free; free some space or point the checkpoints "
            "at a larger volume",
            str(path),
        )
        self.path = path
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes


def checkpoint_file_name(epoch: int) -> str:
    """``epoch-0001.pt`` for epoch 1: the one naming scheme of checkpoint files."""
    if epoch < 0:
        raise ValueError(f"epoch must not be negative, got {epoch}")
    return CHECKPOINT_FILE_FORMAT.format(epoch=epoch)


def checkpoint_file_epoch(path: Path) -> int | None:
    """The epoch in a checkpoint file's name, or None when the name is not one of ours."""
    match = _CHECKPOINT_FILE_PATTERN.fullmatch(Path(path).name)
    return int(match.group(1)) if match else None


class _HashingWriter:
    """A write-only file object that hashes and counts the bytes it passes on."""

    def __init__(self, file: Any) -> None:
        self._file = file
        self.digest = hashlib.sha256()
        self.size_bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        written: int = self._file.write(data)
        self.digest.update(data)
        self.size_bytes += len(data)
        return written

    def flush(self) -> None:
        self._file.flush()


def payload_bytes(payload: object) -> int:
    """The bytes of every tensor in ``payload``: a lower bound on its checkpoint's size."""
    if isinstance(payload, torch.Tensor):
        return payload.numel() * payload.element_size()
    if isinstance(payload, Mapping):
        return sum(payload_bytes(value) for value in payload.values())
    if isinstance(payload, list | tuple):
        return sum(payload_bytes(value) for value in payload)
    return 0


def _free_bytes(directory: Path) -> int | None:
    try:
        stats = os.statvfs(directory)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def save_checkpoint(
    path: Path, payload: dict[str, Any], *, epoch: int | None = None
) -> CheckpointFile:
    """Write ``payload`` to ``path`` so that a reader sees the old file or the new one, whole.

    The sha256 and size are taken from the bytes as they are written (no second read). Raises
    StorageFull when the disk or quota is full; the temporary file is removed on every failure.
    ``epoch`` (for the returned record) defaults to ``payload["epoch"]``, 0 when absent.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            writer = _HashingWriter(file)
            # torch.save needs only write() and flush() of a file object.
            torch.save(payload, cast(IO[bytes], writer))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException as error:
        Path(temp_name).unlink(missing_ok=True)
        no_space = _no_space_error(error)
        if no_space is not None:
            raise StorageFull(
                no_space.errno or errno.ENOSPC,
                path,
                payload_bytes(payload),
                _free_bytes(path.parent),
            ) from error
        raise
    _fsync_directory(path.parent)
    return CheckpointFile(
        epoch=int(payload.get("epoch", 0)) if epoch is None else epoch,
        path=path,
        size_bytes=writer.size_bytes,
        sha256=writer.digest.hexdigest(),
    )


def _no_space_error(error: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT error behind ``error``, if any. torch.save's zip writer, failing to
    finish its file after a failed write, raises a RuntimeError whose context is the OSError."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _NO_SPACE_ERRNOS:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def copy_to_cpu(state: Any) -> Any:
    """A copy of ``state`` (nested dicts/lists of tensors and plain values) with every tensor in
    fresh CPU memory, safe to write while training goes on changing the originals.

    From CUDA the copies go into pinned memory with non-blocking transfers and one
    synchronize at the end, instead of one blocking copy per tensor.
    """
    devices: set[torch.device] = set()

    def copy(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            value = value.detach()
            if value.device.type == "cuda":
                devices.add(value.device)
                pinned = torch.empty(
                    value.shape, dtype=value.dtype, layout=value.layout, pin_memory=True
                )
                return pinned.copy_(value, non_blocking=True)
            return value.to("cpu", copy=True)
        if isinstance(value, dict):  # OrderedDict state dicts stay OrderedDicts
            return type(value)((key, copy(item)) for key, item in value.items())
        if isinstance(value, list):
            return [copy(item) for item in value]
        if isinstance(value, tuple):
            return tuple(copy(item) for item in value)
        return value

    copied = copy(state)
    for device in devices:
        torch.cuda.synchronize(device)
    return copied


class CheckpointWriter:
    """Writes checkpoints on one background thread, at most one write in flight.

    ``submit`` hands over a payload that is already entirely in CPU memory and not shared with
    training (see ``copy_to_cpu``); training goes on while it is written. A second ``submit``
    waits for the first write. Finished writes come back from ``completed`` or ``flush``; a
    write that failed (``StorageFull``, any OSError) raises there, in the caller's thread.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._in_flight: Future[CheckpointFile] | None = None
        self._finished: list[CheckpointFile] = []
        self._closed = False

    def submit(self, epoch: int, path: Path, payload: dict[str, Any]) -> None:
        """Start writing ``payload`` to ``path``; first waits for a write still in flight."""
        if self._closed:
            raise RuntimeError("the checkpoint writer is closed")
        self._collect()
        self._in_flight = self._executor.submit(save_checkpoint, path, payload, epoch=epoch)

    def completed(self) -> list[CheckpointFile]:
        """The writes finished since the last call, without waiting (cheap to poll)."""
        if self._in_flight is not None and self._in_flight.done():
            self._collect()
        finished, self._finished = self._finished, []
        return finished

    def flush(self) -> list[CheckpointFile]:
        """Wait for the write in flight; the writes finished since the last call."""
        self._collect()
        return self.completed()

    def close(self) -> None:
        """Wait for the write in flight (its outcome is dropped) and stop the thread."""
        self._closed = True
        self._in_flight = None
        self._executor.shutdown(wait=True)

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _collect(self) -> None:
        """Wait for the write in flight, if any; its exception is raised here."""
        future, self._in_flight = self._in_flight, None
        if future is not None:
            self._finished.append(future.result())


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with the safe (weights-only) unpickler."""
    loaded: dict[str, Any] = torch.load(Path(path), map_location=map_location, weights_only=True)
    return loaded


def checkpoint_cpu_threads(path: Path) -> int | None:
    """The intra-op CPU threads the run that wrote the checkpoint trained with, or None (a file
    written before it was recorded, or one that is not a checkpoint). Reads the payload
    memory-mapped: no tensor is copied."""
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True, mmap=True)
        threads = payload.get("cpu_threads")
    except Exception:  # the trainer's own load says what is wrong with the file
        return None
    return threads if isinstance(threads, int) and threads > 0 else None


def load_model_from_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """The network a checkpoint was trained as, with its weights loaded, in eval mode."""
    payload = load_checkpoint(path, map_location=map_location)
    model = build_model(payload["block"], num_classes=int(payload["num_classes"]))
    model.load_state_dict(payload["model"])
    return model.eval()
