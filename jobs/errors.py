"""The core's typed errors. Each carries a stable machine-readable `code` and the HTTP status it
means; the core raises them, and the API renders every one as JSON {error, detail} with one
handler (app.main)."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    status_code = 400
    code = "bad_request"
    # More members of the JSON answer besides error, detail and fields (a quota's numbers).
    extra: dict[str, Any] | None = None

    def __init__(
        self,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        fields: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        # For 422s: each bad field and why, like the validation handler's `fields`.
        self.fields = fields


class JobNotFound(ServiceError):
    status_code = 404
    code = "job_not_found"

    def __init__(self, job_id: object) -> None:
        super().__init__(f"No job with id {job_id}.")


class ExperimentNotFound(ServiceError):
    status_code = 404
    code = "experiment_not_found"

    def __init__(self, experiment_id: object) -> None:
        super().__init__(f"No experiment with id {experiment_id}.")


class CheckpointNotFound(ServiceError):
    status_code = 404
    code = "checkpoint_not_found"


class CheckpointDamaged(ServiceError):
    status_code = 500
    code = "checkpoint_damaged"


class JobNotCancellable(ServiceError):
    status_code = 409
    code = "job_not_cancellable"


class JobNotQueued(ServiceError):
    status_code = 409
    code = "job_not_queued"


class NotFinished(ServiceError):
    status_code = 409
    code = "not_finished"


class ExperimentNotCancellable(ServiceError):
    status_code = 409
    code = "not_cancellable"


class ExperimentNotResumable(ServiceError):
    status_code = 409
    code = "not_resumable"


class IdempotencyConflict(ServiceError):
    status_code = 409
    code = "idempotency_key_reused"


class QueueFull(ServiceError):
    status_code = 503
    code = "queue_full"


class InvalidFields(ServiceError):
    """Checks a request model cannot express (they need several fields, or the database): the
    same answer as a validation error, naming each field."""

    status_code = 422
    code = "validation_error"

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__(
            "; ".join(f"{field}: {message}" for field, message in problems),
            fields=[{"field": field, "message": message} for field, message in problems],
        )


class TooManyJobs(ServiceError):
    status_code = 422
    code = "too_many_jobs"


class InvalidLastEventId(ServiceError):
    status_code = 400
    code = "invalid_last_event_id"


class UnknownLastEventId(ServiceError):
    """A Last-Event-ID of the right form that names no point of the stream: the client's idea of
    the stream and the server's disagree (the state of the log, not the request's syntax)."""

    status_code = 409
    code = "invalid_last_event_id"


class Forbidden(ServiceError):
    """A signed-in caller asking to change what only its owner or an admin may change."""

    status_code = 403
    code = "forbidden"


class QuotaExceeded(ServiceError):
    """A submission that would leave its owner more queued jobs than their limit; the answer's
    `quota` gives the limit and the counts."""

    status_code = 429
    code = "quota_exceeded"

    def __init__(self, detail: str, *, limit: int, queued: int, adding: int) -> None:
        super().__init__(detail)
        self.extra = {"quota": {"limit": limit, "queued": queued, "adding": adding}}


class UserNotFound(ServiceError):
    status_code = 404
    code = "user_not_found"

    def __init__(self, name: object) -> None:
        super().__init__(f"No user named {name!r}.")


class UserExists(ServiceError):
    status_code = 409
    code = "user_exists"


class TokenNotFound(ServiceError):
    status_code = 404
    code = "token_not_found"


class TokenRejected(ServiceError):
    """Credentials that name no usable token: `code` says why (malformed, unknown, revoked, or
    its user disabled), never which tokens exist."""

    status_code = 401
    code = "invalid_token"

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class AccountsOff(ServiceError):
    """Users and tokens asked of a service without API_KEY, which accepts no token."""

    status_code = 409
    code = "accounts_off"
