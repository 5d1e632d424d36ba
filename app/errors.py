"""Errors of the HTTP protocol itself (body, media type, auth, ranges); the domain's errors are
in jobs.errors, and app.main renders both as JSON {error, detail}."""

from __future__ import annotations

from jobs.errors import ServiceError

__all__ = ["ServiceError"]  # the base of both families, for app's imports


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class BodyTooLarge(ServiceError):
    status_code = 413
    code = "body_too_large"


class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"


class InvalidRequest(ServiceError):
    status_code = 422
    code = "invalid_request"


class InvalidJson(ServiceError):
    status_code = 400
    code = "invalid_json"


class JsonTooDeep(ServiceError):
    """Arrays and objects nested deeper than app.json_body.MAX_JSON_DEPTH."""

    status_code = 400
    code = "json_too_deep"


class JsonNumberTooLong(ServiceError):
    """A number literal longer than app.json_body.MAX_NUMBER_LENGTH characters."""

    status_code = 400
    code = "number_too_long"


class InvalidJsonString(ServiceError):
    """A string (value or key) with an unpaired surrogate or a NUL character."""

    status_code = 400
    code = "invalid_string"


class DuplicateJsonKey(ServiceError):
    """An object that names the same key twice."""

    status_code = 400
    code = "duplicate_key"


class UnsupportedMediaType(ServiceError):
    status_code = 415
    code = "unsupported_media_type"


class PreconditionFailed(ServiceError):
    status_code = 412
    code = "precondition_failed"


class RangeNotSatisfiable(ServiceError):
    status_code = 416
    code = "range_not_satisfiable"
