"""Sending the deliveries the outbox made: take the due ones, POST each signed, record the
outcome.

A sender (worker/notifier.py, a thread of each worker) takes due rows, marking each taken for
a while (so two senders do not post the same row at once), posts it, and records the outcome:
delivered, or due again after a backoff (NOTIFY_BACKOFF_SECONDS, doubling, at most an hour),
or failed after NOTIFY_MAX_ATTEMPTS, or failed at once when retrying cannot help (a refused
address, a redirect). A sender killed mid-post leaves the row taken until that mark runs out,
then due again: delivery is at least once, and the receiver tells a repeat by
X-Notification-ID, the same on every attempt.

Each POST is signed: X-Signature-SHA256 is `sha256=` and the hex HMAC-SHA256, keyed with
NOTIFY_SECRET, of X-Notification-Timestamp, a dot, and the body's bytes; a receiver recomputes it
and refuses an old timestamp (a replay).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from sqlalchemy import select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from jobs.notifications.policy import Refused, resolve_checked
from jobs.settings import Settings
from jobs.tables import (
    DELIVERY_DELIVERED,
    DELIVERY_FAILED,
    DELIVERY_PENDING,
    NotificationDelivery,
    utcnow,
)

SIGNATURE_HEADER = "X-Signature-SHA256"
TIMESTAMP_HEADER = "X-Notification-Timestamp"
ID_HEADER = "X-Notification-ID"
EVENT_HEADER = "X-Notification-Event"
USER_AGENT = "cifar-jobs-notifier"
MAX_BACKOFF_SECONDS = 3600.0
# How many due rows one sender takes at a time.
BATCH = 20


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Signature-SHA256 value: sha256=hex(HMAC-SHA256(secret, timestamp + "." + body))."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


@dataclass(frozen=True)
class Due:
    id: int
    delivery_id: str
    event: str
    subject: str
    subject_id: int
    url: str
    body: bytes
    attempt: int


def take_due(session: Session, settings: Settings, *, now: datetime | None = None) -> list[Due]:
    """Mark up to BATCH due rows as taken by this sender, counting the attempt; the caller
    commits, then sends. A row stays taken for two timeouts and a margin: if this sender dies
    the row is due again after that."""
    now = now or utcnow()
    hold = timedelta(seconds=2 * settings.notify_timeout_seconds + 5)
    rows = session.execute(
        select(NotificationDelivery)
        .where(
            NotificationDelivery.state == DELIVERY_PENDING,
            NotificationDelivery.next_attempt_at <= now,
        )
        .order_by(NotificationDelivery.next_attempt_at, NotificationDelivery.id)
        .limit(BATCH)
    ).scalars()
    taken = []
    for row in list(rows):
        claimed = session.execute(
            update(NotificationDelivery)
            .where(
                NotificationDelivery.id == row.id,
                NotificationDelivery.state == DELIVERY_PENDING,
                NotificationDelivery.attempts == row.attempts,
            )
            .values(attempts=row.attempts + 1, next_attempt_at=now + hold)
            .execution_options(synchronize_session=False)
        )
        assert isinstance(claimed, CursorResult)
        if claimed.rowcount == 1:
            taken.append(
                Due(row.id, row.delivery_id, row.event, row.subject, row.subject_id, row.url,
                    row.body.encode(), row.attempts + 1)
            )  # fmt: skip
    return taken


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    status_code: int | None = None
    error: str | None = None
    permanent: bool = False


def _pinned_request(due: Due, address: str) -> tuple[str, str]:
    """The URL with the checked address in place of the host, and the Host header to send."""
    parts = urlsplit(due.url)
    host = parts.hostname or ""
    netloc = f"[{address}]" if ":" in address else address
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    default_port = 443 if parts.scheme == "https" else 80
    host_header = host if parts.port in (None, default_port) else f"{host}:{parts.port}"
    if ":" in host and not host.startswith("["):
        host_header = f"[{host}]" + ("" if parts.port is None else f":{parts.port}")
    return pinned, host_header


def _redirect_outcome(response: httpx.Response) -> Outcome:
    """A receiver that answers with a redirect will answer it again: fail at once, saying
    where it pointed (the host only), so the submitter can give the final URL."""
    location = response.headers.get("location", "")
    target = urlsplit(location).hostname if location else None
    where = f" to {target}" if target else ""
    return Outcome(
        False,
        response.status_code,
        f"answered {response.status_code}, a redirect{where}; notifications are not "
        "redirected: give notify.url the final address",
        permanent=True,
    )


def post(due: Due, settings: Settings, *, timestamp: str | None = None) -> Outcome:
    """One attempt: resolve and check the host, POST the signed body to a checked address."""
    if settings.notify_secret is None:
        return Outcome(False, error="NOTIFY_SECRET is not set on the workers")
    try:
        addresses = resolve_checked(due.url, settings)
    except Refused as error:
        return Outcome(False, error=f"refused: {error}", permanent=True)
    except OSError as error:
        return Outcome(False, error=str(error))
    pinned, host_header = _pinned_request(due, addresses[0])
    timestamp = timestamp or str(int(time.time()))
    headers = {
        "Host": host_header,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        ID_HEADER: due.delivery_id,
        EVENT_HEADER: f"{due.subject}.{due.event}",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(settings.notify_secret, timestamp, due.body),
    }
    try:
        # No proxy from the environment, no redirect: the POST goes to the checked address only.
        with httpx.Client(
            timeout=settings.notify_timeout_seconds, trust_env=False, follow_redirects=False
        ) as client:
            response = client.post(
                pinned,
                content=due.body,
                headers=headers,
                extensions={"sni_hostname": urlsplit(due.url).hostname or ""},
            )
    except httpx.HTTPError as error:
        return Outcome(False, error=f"{type(error).__name__}: {error}"[:500])
    if 200 <= response.status_code < 300:
        return Outcome(True, response.status_code)
    if response.is_redirect:
        return _redirect_outcome(response)
    return Outcome(False, response.status_code, f"answered {response.status_code}")


def backoff_seconds(attempt: int, settings: Settings) -> float:
    return float(min(settings.notify_backoff_seconds * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS))


def record_outcome(
    session: Session, due: Due, outcome: Outcome, settings: Settings, *, now: datetime | None = None
) -> str:
    """Store what the attempt gave; returns the row's state after it."""
    now = now or utcnow()
    if outcome.delivered:
        values: dict[str, Any] = {"state": DELIVERY_DELIVERED, "delivered_at": now}
    elif outcome.permanent or due.attempt >= settings.notify_max_attempts:
        values = {"state": DELIVERY_FAILED}
    else:
        values = {
            "next_attempt_at": now + timedelta(seconds=backoff_seconds(due.attempt, settings))
        }
    session.execute(
        update(NotificationDelivery)
        .where(
            NotificationDelivery.id == due.id,
            NotificationDelivery.state == DELIVERY_PENDING,
            NotificationDelivery.attempts == due.attempt,
        )
        .values(last_status=outcome.status_code, last_error=outcome.error, **values)
        .execution_options(synchronize_session=False)
    )
    return str(values.get("state", DELIVERY_PENDING))
