"""Checkpoint uploads in the background: training hands each written file over and goes on;
one thread per attempt stores the files in the order they were written and records each one
only once the store holds it, checked.

A store that is down or slow is retried with doubling waits (0.5 s up to 15 s) for up to
ARTIFACT_UPLOAD_TIMEOUT_SECONDS per checkpoint, while training goes on and later checkpoints
wait their turn on the local disk. Past that the attempt stops and the job fails with
`artifact_upload_failed`.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from jobs.artifacts import ArtifactRecord, ArtifactStore
from jobs.lifecycle import LeaseLost
from jobs.retry import TransientDatabaseError

logger = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 15.0


class UploadFailed(Exception):
    """A checkpoint could not be stored within the upload timeout."""

    def __init__(self, epoch: int, seconds: float, error: BaseException) -> None:
        super().__init__(
            f"The checkpoint of epoch {epoch} could not be stored for {seconds:.0f} s "
            f"(ARTIFACT_UPLOAD_TIMEOUT_SECONDS): {error}"
        )
        self.epoch = epoch


class CheckpointUploads(threading.Thread):
    """Stores each submitted checkpoint file (`written`: epoch, path, size_bytes, sha256) under
    its key and calls `record(written, stored)` once it is stored; the first failure (an
    UploadFailed, or the LeaseLost or TransientDatabaseError of recording) is kept in
    `failure` and nothing after it is stored."""

    def __init__(
        self,
        store: ArtifactStore,
        key: Callable[[int], str],
        record: Callable[[Any, ArtifactRecord], None],
        *,
        timeout_seconds: float,
        name: str,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.store = store
        self.key = key
        self.record = record
        self.timeout_seconds = timeout_seconds
        self._failure: BaseException | None = None
        # The upload in progress: (epoch, when it started), to fail one whose request hangs.
        self._current: tuple[int, float] | None = None
        self._queue: queue.Queue[Any] = queue.Queue()
        self._stopping = threading.Event()
        self._idle = threading.Condition()
        self._pending = 0

    def submit(self, written: Any) -> None:
        """Queue a written checkpoint; returns at once."""
        with self._idle:
            self._pending += 1
        self._queue.put(written)

    @property
    def failure(self) -> BaseException | None:
        """Why uploading stopped, if it did. An upload still running past the timeout (a
        request the store never answers) counts as failed from then on."""
        with self._idle:
            if self._failure is None and self._current is not None:
                epoch, started = self._current
                elapsed = time.monotonic() - started
                if elapsed > self.timeout_seconds:
                    self._failure = UploadFailed(
                        epoch, elapsed, TimeoutError("the store did not answer")
                    )
            return self._failure

    @property
    def pending(self) -> int:
        """Checkpoints submitted and not yet recorded (nor given up on)."""
        with self._idle:
            return self._pending

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every submitted checkpoint is recorded, or a failure; True when nothing
        is left pending (check `failure` too)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            failed = self.failure is not None
            with self._idle:
                if not self._pending or failed:
                    return self._pending == 0
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                # Woken when an upload ends; at least every second to see one overrun.
                self._idle.wait(1.0 if left is None else min(left, 1.0))

    def close(self) -> None:
        """Stop after the upload in progress (its file is left for discard_staging)."""
        self._stopping.set()
        self._queue.put(None)

    def run(self) -> None:
        while True:
            written = self._queue.get()
            if written is None or self._stopping.is_set():
                return
            try:
                stored = self._store(written)
                if stored is None or self.failure is not None:
                    return  # closed, or given up on while the request hung
                self.record(written, stored)
            except (UploadFailed, LeaseLost, TransientDatabaseError) as error:
                self._fail(error)
                return
            except Exception as error:  # a bug, or what recording raised: fail, said plainly
                logger.exception("checkpoint of epoch %s was not recorded", written.epoch)
                self._fail(error)
                return
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()

    def _fail(self, error: BaseException) -> None:
        with self._idle:
            if self._failure is None:
                self._failure = error
            self._idle.notify_all()

    def _store(self, written: Any) -> ArtifactRecord | None:
        """Store one file, retrying with backoff; None when closed meanwhile."""
        key = self.key(written.epoch)
        started = time.monotonic()
        with self._idle:
            self._current = (written.epoch, started)
        wait = FIRST_RETRY_SECONDS
        tries = 0
        while True:
            tries += 1
            try:
                stored = self.store.put(
                    key, written.path, size_bytes=written.size_bytes, sha256=written.sha256
                )
            except (PermissionError, ValueError, FileNotFoundError) as error:
                # A refusal (credentials, permissions), a staged file that is gone or is not
                # what was written: retrying will not change it.
                raise UploadFailed(written.epoch, time.monotonic() - started, error) from error
            except Exception as error:
                elapsed = time.monotonic() - started
                if elapsed + wait > self.timeout_seconds:
                    raise UploadFailed(written.epoch, elapsed, error) from error
                logger.warning(
                    "storing %s failed (try %s, %.0f s so far): %s; again in %.1f s",
                    key, tries, elapsed, error, wait,
                )  # fmt: skip
                if self._stopping.wait(wait * random.uniform(0.8, 1.2)):
                    return None
                wait = min(wait * 2, MAX_RETRY_SECONDS)
                continue
            if tries > 1:
                logger.info("stored %s after %s tries", key, tries)
            with self._idle:
                self._current = None
            return stored
