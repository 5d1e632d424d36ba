"""Checkpoint listing and downloads. Keys come from the job table, never from the client, and
bytes from the artifact store, which checks them against the recorded size and sha256."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy.orm import Session

from app.deps import SettingsDep, read_session
from app.downloads import object_download
from app.routes.common import error_responses
from app.routes.params import JobId
from app.schemas.checkpoints import CheckpointRead
from app.schemas.errors import ErrorRead
from jobs.artifacts import (
    ArtifactDamaged,
    ArtifactMissing,
    ArtifactObject,
    ArtifactRecord,
    ArtifactState,
    ArtifactStore,
    store_at,
)
from jobs.checkpoints import checkpoint_pointers
from jobs.errors import CheckpointDamaged, CheckpointNotFound
from jobs.listing import get_job
from jobs.settings import Settings, get_settings
from jobs.tables import CHECKPOINT_NAMES, Job, JobStatus

router = APIRouter(prefix="/jobs/{job_id}/checkpoints", tags=["checkpoints"])

# How long a presigned URL (`?redirect=true` on an object store) stays valid: enough to start a
# large download; the client follows it at once.
REDIRECT_EXPIRES_SECONDS = 3600

# The schema lists the names; the route checks them itself, so that a wrong one is a 404 naming
# the valid ones rather than pydantic's message.
CheckpointName = Annotated[
    str, Path(description="Which checkpoint.", json_schema_extra={"enum": list(CHECKPOINT_NAMES)})
]


@dataclass(frozen=True)
class NamedCheckpoint:
    """A name's checkpoint row, read inside the transaction and used after it."""

    name: str
    job_id: int
    epoch: int
    recorded_at: datetime
    stored: ArtifactRecord
    store_url: str  # the store that holds it (jobs.artifacts.store_locator)


def named_checkpoints(session: Session, job: Job) -> list[NamedCheckpoint]:
    """The job's named checkpoints, in CHECKPOINT_NAMES order."""
    return [
        NamedCheckpoint(
            name,
            job.id,
            row.epoch,
            row.recorded_at,
            ArtifactRecord(row.key, row.size_bytes, row.sha256),
            row.store_url,
        )
        for name, row in checkpoint_pointers(session, job).items()
    ]


@router.get(
    "",
    response_model=list[CheckpointRead],
    responses=error_responses(401, 404),
    summary="The job's checkpoints: latest, best and final, each intact, damaged or missing",
)
def list_checkpoints(job_id: JobId) -> list[CheckpointRead]:
    with read_session() as session:
        named = named_checkpoints(session, get_job(session, job_id))
    return checkpoint_listing(named, get_settings())


def store_of(checkpoint: NamedCheckpoint, settings: Settings) -> ArtifactStore:
    """The store that holds the checkpoint, whatever ARTIFACT_URL says now; CheckpointNotFound
    naming it when this server cannot open it."""
    try:
        return store_at(checkpoint.store_url, settings)
    except ValueError as error:
        raise CheckpointNotFound(
            f"The {checkpoint.name} checkpoint of job {checkpoint.job_id} is in a store this "
            f"server cannot open ({error})."
        ) from None


def checkpoint_listing(named: list[NamedCheckpoint], settings: Settings) -> list[CheckpointRead]:
    """The named checkpoints with their recorded size and sha256, state and download URLs (the
    API's and the dashboard's). The state is what the store that holds each can say without a
    request per object (ArtifactStore.listed_states; one in a store this server cannot open is
    `missing`): call it after the read transaction."""
    states: dict[str, ArtifactState] = {}
    by_store: dict[str, list[NamedCheckpoint]] = {}
    for checkpoint in named:
        by_store.setdefault(checkpoint.store_url, []).append(checkpoint)
    for held in by_store.values():
        records = list({item.stored.key: item.stored for item in held}.values())
        try:
            store = store_of(held[0], settings)
        except CheckpointNotFound:
            states.update(dict.fromkeys((record.key for record in records), ArtifactState.MISSING))
            continue
        states.update(store.listed_states(records))
    return [
        CheckpointRead(
            name=checkpoint.name,
            epoch=checkpoint.epoch,
            size_bytes=checkpoint.stored.size_bytes,
            sha256=checkpoint.stored.sha256,
            recorded_at=checkpoint.recorded_at,
            url=f"/jobs/{checkpoint.job_id}/checkpoints/{checkpoint.name}",
            state=states[checkpoint.stored.key],
        )
        for checkpoint in named
    ]


# Choices of a name's file after the one chosen was found deleted: a worker recording a newer
# epoch deletes the file a name pointed at once the newer row is committed, which a request
# that read the pointers just before may find gone.
ROTATED_AWAY_RETRIES = 2


def chosen_checkpoint(job_id: int, name: str) -> NamedCheckpoint:
    """The checkpoint `name` points at now; CheckpointNotFound when it points at none."""
    with read_session() as session:
        job = get_job(session, job_id)
        found = {checkpoint.name: checkpoint for checkpoint in named_checkpoints(session, job)}
        status = JobStatus(job.status)
    checkpoint = found.get(name)
    if checkpoint is None:
        if status.ended:
            raise CheckpointNotFound(f"Job {job_id} {status} without a {name} checkpoint.")
        raise CheckpointNotFound(f"Job {job_id} has no {name} checkpoint yet.")
    return checkpoint


def open_named_checkpoint(
    job_id: int, name: str, settings: Settings
) -> tuple[NamedCheckpoint, ArtifactObject]:
    """The checkpoint `name` points at, opened and verified (hashed when not seen before)
    after the read transaction has ended, before any byte or validator is sent. A file found
    deleted is chosen again while the name has moved on to another one (ROTATED_AWAY_RETRIES);
    CheckpointNotFound once it has not, CheckpointDamaged for bytes that are not the recorded
    ones."""
    checkpoint = chosen_checkpoint(job_id, name)
    retries_left = ROTATED_AWAY_RETRIES
    while True:
        stored = checkpoint.stored
        store = store_of(checkpoint, settings)
        try:
            opened = store.open_verified(
                stored.key, size_bytes=stored.size_bytes, sha256=stored.sha256
            )
            return checkpoint, opened
        except ArtifactMissing:
            chosen_again = chosen_checkpoint(job_id, name) if retries_left else checkpoint
            if chosen_again.stored.key == stored.key:
                raise CheckpointNotFound(
                    f"The {name} checkpoint of job {job_id} is no longer in the artifact store."
                ) from None
            checkpoint, retries_left = chosen_again, retries_left - 1
        except ArtifactDamaged:
            raise CheckpointDamaged(
                f"The {name} checkpoint of job {job_id} (epoch {checkpoint.epoch}) no longer "
                "matches its recorded size and sha256; it is not served."
            ) from None


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
        307: {
            "description": "With `redirect=true` on an object store: the verified object's "
            "presigned URL (valid an hour) in `Location`; the ETag is its sha256.",
        },
        **error_responses(401, 404, 412, 416, 422),
        500: {
            "model": ErrorRead,
            "description": "`checkpoint_damaged`: the stored bytes no longer match the recorded "
            "size and sha256; nothing of them is sent.",
        },
    },
    summary="Download a checkpoint (load it with torch.load(..., weights_only=True))",
)
def download_checkpoint(
    job_id: JobId,
    name: CheckpointName,
    request: Request,
    settings: SettingsDep,
    redirect: Annotated[
        bool,
        Query(
            description="On an object store (ARTIFACT_URL=s3://...): answer 307 to a presigned "
            "URL of the object, once verified, so the bytes do not pass through the API. "
            "Ignored on a local directory."
        ),
    ] = False,
) -> Response:
    """Resumable: `Range: bytes=start-end` (with `If-Range: "<sha256>"` to be sure the file has
    not changed), `HEAD` for the size, `If-None-Match` for a cached copy."""
    if name not in CHECKPOINT_NAMES:
        raise CheckpointNotFound(
            f"No checkpoint {name!r}; names are {', '.join(CHECKPOINT_NAMES)}."
        )
    checkpoint, opened = open_named_checkpoint(job_id, name, settings)
    stored = checkpoint.stored
    store = store_of(checkpoint, settings)
    filename = f"job-{job_id}-{name}.pt"
    headers = {"X-Checkpoint-Epoch": str(checkpoint.epoch), "Cache-Control": "no-cache"}
    if redirect:
        url = store.download_url(
            stored.key, expires_seconds=REDIRECT_EXPIRES_SECONDS, filename=filename
        )
        if url is not None:
            opened.close()
            return RedirectResponse(
                url, status_code=307, headers={**headers, "ETag": f'"{stored.sha256}"'}
            )
    identity = opened.identity
    return object_download(
        request,
        opened,
        etag=stored.sha256,
        filename=filename,
        headers=headers,
        sha256=stored.sha256,
        on_changed=lambda: store.forget_digest(identity),
    )
