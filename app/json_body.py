"""Request bodies are JSON: a body in another media type is 415, and one that is not UTF-8 JSON
text is 400 naming where it breaks, before FastAPI reads it (which would answer 422 with a byte
offset as the field, or 400 or 422 for bad UTF-8 depending on the bytes).

JSON text that parses can still be hostile: nested thousands of levels deep (Python's decoder
recurses once per level and fails with RecursionError), an integer longer than Python converts
(ValueError), a key given twice (the last silently wins), an unpaired surrogate or a NUL in a
string (which no database column or UTF-8 answer can hold). A single linear, non-recursive scan
refuses each with its own 400 before anything recursive reads the body; FastAPI then parses the
same bytes, which are known to be shallow."""

from __future__ import annotations

import json
import json.decoder
import re
from collections.abc import Callable
from email.message import Message as MimeHeaders

from starlette._utils import get_route_path
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import (
    DuplicateJsonKey,
    InvalidJson,
    InvalidJsonString,
    JsonNumberTooLong,
    JsonTooDeep,
    ServiceError,
    UnsupportedMediaType,
)
from app.methods import Operations
from app.responses import service_error_response

# The deepest nesting of arrays and objects a body may have (the top-level value is level 1): a
# job spec needs 2, an experiment 3; Python's decoder would recurse until RecursionError.
MAX_JSON_DEPTH = 64
# The longest number literal, in characters: 17 significant digits already give every float;
# Python refuses to convert integers of over 4300 digits (ValueError).
MAX_NUMBER_LENGTH = 100

JSON_MEDIA_TYPES = "application/json or application/*+json"


def is_json_media_type(content_type: str) -> bool:
    """application/json or application/<anything>+json, with UTF-8 (or no) charset: the types
    FastAPI parses as JSON; JSON text is UTF-8 (RFC 8259)."""
    headers = MimeHeaders()
    headers["content-type"] = content_type
    if headers.get_content_maintype() != "application":
        return False
    subtype = headers.get_content_subtype()
    if subtype != "json" and not subtype.endswith("+json"):
        return False
    charset = headers.get_param("charset")
    return charset is None or (isinstance(charset, str) and charset.lower() in ("utf-8", "utf8"))


# The decoder's own string reader (in C): a string's text and where it ends (typeshed lacks it).
_ScanString = Callable[[str, int, bool], tuple[str, int]]
_scanstring: _ScanString = json.decoder.scanstring  # type: ignore[attr-defined]
# Where the scan stops outside strings: a string's quote, a bracket, or a comma (array indexes).
_STRUCTURE = re.compile(r'["\[\]{},]')
# A number literal (or what would be one) longer than the limit; the lookbehind keeps the search
# linear by trying only where such a run starts.
_LONG_NUMBER = re.compile(
    rf"(?<![-+.eE0-9])(?=[-+.eE0-9]{{{MAX_NUMBER_LENGTH + 1}}})-?[0-9][-+.eE0-9]*"
)
_KEY_END = re.compile(r"[ \t\n\r]*:")
_BAD_CHARACTER = re.compile("[\x00\ud800-\udfff]")


def _where(text: str, position: int) -> str:
    """'line 2, column 10 (character 28)', as json.JSONDecodeError counts them."""
    line = text.count("\n", 0, position) + 1
    column = position - text.rfind("\n", 0, position)
    return f"line {line}, column {column} (character {position})"


class _Level:
    """An open array or object: for a person, where in the body the scan is."""

    __slots__ = ("keys", "field")

    def __init__(self, is_object: bool) -> None:
        # An object's keys so far and its current key; an array's index.
        self.keys: set[str] | None = set() if is_object else None
        self.field: str | int = "" if is_object else 0


def _path(stack: list[_Level]) -> str:
    """The field the scan is in, written like a 422's field names (`hyperparameters.epochs`,
    `tags.0`), `body` at the top level."""
    return ".".join(str(level.field) for level in stack) or "body"


def _object(stack: list[_Level]) -> str:
    """The innermost open object, for a person."""
    return f"the object {_path(stack[:-1])}" if len(stack) > 1 else "the top-level object"


def _scan(text: str) -> ServiceError | None:
    """What is wrong with JSON text beyond its syntax: nesting deeper than MAX_JSON_DEPTH, a
    number longer than MAX_NUMBER_LENGTH, an unpaired surrogate or NUL in a string, a duplicate
    key; None when nothing is (syntax errors are left to the decoder). One pass, linear in the
    text, no recursion, stopping at the first problem.

    Brackets inside strings do not count: strings are read with the decoder's own scanstring.
    Where the text stops being JSON the decoder fails at or before that point, so everything the
    decoder reads has been checked."""
    stack: list[_Level] = []
    position = 0
    while True:
        found = _STRUCTURE.search(text, position)
        end = len(text) if found is None else found.start()
        if end - position > MAX_NUMBER_LENGTH:
            number = _LONG_NUMBER.search(text, position, end)
            if number is not None:
                literal = number.group()
                return JsonNumberTooLong(
                    f"The request body has a number {len(literal)} characters long "
                    f"({literal[:20]}...) in {_path(stack)} at {_where(text, number.start())}; "
                    f"a number may be at most {MAX_NUMBER_LENGTH} characters long."
                )
        if found is None:
            return None
        token, start, position = found.group(), found.start(), found.end()
        if token == '"':
            try:
                value, position = _scanstring(text, position, True)
            except json.JSONDecodeError:
                return None  # the decoder reports it, having read nothing past it
            keys = stack[-1].keys if stack else None
            is_key = keys is not None and _KEY_END.match(text, position) is not None
            bad = _BAD_CHARACTER.search(value)
            if bad is not None:
                what = (
                    "a NUL character (\\u0000)"
                    if bad.group() == "\x00"
                    else f"an unpaired surrogate (\\u{ord(bad.group()):04x})"
                )
                where = f"a key of {_object(stack)}" if is_key else _path(stack)
                return InvalidJsonString(
                    f"The request body has {what} in {where}, in the string at "
                    f"{_where(text, start)}; strings must be Unicode text (a surrogate only "
                    "as half of a pair) without NUL."
                )
            if is_key and keys is not None:
                if value in keys:
                    return DuplicateJsonKey(
                        f"The request body gives the key {json.dumps(value)} twice in "
                        f"{_object(stack)}, the second time at {_where(text, start)}; "
                        "each key may appear only once in an object."
                    )
                keys.add(value)
                stack[-1].field = value
        elif token in "[{":
            if len(stack) == MAX_JSON_DEPTH:
                return JsonTooDeep(
                    f"The request body nests arrays and objects more than {MAX_JSON_DEPTH} "
                    f"levels deep: level {MAX_JSON_DEPTH + 1} opens at {_where(text, start)}."
                )
            stack.append(_Level(is_object=token == "{"))
        elif token in "]}":
            if stack:  # an unmatched one is the decoder's to report
                stack.pop()
        elif stack and stack[-1].keys is None:  # a comma between array items
            stack[-1].field = int(stack[-1].field) + 1


def json_problem(body: bytes) -> ServiceError | None:
    """What is wrong with a body as JSON text, for a person; None when it parses. Linear in the
    body's size and never recursive deeper than MAX_JSON_DEPTH."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        return InvalidJson(
            f"The request body is not UTF-8 text: byte {error.start} "
            f"(0x{body[error.start]:02x}) {error.reason}."
        )
    # A byte order mark is the decoder's first complaint, whatever follows it.
    problem = None if text.startswith("\ufeff") else _scan(text)
    if problem is not None:
        return problem
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        # Some of the decoder's messages end in "at" ("Invalid control character at").
        message = error.msg.removesuffix(" at")
        return InvalidJson(
            f"The request body is not valid JSON: {message} at line {error.lineno}, "
            f"column {error.colno} (character {error.pos})."
        )
    except (ValueError, RecursionError):  # the scan above rules these out
        return InvalidJson("The request body is not JSON the service can read.")
    return None


class JsonBodyGuard:
    """Checks the body of each request to an operation that takes a JSON body (POST /jobs),
    then hands the same bytes on. Other requests, and bodiless ones, pass untouched: a missing
    spec is FastAPI's 422, an unknown path or method its 404 or 405."""

    def __init__(self, app: ASGIApp, operations: Callable[[], Operations]) -> None:
        self.app = app
        self.operations = operations

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.operations().takes_json_body(
            scope["method"], get_route_path(scope)
        ):
            await self.app(scope, receive, send)
            return
        parts: list[bytes] = []  # joined once: tiny chunks are not copied over and over
        more_body = True
        while more_body:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            parts.append(message.get("body", b""))
            more_body = message.get("more_body", False)
        body = b"".join(parts)
        content_type = Headers(scope=scope).get("content-type")
        problem: ServiceError | None = None
        if (content_type is not None or body) and not is_json_media_type(content_type or ""):
            shown = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
            problem = UnsupportedMediaType(
                f"The request body must be JSON, sent as {JSON_MEDIA_TYPES} (UTF-8); "
                f"this request has {shown}."
            )
        elif body:
            problem = json_problem(body)
        if problem is not None:
            await service_error_response(problem)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
