"""Checkpoint downloads: streamed into `<output>.part`, resumed from there with Range and
If-Range, checked against the sha256 that the ETag and the listing give, then renamed into
place. A file whose digest does not match is deleted, never left under the output name."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from cli.client import ApiClient
from cli.errors import EXIT_INTERRUPTED, CliError

CHUNK_BYTES = 1 << 16
PART_SUFFIX = ".part"


def partial_path(output: Path) -> Path:
    """Where the bytes received so far are kept until the digest matches."""
    return output.with_name(output.name + PART_SUFFIX)


def _file_sha256(path: Path) -> Any:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest


def _etag_sha256(etag: str | None) -> str | None:
    """The API's ETag is the file's sha256 in quotes (a weak W/ tag says nothing of bytes)."""
    if not etag or etag.startswith("W/"):
        return None
    return etag.strip('"') or None


def _resume_offset(content_range: str | None) -> int | None:
    """The first byte of a `bytes start-end/size` Content-Range."""
    if not content_range or not content_range.startswith("bytes "):
        return None
    try:
        return int(content_range[len("bytes ") :].split("-", 1)[0])
    except ValueError:
        return None


def _listed_checkpoint(api: ApiClient, job_id: int, name: str) -> dict[str, Any]:
    listing = api.get_json(f"/jobs/{job_id}/checkpoints", subject=f"job {job_id}")
    entry = next((row for row in listing if row["name"] == name), None)
    if entry is None:
        has = ", ".join(row["name"] for row in listing) or "none yet"
        raise CliError(f"job {job_id} has no {name} checkpoint (it has: {has})")
    return dict(entry)


@dataclass
class _Received:
    """What a download brought: the digest of the whole partial file, and what the API said
    the file is (its ETag's sha256 and its epoch)."""

    digest: Any
    sha256: str
    epoch: object


def _fetch_rest(
    api: ApiClient, entry: dict[str, Any], partial: Path, offset: int, console: Console
) -> _Received:
    """Append the bytes after `offset` to the partial file (or, if the API sends the whole
    file, rewrite it)."""
    digest = _file_sha256(partial) if offset else hashlib.sha256()
    headers = {}
    if offset:
        # If-Range: only the rest of the file the listing named; if the file changed since,
        # the API sends the whole new file and the download starts over.
        headers = {"Range": f"bytes={offset}-", "If-Range": f'"{entry["sha256"]}"'}
        console.print(f"resuming {partial} at byte {offset} of {entry['size_bytes']}")
    with api.stream(entry["url"], subject=f"job {entry['job_id']}", headers=headers) as response:
        total = int(response.headers.get("Content-Length", 0)) or None
        if response.status_code == 206:
            content_range = response.headers.get("Content-Range")
            if _resume_offset(content_range) != offset:
                raise CliError(
                    f"the API resumed at another byte than {offset} ({content_range}); delete "
                    f"{partial} and run the command again"
                )
            mode = "ab"
            total = (total or 0) + offset
        else:
            if offset:
                console.print("the checkpoint changed since the partial download; starting over")
            offset, digest, mode = 0, hashlib.sha256(), "wb"
        _receive(response.iter_bytes(CHUNK_BYTES), partial, mode, digest, offset, total, console)
        return _Received(
            digest,
            _etag_sha256(response.headers.get("ETag")) or entry["sha256"],
            response.headers.get("X-Checkpoint-Epoch", entry["epoch"]),
        )


def _keeping_partial(partial: Path, reason: str, exit_status: int) -> CliError:
    """The error of a download that stopped, saying where the bytes so far are kept."""
    kept = partial.stat().st_size if partial.exists() else 0
    if kept:
        reason += f" ({kept} bytes are kept in {partial}; run the same command to resume)"
    return CliError(reason, exit_status=exit_status)


def download_checkpoint(
    api: ApiClient, job_id: int, name: str, output: Path | None, console: Console
) -> Path:
    """Download one checkpoint of a job (latest, best or final) and return where it was saved."""
    entry = {**_listed_checkpoint(api, job_id, name), "job_id": job_id}
    default_name = f"job-{job_id}-{name}.pt"
    if output is None:
        output = Path(default_name)
    elif output.is_dir():
        output = output / default_name
    partial = partial_path(output)
    offset = partial.stat().st_size if partial.exists() else 0
    if offset > entry["size_bytes"]:  # longer than the file: not a prefix of it
        partial.unlink()
        offset = 0
    if offset == entry["size_bytes"] and offset:  # all there: only the digest to check
        received = _Received(_file_sha256(partial), entry["sha256"], entry["epoch"])
    else:
        try:
            received = _fetch_rest(api, entry, partial, offset, console)
        except CliError as error:
            raise _keeping_partial(partial, error.message, error.exit_status) from None
        except KeyboardInterrupt:
            raise _keeping_partial(partial, "interrupted", EXIT_INTERRUPTED) from None
    actual_sha256 = received.digest.hexdigest()
    if actual_sha256 != received.sha256:
        partial.unlink(missing_ok=True)
        raise CliError(
            f"the download of job {job_id}'s {name} checkpoint does not match its sha256 "
            f"(expected {received.sha256}, got {actual_sha256}); deleted it, run the command "
            "again to download it from the start"
        )
    os.replace(partial, output)
    console.print(
        f"saved {output}: job {job_id}'s {name} checkpoint, epoch {received.epoch}, "
        f"{output.stat().st_size} bytes, sha256 {actual_sha256} (verified)"
    )
    return output


def _receive(
    chunks: Any,
    partial: Path,
    mode: str,
    digest: Any,
    offset: int,
    total: int | None,
    console: Console,
) -> None:
    """Append the response's bytes to the partial file and the digest, with a progress bar on
    a terminal; flushed to disk before the caller renames the file."""
    progress = None
    task = None
    if console.is_terminal:
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=console,
            transient=True,
        )
        progress.start()
        task = progress.add_task(
            partial.name.removesuffix(PART_SUFFIX), total=total, completed=offset
        )
    try:
        with partial.open(mode) as file:
            for chunk in chunks:
                file.write(chunk)
                digest.update(chunk)
                if progress is not None and task is not None:
                    progress.advance(task, len(chunk))
            file.flush()
            os.fsync(file.fileno())
    except OSError as error:
        raise CliError(f"cannot write {partial}: {error.strerror or error}") from None
    finally:
        if progress is not None:
            progress.stop()
