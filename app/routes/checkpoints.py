"""Checkpoint listing and downloads. Paths come from the job table, never from the client."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import BinaryIO

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from app.deps import ReadSessionDep, SettingsDep
from app.errors import CheckpointNotFound
from app.routes.common import error_responses
from app.routes.jobs import JobId
from app.schemas import CheckpointRead
from app.services import jobs as job_service
from jobs.checkpoints import checkpoint_pointers
from jobs.tables import CHECKPOINT_NAMES

router = APIRouter(prefix="/jobs/{job_id}/checkpoints", tags=["checkpoints"])
CHUNK_BYTES = 1 << 20


@router.get(
    "",
    response_model=list[CheckpointRead],
    responses=error_responses(401, 404),
    summary="The job's checkpoints: latest, best and final",
)
def list_checkpoints(job_id: JobId, session: ReadSessionDep) -> list[CheckpointRead]:
    job = job_service.get_job(session, job_id)
    return [
        CheckpointRead(
            name=name,
            epoch=row.epoch,
            size_bytes=row.size_bytes,  # type: ignore[arg-type]
            sha256=row.sha256,
            recorded_at=row.recorded_at,
            url=f"/jobs/{job_id}/checkpoints/{name}",
        )
        for name, row in checkpoint_pointers(session, job).items()
    ]


def _read_chunks(handle: BinaryIO) -> Iterator[bytes]:
    try:
        while chunk := handle.read(CHUNK_BYTES):
            yield chunk
    finally:
        handle.close()


@router.get(
    "/{name}",
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "description": "The checkpoint file; ETag is its sha256.",
        },
        304: {"description": "Not modified (If-None-Match matched)."},
        **error_responses(401, 404),
    },
    summary="Download a checkpoint (load it with torch.load(..., weights_only=True))",
)
def download_checkpoint(
    job_id: JobId, name: str, request: Request, session: ReadSessionDep, settings: SettingsDep
) -> Response:
    if name not in CHECKPOINT_NAMES:
        raise CheckpointNotFound(
            f"No checkpoint {name!r}; names are {', '.join(CHECKPOINT_NAMES)}."
        )
    job = job_service.get_job(session, job_id)
    row = checkpoint_pointers(session, job).get(name)
    if row is None:
        raise CheckpointNotFound(f"Job {job_id} has no {name} checkpoint yet.")
    root = settings.resolved_artifact_dir
    path = (root / row.relative_path).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise CheckpointNotFound(f"The {name} checkpoint of job {job_id} is no longer on disk.")
    # Hash the open file: a newer epoch may replace the path meanwhile, but not this inode.
    handle = path.open("rb")
    digest = hashlib.sha256()
    while chunk := handle.read(CHUNK_BYTES):
        digest.update(chunk)
    etag = f'"{digest.hexdigest()}"'
    if request.headers.get("if-none-match") == etag:
        handle.close()
        return Response(status_code=304, headers={"ETag": etag})
    handle.seek(0)
    headers = {
        "ETag": etag,
        "Content-Length": str(os.fstat(handle.fileno()).st_size),
        "Content-Disposition": f'attachment; filename="job-{job_id}-{name}.pt"',
        "X-Checkpoint-Epoch": str(row.epoch),
    }
    return StreamingResponse(
        _read_chunks(handle), media_type="application/octet-stream", headers=headers
    )
