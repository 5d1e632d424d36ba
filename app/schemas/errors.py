"""The JSON body of every error answer."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorRead(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"error": "job_not_found", "detail": "No job with id 7."}]}
    )

    error: str = Field(description="A stable machine-readable code.")
    detail: str = Field(description="What is wrong, for a person.")
    fields: list[dict[str, Any]] | None = Field(
        None, description="For validation errors: each bad field and why."
    )
