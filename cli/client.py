"""The HTTP client: connection settings, one request helper, and every failure turned into a
one-line CliError (never an httpx traceback)."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from cli.config import StoredLogin, config_path
from cli.errors import EXIT_USAGE, CliError, UsageError

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_SECONDS = 30.0
URL_VARIABLE = "CIFAR_JOBS_URL"
TOKEN_VARIABLE = "CIFAR_JOBS_TOKEN"
# The older name, still read: the server's API_KEY is the built-in admin's token.
API_KEY_VARIABLE = "CIFAR_JOBS_API_KEY"
# The header the API reads a user's token or its API_KEY from.
TOKEN_HEADER = "X-API-Key"
# Answers that mean the request itself was wrong (exit status 2), not that something failed.
REQUEST_ERROR_STATUSES = (400, 413, 415, 422)


class ApiUnavailable(CliError):
    """The API could not be reached or answered 503: the same request may work later."""

    def __init__(self, message: str, *, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


def _check_url(url: str) -> str:
    url = url.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"the API URL must look like {DEFAULT_URL}, not {url!r}")
    return url


@dataclass(frozen=True)
class Connection:
    url: str
    token: str | None
    timeout_seconds: float
    # Where the token came from, for the messages that ask to check it: "--token",
    # "CIFAR_JOBS_TOKEN", "CIFAR_JOBS_API_KEY" or the config file's path.
    token_source: str | None = None

    @classmethod
    def from_options(
        cls,
        url: str | None,
        token: str | None,
        timeout_seconds: float | None,
        stored: StoredLogin | None = None,
    ) -> Connection:
        """Flags first, then the environment, then what `cifar-jobs login` stored, then the
        defaults. The stored token goes only to the URL stored with it."""
        url = _check_url(
            url or os.environ.get(URL_VARIABLE) or (stored and stored.url) or DEFAULT_URL
        )
        source: str | None = None
        if token is not None:
            source = "--token"
        else:
            for variable in (TOKEN_VARIABLE, API_KEY_VARIABLE):
                if os.environ.get(variable):
                    token, source = os.environ[variable], variable
                    break
            else:
                if stored is not None and stored.url == url:
                    token, source = stored.token, str(config_path())
        timeout = DEFAULT_TIMEOUT_SECONDS if timeout_seconds is None else timeout_seconds
        if timeout <= 0:
            raise UsageError("--timeout must be a positive number of seconds")
        return cls(url, token or None, timeout, source if token else None)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _connection_failure(error: httpx.TransportError, connection: Connection) -> ApiUnavailable:
    """What went wrong at the network level, in words: the OSError under httpx's exception
    says more than its text ("[Errno 111] Connection refused")."""
    url = connection.url
    if isinstance(error, httpx.ConnectTimeout):
        return ApiUnavailable(
            f"cannot reach the API at {url}: no connection within {connection.timeout_seconds:g} s"
        )
    if isinstance(error, httpx.TimeoutException):
        return ApiUnavailable(
            f"the API at {url} did not answer within {connection.timeout_seconds:g} s "
            "(a longer --timeout may help)"
        )
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            host = urlsplit(url).hostname
            return ApiUnavailable(f"cannot reach the API at {url}: unknown host {host}")
        if isinstance(cause, OSError) and cause.errno is not None:
            reason = (
                "connection refused"
                if cause.errno == errno.ECONNREFUSED
                else (cause.strerror or str(cause)).lower()
            )
            return ApiUnavailable(f"cannot reach the API at {url}: {reason}")
        cause = cause.__cause__ or cause.__context__
    if isinstance(error, httpx.ConnectError):
        return ApiUnavailable(f"cannot reach the API at {url}: {_one_line(str(error))}")
    return ApiUnavailable(
        f"lost the connection to the API at {url}: {_one_line(str(error)) or type(error).__name__}"
    )


def _retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        return float(value)
    except ValueError:
        return None


def error_from_response(
    response: httpx.Response, connection: Connection, subject: str | None
) -> CliError:
    """The API's JSON error ({"error", "detail", "fields"}) as one line. `subject` ("job 42")
    names what a 404 is about."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    error = body.get("error")
    if isinstance(error, dict):  # {"error": {"code", "message"}}
        code, message = str(error.get("code") or ""), error.get("message")
    else:
        code, message = str(error or ""), None
    detail = _one_line(
        str(message or body.get("detail") or f"{response.status_code} {response.reason_phrase}")
    )
    status = response.status_code
    if status == 401:
        if connection.token is None:
            return CliError(
                f"the API needs a token: pass --token, set {TOKEN_VARIABLE} or run cifar-jobs login"
            )
        # A token the API knows says why it is refused (revoked, its user disabled); any other
        # value is simply not the key or a token.
        why = "it is not the key or a user's token" if code in ("", "unauthorized") else detail
        return CliError(f"the API refused the token from {connection.token_source}: {why}")
    if status == 403:
        return CliError(f"not allowed: {detail}")
    if status == 429:
        retry_after = _retry_after_seconds(response)
        later = f" (retry after {retry_after:g} s)" if retry_after is not None else ""
        return CliError(f"over your quota{later}: {detail}")
    if status == 404:
        if code == "not_found" and detail.startswith("Nothing here"):
            # app.main's answer for a path that no route serves: the server predates the
            # command (a missing job or experiment has its own answer).
            path = response.request.url.path
            return CliError(
                f"the API at {connection.url} has no {path} route (is the server older than "
                "this client?)"
            )
        if subject is not None and code != "checkpoint_not_found":
            return CliError(f"{subject} not found")
        return CliError(detail)
    if status in REQUEST_ERROR_STATUSES:
        fields = body.get("fields")
        if isinstance(fields, list) and fields:
            detail = "; ".join(
                _one_line(f"{item.get('field', 'body')}: {item.get('message', '')}")
                for item in fields
                if isinstance(item, dict)
            )
        return CliError(detail, exit_status=EXIT_USAGE)
    if status == 503:
        retry_after = _retry_after_seconds(response)
        if retry_after is not None:
            detail = f"({code or 503}, retry after {retry_after:g} s): {detail}"
        else:
            detail = f"({code or 503}): {detail}"
        return ApiUnavailable(f"the API is unavailable {detail}", retry_after_seconds=retry_after)
    if status == 409:
        return CliError(detail)
    return CliError(f"the API answered {status}{f' ({code})' if code else ''}: {detail}")


class ApiClient:
    """One connection pool for a command's requests; every method raises CliError on failure."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        headers = {"User-Agent": "cifar-jobs-cli"}
        if connection.token is not None:
            headers[TOKEN_HEADER] = connection.token
        self._http = httpx.Client(
            base_url=connection.url, headers=headers, timeout=connection.timeout_seconds
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        subject: str | None = None,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """The answer when it is 2xx; a CliError otherwise."""
        try:
            response = self._http.request(
                method,
                path,
                params={k: v for k, v in (params or {}).items() if v is not None},
                json=json_body,
                headers=headers,
            )
        except httpx.TransportError as error:
            raise _connection_failure(error, self.connection) from None
        if not response.is_success:
            raise error_from_response(response, self.connection, subject)
        return response

    def get_json(self, path: str, *, subject: str | None = None, **params: Any) -> Any:
        return self._json(self.request("GET", path, subject=subject, params=params))

    def post_json(
        self,
        path: str,
        body: Any = None,
        *,
        subject: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        return self._json(
            self.request("POST", path, subject=subject, json_body=body, headers=headers)
        )

    def patch_json(self, path: str, body: Any, *, subject: str | None = None) -> Any:
        return self._json(self.request("PATCH", path, subject=subject, json_body=body))

    def get_bytes(self, path: str, *, subject: str | None = None, **params: Any) -> bytes:
        return self.request("GET", path, subject=subject, params=params).content

    @contextmanager
    def stream(
        self, path: str, *, subject: str | None = None, headers: dict[str, str] | None = None
    ) -> Iterator[httpx.Response]:
        """A GET whose body is read in chunks by the caller; network failures while reading
        become CliError too."""
        try:
            with self._http.stream("GET", path, headers=headers) as response:
                if not response.is_success:
                    response.read()
                    raise error_from_response(response, self.connection, subject)
                yield response
        except httpx.TransportError as error:
            raise _connection_failure(error, self.connection) from None

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise CliError(
                f"the answer from {self.connection.url}{response.request.url.path} is not JSON "
                "(is --url the training-job API?)"
            ) from None
