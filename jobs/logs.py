"""Logging for the API and the workers, set up the same way in both.

LOG_FORMAT=text (the default) writes one readable line per record; LOG_FORMAT=json writes one
JSON object per line (python-json-logger) with `timestamp` (ISO 8601, UTC), `level`, `logger`
and `event`, plus whichever of the ids in CONTEXT_FIELDS apply where the record was made: the
API binds the request id and the job or experiment a route names, the worker binds the job,
attempt and experiment it runs and its own name. They travel in a context variable, so every
record made while handling that request or job carries them, whichever module made it.

No secret reaches the output: every formatted record is scrubbed of the values in the settings
that are secrets (API_KEY and the sign-in cookie derived from it, METRICS_TOKEN, NOTIFY_SECRET,
the passwords in DATABASE_URL and CELERY_BROKER_URL), however the value got into the message.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from jobs.settings import Settings

CONTEXT_FIELDS = ("request_id", "job_id", "experiment_id", "attempt", "worker")
REDACTED = "[redacted]"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Secrets shorter than this are not scrubbed: replacing "1" in every line would only garble the
# log (and such a key protects nothing anyway).
MIN_SECRET_CHARS = 4

_context: ContextVar[Mapping[str, Any] | None] = ContextVar("log_context", default=None)
# Ids that hold for the whole process (a worker's name), under those of the current context.
_process_context: dict[str, Any] = {}


def _with(values: Mapping[str, Any]) -> dict[str, Any]:
    return {**(_context.get() or {}), **{k: v for k, v in values.items() if v is not None}}


def bind(**values: Any) -> None:
    """Add ids to the current context (the rest of this request, task or thread)."""
    _context.set(_with(values))


@contextmanager
def log_context(**values: Any) -> Iterator[None]:
    """Ids for the records made inside the block, restored afterwards."""
    token = _context.set(_with(values))
    try:
        yield
    finally:
        _context.reset(token)


def bind_process(**values: Any) -> None:
    """Ids for every record of this process, in every thread (a worker's name)."""
    _process_context.update({k: v for k, v in values.items() if v is not None})


def current_context() -> dict[str, Any]:
    return {**_process_context, **(_context.get() or {})}


class ContextFilter(logging.Filter):
    """Copies the bound ids onto each record (an id given with `extra=` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in current_context().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class Scrubber:
    """Replaces each secret, as written and as JSON escapes it, with REDACTED."""

    def __init__(self, secrets: Iterable[str | None]) -> None:
        found = {secret for secret in secrets if secret and len(secret) >= MIN_SECRET_CHARS}
        variants = set(found)
        for secret in found:
            variants.add(json.dumps(secret)[1:-1])
        # Longest first, so that a secret containing another is replaced whole.
        self.secrets = sorted(variants, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


# Record attributes that are never fields of a JSON line: logging's own, and uvicorn's copy of
# each message with terminal colour codes (the plain `event` says the same).
NOT_FIELDS = (*RESERVED_ATTRS, "color_message")


class JsonLogFormatter(JsonFormatter):
    def __init__(self, scrub: Scrubber) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger", "message": "event"},
            reserved_attrs=NOT_FIELDS,
            timestamp=True,
            json_ensure_ascii=False,
        )
        self.scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        return self.scrub(super().format(record))


class TextLogFormatter(logging.Formatter):
    """The readable line, with the bound ids at its end: `... [job_id=3 attempt=1]`."""

    def __init__(self, scrub: Scrubber) -> None:
        super().__init__(TEXT_FORMAT)
        self.scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = [
            f"{name}={getattr(record, name)}" for name in CONTEXT_FIELDS if hasattr(record, name)
        ]
        if ids:
            line = f"{line} [{' '.join(ids)}]"
        return self.scrub(line)


def json_line(level: str, logger: str, event: str) -> str:
    """A record as JSON text without the logging machinery, for code that must not take its
    locks (a signal handler), with the process's ids."""
    record = {
        "level": level,
        "logger": logger,
        "event": event,
        "timestamp": datetime.now(UTC).isoformat(),
        **_process_context,
    }
    return json.dumps(record, ensure_ascii=False)


def url_password(url: str | None) -> str | None:
    """The password in a URL (a database's or a broker's), if it holds one."""
    if not url:
        return None
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None


def settings_secrets(settings: Settings) -> list[str | None]:
    return [
        settings.api_key,
        settings.metrics_token,
        settings.notify_secret,
        url_password(settings.database_url),
        url_password(settings.celery_broker_url),
    ]


_HANDLER_MARK = "_cifar_jobs_handler"
# uvicorn's own loggers: their records go through the root handler like any other (one format,
# scrubbed); its access line is replaced by the API's own (app/observe.py), which names the route
# and carries the request id.
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error")
UVICORN_ACCESS = "uvicorn.access"


def configure_logging(settings: Settings, *, extra_secrets: Iterable[str | None] = ()) -> None:
    """Install the root handler for LOG_FORMAT and LOG_LEVEL (replacing one installed before by
    this function, and leaving any other, such as a test runner's, in place)."""
    scrub = Scrubber([*settings_secrets(settings), *extra_secrets])
    formatter: logging.Formatter = (
        JsonLogFormatter(scrub) if settings.log_format == "json" else TextLogFormatter(scrub)
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(ContextFilter())
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    # Warnings (a library's deprecation, Celery's running-as-root notice) become records too.
    logging.captureWarnings(True)
    for name in UVICORN_LOGGERS:
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    logging.getLogger(UVICORN_ACCESS).disabled = True
