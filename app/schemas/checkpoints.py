"""What the API answers about a job's checkpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class CheckpointRead(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "latest",
                    "epoch": 12,
                    "size_bytes": 90018731,
                    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                    "recorded_at": "2026-11-27T08:04:09Z",
                    "url": "/jobs/1/checkpoints/latest",
                    "state": "intact",
                }
            ]
        }
    )

    name: Literal["latest", "best", "final"]
    epoch: int
    size_bytes: int
    sha256: str
    recorded_at: datetime
    url: str
    state: Literal["intact", "damaged", "missing"] = Field(
        description="Whether the stored bytes match `size_bytes` and `sha256`, as far as the "
        "listing knows: a local directory's files are checked (hashed once per version); in "
        "an object store the listing reads no object, so `intact` means present with the "
        "recorded size and not found damaged by an earlier download. Every download checks "
        "the bytes before it sends any: a `damaged` or `missing` checkpoint answers 500 "
        "`checkpoint_damaged` or 404 `checkpoint_not_found`."
    )
