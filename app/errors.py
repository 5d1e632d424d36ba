"""Errors of the HTTP protocol itself (body, media type, auth, ranges); the domain's errors are
in jobs.errors, and app.main renders both as JSON {error, detail}."""

from __future__ import annotations

from jobs.errors import ServiceError


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


class UnsupportedMediaType(ServiceError):
    status_code = 415
    code = "unsupported_media_type"


class PreconditionFailed(ServiceError):
    status_code = 412
    code = "precondition_failed"


class RangeNotSatisfiable(ServiceError):
    status_code = 416
    code = "range_not_satisfiable"
