"""Users, their tokens, who is asking (/me) and the audit trail."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.accounts import NAME_PATTERN

Role = Literal["member", "admin"]
NAME_FIELD = Field(
    pattern=f"^{NAME_PATTERN.pattern}$",
    description="1 to 64 characters: lower-case letters, digits, '.', '_' and '-', starting "
    "with a letter or digit. `admin` is the API key's holder's.",
)
LIMIT_DESCRIPTION = "Null: the service's setting ({setting}) applies."


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = NAME_FIELD
    role: Role = "member"
    max_queued_jobs: int | None = Field(
        None,
        ge=0,
        le=1_000_000,
        description=LIMIT_DESCRIPTION.format(setting="MAX_QUEUED_JOBS_PER_USER"),
    )
    max_running_jobs: int | None = Field(
        None,
        ge=0,
        le=1_000_000,
        description=LIMIT_DESCRIPTION.format(setting="MAX_RUNNING_JOBS_PER_USER"),
    )


class UserUpdate(BaseModel):
    """Only the fields sent change; a limit sent as null goes back to the setting."""

    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    disabled: bool | None = Field(
        None, description="true: every token of the user stops working at once."
    )
    max_queued_jobs: int | None = Field(None, ge=0, le=1_000_000)
    max_running_jobs: int | None = Field(None, ge=0, le=1_000_000)


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    role: Role
    disabled: bool
    max_queued_jobs: int | None
    max_running_jobs: int | None
    created_at: datetime
    disabled_at: datetime | None


class UserList(BaseModel):
    items: list[UserRead]


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(
        None, min_length=1, max_length=100, description="What the token is for (a laptop, CI)."
    )


class TokenRead(BaseModel):
    """A token as listed: never the token itself, nor its hash."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    label: str | None
    created_at: datetime
    last_used_at: datetime | None = Field(
        None, description="When it was last used (to the minute)."
    )
    revoked_at: datetime | None


class NewTokenRead(TokenRead):
    token: str = Field(
        description="The token: shown this once, kept only as its SHA-256. Send it as "
        "`Authorization: Bearer <token>` or X-API-Key."
    )


class TokenList(BaseModel):
    items: list[TokenRead]


class UserCreated(BaseModel):
    user: UserRead
    token: NewTokenRead


class Revoked(BaseModel):
    revoked: list[int] = Field(description="The ids of the tokens revoked by this request.")


class MeRead(BaseModel):
    name: str | None = Field(
        description="The caller's user name (`admin`: the API key); null without accounts."
    )
    role: Role
    accounts: bool = Field(
        description="false when the service has no API_KEY: no sign-in, everyone may do everything."
    )


class AuditEventRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    actor: str | None = Field(
        description="Who did it (`admin`: the API key); null without accounts."
    )
    action: str = Field(
        description="job_submitted, job_cancelled, job_priority_changed, job_deleted, "
        "experiment_submitted, experiment_cancelled, experiment_priority_changed, "
        "experiment_extended, experiment_resumed, experiment_deleted, user_created, "
        "user_changed, user_disabled, user_enabled, token_created, token_revoked."
    )
    job_id: int | None
    experiment_id: int | None
    detail: dict[str, Any] | None


class AuditList(BaseModel):
    items: list[AuditEventRead]
    limit: int
    next: str | None
