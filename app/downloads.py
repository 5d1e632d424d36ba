"""Downloads of stored objects with HTTP's conditional requests (RFC 9110 section 13) and byte
ranges (section 14), from an artifact store's open object: the adapter reads byte ranges and
never learns whether the object is a file.

Answered: Range (one range as 206, several as multipart/byteranges, overlapping ones merged;
more than 100: the whole object), If-Range (a strong ETag or the exact Last-Modified date),
If-Match, If-None-Match (weak comparison, lists, `*`), If-Modified-Since and If-Unmodified-Since
in the RFC's order, an ETag chosen by the caller, a Range it cannot parse ignored (as the RFC
allows), the JSON 416 of the API, and HEAD requests that app.methods.HeadAsGet routes as GET.

The object was verified before the answer began, but its bytes may change while they are sent
(a file written in place). So the last chunk is held back until what was read is known to be
what was verified: the whole object's bytes hashed as they were sent, and the object's identity
unchanged (a range cannot be hashed against the whole object's sha256). Otherwise the transfer
ends without it, and the client sees an incomplete body, never a complete answer with other
bytes."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import formatdate
from secrets import token_hex
from urllib.parse import quote

import anyio
import anyio.to_thread
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import FileResponse, MalformedRangeHeader, Response
from starlette.responses import RangeNotSatisfiable as UnsatisfiableRange
from starlette.types import Receive, Scope, Send
from werkzeug.http import parse_date, parse_etags

from app.errors import PreconditionFailed, RangeNotSatisfiable
from app.methods import HEAD_REQUEST
from app.responses import service_error_response
from jobs.artifacts import (
    ArtifactDamaged,
    ArtifactMissing,
    ArtifactObject,
    ArtifactStoreUnavailable,
)

logger = logging.getLogger(__name__)

SAFE_METHODS = ("GET", "HEAD")
# What reading an object may raise once the answer has begun: the transfer is cut short.
_READ_FAILURES = (ArtifactDamaged, ArtifactMissing, ArtifactStoreUnavailable, OSError)


class ObjectResponse(Response):
    """The bytes of an open ArtifactObject: the whole object (200), one range (206 with
    Content-Range) or several (206 multipart/byteranges). An unparseable Range header is ignored
    (the whole object, 200) and an unsatisfiable one is a JSON 416 with `Content-Range: bytes
    */size`. The object is closed once the response is sent, or has failed.

    `sha256`: the whole object's, which a whole-object answer is hashed against as it is sent;
    `on_changed` is called when the bytes sent turn out not to be the verified ones."""

    chunk_size = 256 * 1024

    def __init__(
        self,
        opened: ArtifactObject,
        *,
        headers: dict[str, str],
        media_type: str,
        filename: str,
        sha256: str | None = None,
        on_changed: Callable[[], None] | None = None,
    ) -> None:
        self.opened = opened
        self.sha256 = sha256
        self.on_changed = on_changed
        quoted = quote(filename)
        disposition = (
            f'attachment; filename="{filename}"'
            if quoted == filename
            else f"attachment; filename*=utf-8''{quoted}"
        )
        super().__init__(
            status_code=200,
            headers={
                **headers,
                "Content-Length": str(opened.size),
                "Accept-Ranges": "bytes",
                "Content-Disposition": disposition,
            },
            media_type=media_type,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._respond(scope, receive, send)
        finally:
            self.opened.close()

    def _check_sent(self, hasher: hashlib._Hash | None) -> None:
        """ArtifactDamaged unless the bytes read are those verified: the object still has the
        identity it was opened with and, for a whole-object answer, they hash to `sha256`."""
        if not self.opened.unchanged():
            problem = "it was written to while being sent"
        elif hasher is not None and hasher.hexdigest() != self.sha256:
            problem = f"the bytes sent hash to {hasher.hexdigest()}, not {self.sha256}"
        else:
            return
        if self.on_changed is not None:
            self.on_changed()
        raise ArtifactDamaged(problem)

    def _use_range(self, if_range: str | None) -> bool:
        # Only a strong validator may apply a range: a weak one could join two objects' bytes.
        if if_range is None:
            return True
        return not if_range.startswith("W/") and if_range in (
            self.headers["etag"],
            self.headers["last-modified"],
        )

    async def _respond(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Routed as GET; the headers are sent without reading the object.
        head = bool(scope.get(HEAD_REQUEST)) or scope["method"] == "HEAD"
        request_headers = Headers(scope=scope)
        http_range = request_headers.get("range")
        size = self.opened.size
        ranges: list[tuple[int, int]] = []
        if (
            http_range is not None
            and scope["method"] in SAFE_METHODS
            and self._use_range(request_headers.get("if-range"))
        ):
            try:
                # Starlette's parser: ends past the object cut to it, overlaps merged, more
                # than 100 ranges answered with the whole object ([]).
                ranges = FileResponse._parse_range_header(http_range, size)
            except MalformedRangeHeader:
                ranges = []
            except UnsatisfiableRange:
                error = RangeNotSatisfiable(
                    f"The range {http_range!r} is outside the file, which has {size} bytes.",
                    headers={"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"},
                )
                await service_error_response(error)(scope, receive, send)
                return

        headers = self.headers.mutablecopy()
        parts: list[tuple[bytes, int, int]] = []  # (part header, start, end exclusive)
        closing = b""
        if not ranges:
            status = 200
            parts = [(b"", 0, size)]
        elif len(ranges) == 1:
            status = 206
            [(start, end)] = ranges
            headers["content-range"] = f"bytes {start}-{end - 1}/{size}"
            headers["content-length"] = str(end - start)
            parts = [(b"", start, end)]
        else:
            status = 206
            boundary = token_hex(13)
            part_type = headers["content-type"]
            headers["content-type"] = f"multipart/byteranges; boundary={boundary}"
            parts = [
                (
                    f"--{boundary}\r\nContent-Type: {part_type}\r\n"
                    f"Content-Range: bytes {start}-{end - 1}/{size}\r\n\r\n".encode("latin-1"),
                    start,
                    end,
                )
                for start, end in ranges
            ]
            closing = f"--{boundary}--".encode("latin-1")
            headers["content-length"] = str(
                sum(len(part) + end - start + 2 for part, start, end in parts) + len(closing)
            )
        await send({"type": "http.response.start", "status": status, "headers": headers.raw})
        if head:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return

        hasher = hashlib.sha256() if self.sha256 is not None and status == 200 else None

        def read(start: int, length: int) -> bytes:
            chunk = self.opened.read(start, length)
            if hasher is not None:
                hasher.update(chunk)
            return chunk

        async def send_body() -> None:
            multipart = bool(closing)
            for index, (part, start, end) in enumerate(parts):
                if part:
                    await send({"type": "http.response.body", "body": part, "more_body": True})
                while start < end:
                    try:
                        chunk = await anyio.to_thread.run_sync(
                            read, start, min(self.chunk_size, end - start)
                        )
                        if not chunk:
                            raise ArtifactDamaged(f"it ended at byte {start} of {size}")
                        start += len(chunk)
                        last = index == len(parts) - 1 and start >= end
                        if last:
                            await anyio.to_thread.run_sync(self._check_sent, hasher)
                    except _READ_FAILURES as error:
                        # Returning without the rest makes the server drop the connection: the
                        # client's body is shorter than its Content-Length.
                        logger.warning(
                            "%s: transfer cut short after byte %s: %s",
                            self.opened.key,
                            start,
                            error,
                        )
                        return
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if multipart:
                    await send({"type": "http.response.body", "body": b"\r\n", "more_body": True})
            await send({"type": "http.response.body", "body": closing, "more_body": False})

        spec_version = tuple(map(int, scope.get("asgi", {}).get("spec_version", "2.0").split(".")))
        if spec_version >= (2, 4):  # send raises once the client is gone
            await send_body()
            return
        # Older servers drop what is sent after a disconnect: watch for it, so a client that
        # went away does not keep this response reading the whole object.
        async with anyio.create_task_group() as group:

            async def stream() -> None:
                await send_body()
                group.cancel_scope.cancel()

            group.start_soon(stream)
            while (await receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()


def _modified_at(modified: float) -> datetime:
    # HTTP dates have whole seconds: compare at the precision of the Last-Modified header.
    return datetime.fromtimestamp(int(modified), UTC)


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


def object_download(
    request: Request,
    opened: ArtifactObject,
    *,
    etag: str,
    filename: str,
    headers: dict[str, str] | None = None,
    media_type: str = "application/octet-stream",
    sha256: str | None = None,
    on_changed: Callable[[], None] | None = None,
) -> Response:
    """The object as an attachment with a strong ETag (`etag` unquoted), Last-Modified and
    Accept-Ranges, answering conditional and range requests; the response closes `opened`.
    With `sha256`, a whole-object answer is hashed as it is sent and cut short, calling
    `on_changed`, when it does not match. PreconditionFailed for a failed If-Match or
    If-Unmodified-Since."""
    try:
        last_modified = _modified_at(opened.modified)
        validators = {
            "ETag": f'"{etag}"',
            "Last-Modified": formatdate(last_modified.timestamp(), usegmt=True),
        }
        status = precondition_status(
            request.headers, request.method, etag=etag, last_modified=last_modified
        )
        if status == 412:
            raise PreconditionFailed(
                "The file does not match the request's If-Match or If-Unmodified-Since: its "
                f"ETag is {validators['ETag']}, last modified {validators['Last-Modified']}.",
                headers=validators,
            )
        if status == 304:
            opened.close()
            return Response(status_code=304, headers={**(headers or {}), **validators})
        return ObjectResponse(
            opened,
            headers={**(headers or {}), **validators},
            media_type=media_type,
            filename=filename,
            sha256=sha256,
            on_changed=on_changed,
        )
    except BaseException:
        opened.close()
        raise
