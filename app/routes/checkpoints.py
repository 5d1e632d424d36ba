"""Checkpoint listing and downloads. Paths come from the job table, never from the client."""

from __future__ import annotations

import threading
from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from sqlalchemy.orm import Session

from app.deps import SettingsDep, read_session
from app.downloads import file_download
from app.routes.common import error_responses
from app.routes.params import JobId
from app.schemas import CheckpointRead
from engine.checkpoint_files import file_sha256
from jobs.checkpoints import checkpoint_pointers
from jobs.errors import CheckpointDamaged, CheckpointNotFound
from jobs.listing import get_job
from jobs.settings import Settings
from jobs.tables import CHECKPOINT_NAMES, Checkpoint, Job, JobStatus

router = APIRouter(prefix="/jobs/{job_id}/checkpoints", tags=["checkpoints"])

# The schema lists the names; the route checks them itself, so that a wrong one is a 404 naming
# the valid ones rather than pydantic's message.
CheckpointName = Annotated[
    str, Path(description="Which checkpoint.", json_schema_extra={"enum": list(CHECKPOINT_NAMES)})
]


@router.get(
    "",
    response_model=list[CheckpointRead],
    responses=error_responses(401, 404),
    summary="The job's checkpoints: latest, best and final",
)
def list_checkpoints(job_id: JobId) -> list[CheckpointRead]:
    with read_session() as session:
        return checkpoint_listing(session, get_job(session, job_id))


def checkpoint_listing(session: Session, job: Job) -> list[CheckpointRead]:
    """The job's named checkpoints with their download URLs (the API's and the dashboard's)."""
    return [
        CheckpointRead(
            name=name,
            epoch=row.epoch,
            size_bytes=row.size_bytes,
            sha256=row.sha256,
            recorded_at=row.recorded_at,
            url=f"/jobs/{job.id}/checkpoints/{name}",
        )
        for name, row in checkpoint_pointers(session, job).items()
    ]


# Files are immutable once recorded: a file whose size, mtime and inode have not changed since it
# matched its sha256 is not hashed again.
_VERIFIED: dict[tuple[str, int, int, int], str] = {}
_VERIFIED_LOCK = threading.Lock()


def _checkpoint_file(row: Checkpoint, name: str, settings: Settings) -> FilePath:
    """The file the checkpoint row points to, inside ARTIFACT_DIR, checked against the recorded
    sha256: CheckpointNotFound when it is gone (or, from a tampered row, outside),
    CheckpointDamaged when its bytes are not the ones recorded."""
    root = settings.resolved_artifact_dir
    path = (root / row.relative_path).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise CheckpointNotFound(f"The {name} checkpoint of job {row.job_id} is no longer on disk.")
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    with _VERIFIED_LOCK:
        verified = _VERIFIED.get(key) == row.sha256
    if not verified:
        if stat.st_size != row.size_bytes or file_sha256(path) != row.sha256:
            raise CheckpointDamaged(
                f"The {name} checkpoint of job {row.job_id} (epoch {row.epoch}) on disk no longer "
                f"matches its recorded size and sha256; it is not served."
            )
        with _VERIFIED_LOCK:
            _VERIFIED[key] = row.sha256
    return path


_FILE_HEADERS = {
    "ETag": {"description": "The file's sha256, quoted.", "schema": {"type": "string"}},
    "Last-Modified": {"description": "When the file was written.", "schema": {"type": "string"}},
    "Accept-Ranges": {"description": "Always `bytes`.", "schema": {"type": "string"}},
}


@router.get(
    "/{name}",
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "description": "The checkpoint file; the ETag is its sha256.",
            "headers": _FILE_HEADERS,
        },
        206: {
            "content": {"application/octet-stream": {}, "multipart/byteranges": {}},
            "description": "The byte range asked for with `Range` (several ranges: "
            "multipart/byteranges).",
            "headers": {
                **_FILE_HEADERS,
                "Content-Range": {
                    "description": "bytes start-end/size (one range).",
                    "schema": {"type": "string"},
                },
            },
        },
        304: {"description": "Not modified: If-None-Match or If-Modified-Since matched."},
        **error_responses(401, 404, 412, 416),
    },
    summary="Download a checkpoint (load it with torch.load(..., weights_only=True))",
)
def download_checkpoint(
    job_id: JobId,
    name: CheckpointName,
    request: Request,
    settings: SettingsDep,
) -> Response:
    """Resumable: `Range: bytes=start-end` (with `If-Range: "<sha256>"` to be sure the file has
    not changed), `HEAD` for the size, `If-None-Match` for a cached copy."""
    if name not in CHECKPOINT_NAMES:
        raise CheckpointNotFound(
            f"No checkpoint {name!r}; names are {', '.join(CHECKPOINT_NAMES)}."
        )
    with read_session() as session:
        job = get_job(session, job_id)
        row = checkpoint_pointers(session, job).get(name)
    if row is None:
        if JobStatus(job.status).ended:
            raise CheckpointNotFound(f"Job {job_id} {job.status} without a {name} checkpoint.")
        raise CheckpointNotFound(f"Job {job_id} has no {name} checkpoint yet.")
    # The file is opened (and hashed when new) after the read transaction has ended.
    return file_download(
        request,
        _checkpoint_file(row, name, settings),
        etag=row.sha256,
        filename=f"job-{job_id}-{name}.pt",
        headers={"X-Checkpoint-Epoch": str(row.epoch), "Cache-Control": "no-cache"},
    )
