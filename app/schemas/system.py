"""The architectures table, liveness and readiness."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ArchitectureRead(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "block": "plain",
                    "params": 11050212,
                    "macs": 551979108,
                    "params_millions": 11.05,
                    "gmacs": 0.55,
                }
            ]
        }
    )

    block: str
    params: int
    macs: int
    params_millions: float = Field(description="params / 1e6, rounded to 2 places (the seed's M).")
    gmacs: float = Field(description="macs / 1e9, rounded to 2 places (the seed's GMac).")


class Health(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: Literal["ok"]


class Readiness(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"status": "ready", "database": "ok", "broker": "ok"}]}
    )

    status: Literal["ready", "not_ready"]
    database: str
    broker: str
