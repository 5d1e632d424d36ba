"""File downloads with HTTP's conditional requests (RFC 9110 section 13) and byte ranges
(section 14), on Starlette's FileResponse.

FileResponse serves Range (one range as 206, several as multipart/byteranges, overlapping ones
merged), If-Range (a strong ETag or the exact Last-Modified date) and HEAD. What this module
adds: If-Match, If-None-Match (weak comparison, lists, `*`), If-Modified-Since and
If-Unmodified-Since in the RFC's order, an ETag chosen by the caller, a Range it cannot parse
ignored (as the RFC allows) instead of a text/plain 400, the JSON 416 of the API, and HEAD
requests that app.methods.HeadAsGet routes as GET."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from email.utils import formatdate
from pathlib import Path

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import FileResponse, MalformedRangeHeader, Response
from starlette.responses import RangeNotSatisfiable as UnsatisfiableRange
from starlette.types import Receive, Scope, Send
from werkzeug.http import parse_date, parse_etags

from app.errors import PreconditionFailed, RangeNotSatisfiable
from app.methods import HEAD_REQUEST
from app.responses import service_error_response

SAFE_METHODS = ("GET", "HEAD")


class RangeFileResponse(FileResponse):
    """FileResponse whose Range errors follow the API: an unparseable Range header is ignored
    (the whole file, 200) and an unsatisfiable one is a JSON 416 with `Content-Range: bytes
    */size`. Needs stat_result."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.stat_result is not None
        if scope.get(HEAD_REQUEST):
            # Routed as GET; FileResponse then sends the headers without reading the file.
            scope = {**scope, "method": "HEAD"}
        headers = Headers(scope=scope)
        http_range = headers.get("range")
        if_range = headers.get("if-range")
        if (
            http_range is not None
            and self.status_code == 200
            and scope["method"] in SAFE_METHODS
            and (if_range is None or self._should_use_range(if_range))
        ):
            size = self.stat_result.st_size
            try:
                self._parse_range_header(http_range, size)
            except MalformedRangeHeader:
                scope = {
                    **scope,
                    "headers": [(k, v) for k, v in scope["headers"] if k.lower() != b"range"],
                }
            except UnsatisfiableRange:
                error = RangeNotSatisfiable(
                    f"The range {http_range!r} is outside the file, which has {size} bytes.",
                    headers={"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"},
                )
                await service_error_response(error)(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def _modified_at(stat_result: os.stat_result) -> datetime:
    # HTTP dates have whole seconds: compare at the precision of the Last-Modified header.
    return datetime.fromtimestamp(int(stat_result.st_mtime), UTC)


def precondition_status(
    headers: Headers, method: str, *, etag: str, last_modified: datetime
) -> int | None:
    """412 or 304 when a precondition of the request decides the answer, else None. RFC 9110
    section 13.2.2: If-Match, else If-Unmodified-Since; then If-None-Match, else
    If-Modified-Since (GET and HEAD only). `etag` is the strong tag's opaque part."""
    if (if_match := headers.get("if-match")) is not None:
        # Strong comparison; `*` matches any current file.
        if not parse_etags(if_match).contains(etag):
            return 412
    else:
        unmodified_since = parse_date(headers.get("if-unmodified-since"))
        if unmodified_since is not None and last_modified > unmodified_since:
            return 412
    if (if_none_match := headers.get("if-none-match")) is not None:
        # Weak comparison: W/"x" matches "x"; `*` matches any current file.
        if parse_etags(if_none_match).contains_weak(etag):
            return 304 if method in SAFE_METHODS else 412
    elif method in SAFE_METHODS:
        modified_since = parse_date(headers.get("if-modified-since"))
        if modified_since is not None and last_modified <= modified_since:
            return 304
    return None


def file_download(
    request: Request,
    path: Path,
    *,
    etag: str,
    filename: str,
    headers: dict[str, str] | None = None,
    media_type: str = "application/octet-stream",
) -> Response:
    """The file as an attachment with a strong ETag (`etag` unquoted), Last-Modified and
    Accept-Ranges, answering conditional and range requests. PreconditionFailed for a failed
    If-Match or If-Unmodified-Since."""
    stat_result = path.stat()
    last_modified = _modified_at(stat_result)
    validators = {
        "ETag": f'"{etag}"',
        "Last-Modified": formatdate(last_modified.timestamp(), usegmt=True),
    }
    status = precondition_status(
        request.headers, request.method, etag=etag, last_modified=last_modified
    )
    if status == 412:
        raise PreconditionFailed(
            "The file does not match the request's If-Match or If-Unmodified-Since: its ETag "
            f"is {validators['ETag']}, last modified {validators['Last-Modified']}.",
            headers=validators,
        )
    if status == 304:
        return Response(status_code=304, headers={**(headers or {}), **validators})
    return RangeFileResponse(
        path,
        media_type=media_type,
        filename=filename,
        stat_result=stat_result,
        headers={**(headers or {}), **validators},
    )
