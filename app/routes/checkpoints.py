"""Checkpoint listing and downloads. Paths come from the job table, never from the client."""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from sqlalchemy import select

from app.config import Settings
from app.deps import SessionDep, SettingsDep
from app.downloads import file_download
from app.errors import CheckpointNotFound
from app.routes.common import error_responses
from app.routes.params import JobId
from app.schemas import CheckpointRead
from app.services import jobs as job_service
from app.tables import Checkpoint, JobStatus

router = APIRouter(prefix="/jobs/{job_id}/checkpoints", tags=["checkpoints"])
CHECKPOINT_NAMES = ("latest", "best", "final")
FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)

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
def list_checkpoints(job_id: JobId, session: SessionDep) -> list[CheckpointRead]:
    job_service.get_job(session, job_id)
    rows = session.execute(select(Checkpoint).where(Checkpoint.job_id == job_id)).scalars()
    ordered = sorted(rows, key=lambda row: CHECKPOINT_NAMES.index(row.name))
    return [
        CheckpointRead(
            name=row.name,
            epoch=row.epoch,
            size_bytes=row.size_bytes,  # type: ignore[arg-type]
            sha256=row.sha256,
            recorded_at=row.recorded_at,
            url=f"/jobs/{job_id}/checkpoints/{row.name}",
        )
        for row in ordered
    ]


def _checkpoint_file(row: Checkpoint, settings: Settings) -> FilePath:
    """The file the checkpoint row points to, inside ARTIFACT_DIR; CheckpointNotFound when it is
    gone (or, from a tampered row, outside)."""
    root = settings.resolved_artifact_dir
    path = (root / row.relative_path).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise CheckpointNotFound(
            f"The {row.name} checkpoint of job {row.job_id} is no longer on disk."
        )
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
    session: SessionDep,
    settings: SettingsDep,
) -> Response:
    """Resumable: `Range: bytes=start-end` (with `If-Range: "<sha256>"` to be sure the file has
    not changed), `HEAD` for the size, `If-None-Match` for a cached copy."""
    if name not in CHECKPOINT_NAMES:
        raise CheckpointNotFound(
            f"No checkpoint {name!r}; names are {', '.join(CHECKPOINT_NAMES)}."
        )
    job = job_service.get_job(session, job_id)
    row = session.execute(
        select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.name == name)
    ).scalar_one_or_none()
    if row is None:
        if job.status in FINISHED:
            raise CheckpointNotFound(f"Job {job_id} {job.status} without a {name} checkpoint.")
        raise CheckpointNotFound(f"Job {job_id} has no {name} checkpoint yet.")
    return file_download(
        request,
        _checkpoint_file(row, settings),
        etag=row.sha256,
        filename=f"job-{job_id}-{name}.pt",
        headers={"X-Checkpoint-Epoch": str(row.epoch), "Cache-Control": "no-cache"},
    )
