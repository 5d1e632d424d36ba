"""Path and header parameters shared by the routers."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Header, Path, Query
from pydantic import BeforeValidator

MAX_JOB_ID = 2**31 - 1
CANONICAL_ID = re.compile(r"[1-9][0-9]*")


def _canonical_id(value: object) -> object:
    """Only the id's canonical spelling names a row: "1.0", "+1", "01" and "1e0" name nothing
    (pydantic's lax int parsing would read each of them as 1)."""
    if isinstance(value, str) and not CANONICAL_ID.fullmatch(value):
        raise ValueError("an id is a positive integer without sign, leading zeros or decimals")
    return value


# Path's metadata comes first, so that the schema shows minimum and maximum.
JobId = Annotated[
    int, Path(ge=1, le=MAX_JOB_ID, description="The job's id."), BeforeValidator(_canonical_id)
]
ExperimentId = Annotated[
    int,
    Path(ge=1, le=MAX_JOB_ID, description="The experiment's id."),
    BeforeValidator(_canonical_id),
]


IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=200,
        # Printable ASCII without surrounding spaces: servers strip those, so " k" and "k" would
        # be one key that the client sent as two.
        pattern=r"^[!-~]([ -~]*[!-~])?$",
        description="Retry-safe submission: the same key and body return what the first request "
        "made; the same key with another body is 409. 1 to 200 printable ASCII characters.",
    ),
]

# A user's name (jobs.accounts.NAME_PATTERN), or `admin` for the API key's holder.
USER_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
OwnerQuery = Annotated[
    str | None,
    Query(
        pattern=USER_NAME_PATTERN,
        description="Only what this user submitted (`admin`: with the API key).",
    ),
]
UserName = Annotated[str, Path(pattern=USER_NAME_PATTERN, description="The user's name.")]
TokenId = Annotated[
    int, Path(ge=1, le=MAX_JOB_ID, description="The token's id."), BeforeValidator(_canonical_id)
]
