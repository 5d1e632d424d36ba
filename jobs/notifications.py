"""Notifications: a signed POST to a URL of the submitter's when a job or an experiment ends.

The database is the outbox. The status change that ends a job writes, in its own transaction, a
`notification_deliveries` row holding the exact body to send (the job's summary, or the
experiment's when its last job ended); nothing is sent from a request or from the training loop.
A sender (worker/notifier.py, a thread of each worker) takes due rows, marking each taken for
a while (so two senders do not post the same row at once), posts it, and records the outcome:
delivered, or due again after a backoff (NOTIFY_BACKOFF_SECONDS, doubling, at most an hour),
or failed after NOTIFY_MAX_ATTEMPTS. A sender killed mid-post leaves the row taken until that
mark runs out, then due again: delivery is at least once, and the receiver tells a repeat by
X-Notification-ID, the same on every attempt.

Each POST is signed: X-Signature-SHA256 is `sha256=` and the hex HMAC-SHA256, keyed with
NOTIFY_SECRET, of X-Notification-Timestamp, a dot, and the body's bytes; a receiver recomputes it
and refuses an old timestamp (a replay).

Where it may be sent (no server-side request forgery): http and https URLs only, no credentials
in them. With NOTIFY_ALLOWED_HOSTS empty, any host whose every address is public; loopback,
private, link-local, shared, reserved and multicast addresses are refused. With it set, only
those hosts, whatever their addresses (the operator vouched for them). Names are resolved when
sending, every address checked, and the connection made to a checked address, so a name that
changes its answer between the check and the connection cannot redirect the POST.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import math
import re
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from jobs.settings import Settings
from jobs.tables import (
    TERMINAL_STATUSES,
    Experiment,
    Job,
    JobStatus,
    NotificationDelivery,
    utcnow,
)

SIGNATURE_HEADER = "X-Signature-SHA256"
TIMESTAMP_HEADER = "X-Notification-Timestamp"
ID_HEADER = "X-Notification-ID"
EVENT_HEADER = "X-Notification-Event"
USER_AGENT = "cifar-jobs-notifier"
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
STATES = (PENDING, DELIVERED, FAILED)
MAX_BACKOFF_SECONDS = 3600.0
MAX_URL_CHARS = 2000
# What the schema says of notify.url (printable ASCII: http or https, a host part, then path,
# query or fragment); url_problem says the rest, which depends on the server's settings.
URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[-A-Za-z0-9._~%!$&'()*+,;=:\[\]]+(?:[/?#][!-~]*)?$"
# How many due rows one sender takes at a time.
BATCH = 20


# -- where a notification may go ---------------------------------------------------------------


def refused_address(address: str) -> bool:
    """Not a public unicast address: loopback, private, link-local, shared, reserved, multicast,
    unspecified (an IPv4 address inside IPv6 is judged as IPv4)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def _ip_literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def url_problem(url: str, settings: Settings) -> str | None:
    """Why this URL may not receive notifications, from the URL alone (no name is resolved
    here; that is done, and checked, when sending); None if it may."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        return f"not a valid URL ({error})"
    if parts.scheme not in ("http", "https"):
        return "must be an http or https URL"
    if parts.username is not None or parts.password is not None:
        return "must not hold credentials (user:password@)"
    if not re.fullmatch(URL_PATTERN, url):
        return "must be printable ASCII without spaces (percent-encode the rest)"
    host = (parts.hostname or "").lower()
    if not host:
        return "must name a host"
    if port == 0:
        return "port 0 is not a port"
    allowed = settings.notify_allowed_hosts
    if allowed:
        if host not in allowed:
            return f"host {host} is not in NOTIFY_ALLOWED_HOSTS"
        return None
    literal = _ip_literal(host)
    if literal is not None and refused_address(literal):
        return f"{host} is a loopback, private, link-local or otherwise non-public address"
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        return f"{host} names this machine or a private network"
    return None


class Refused(Exception):
    """The destination is not allowed; trying again will not change that."""


def resolve_checked(url: str, settings: Settings) -> list[str]:
    """The addresses to connect to for this URL's host, every one allowed; Refused otherwise."""
    problem = url_problem(url, settings)
    if problem is not None:
        raise Refused(f"notify.url {problem}")
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise OSError(f"cannot resolve {host}: {error}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not settings.notify_allowed_hosts:
        bad = [address for address in addresses if refused_address(address)]
        if bad:
            raise Refused(f"{host} resolves to a non-public address ({', '.join(bad)})")
    if not addresses:
        raise OSError(f"{host} has no address")
    return addresses


# -- what is sent --------------------------------------------------------------------------------


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Signature-SHA256 value: sha256=hex(HMAC-SHA256(secret, timestamp + "." + body))."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _number(value: float | None) -> float | None:
    # A diverged run's NaN loss is not JSON.
    return value if value is not None and math.isfinite(value) else None


JOB_SUMMARY_FIELDS = (
    "id", "name", "tags", "block", "dataset", "status", "error_reason", "error", "experiment_id",
    "epochs_done", "epochs_total", "attempt", "params", "macs",
)  # fmt: skip


def job_summary(job: Job) -> dict[str, Any]:
    summary = {name: getattr(job, name) for name in JOB_SUMMARY_FIELDS}
    summary.update(
        best_test_accuracy=_number(job.best_test_accuracy),
        final_test_accuracy=_number(job.final_test_accuracy),
        final_train_loss=_number(job.final_train_loss),
        created_at=_iso(job.created_at),
        started_at=_iso(job.started_at),
        finished_at=_iso(job.finished_at),
        links={"self": f"/jobs/{job.id}", "metrics": f"/jobs/{job.id}/metrics"},
    )
    return summary


def experiment_summary(experiment: Experiment, jobs: list[Job], status: str) -> dict[str, Any]:
    counts = {value.value: 0 for value in JobStatus}
    for job in jobs:
        counts[job.status] += 1
    return {
        "id": experiment.id,
        "name": experiment.name,
        "preset": experiment.preset,
        "tags": list(experiment.tags),
        "status": status,
        "status_counts": counts,
        "job_count": len(jobs),
        "created_at": _iso(experiment.created_at),
        "jobs": [
            {
                "id": job.id,
                "name": job.name,
                "block": job.block,
                "status": job.status,
                "error_reason": job.error_reason,
                "epochs_done": job.epochs_done,
                "epochs_total": job.epochs_total,
                "best_test_accuracy": _number(job.best_test_accuracy),
                "final_test_accuracy": _number(job.final_test_accuracy),
                "final_train_loss": _number(job.final_train_loss),
            }
            for job in jobs
        ],
        "links": {"self": f"/experiments/{experiment.id}"},
    }


# -- the outbox: rows made with the status change -----------------------------------------------


def _wanted(spec: dict[str, Any] | None, status: str) -> str | None:
    """The URL to notify of this status, if the spec asks for it."""
    notify = (spec or {}).get("notify")
    if not notify or status not in notify.get("events", ()):
        return None
    return str(notify["url"])


def _add_delivery(
    session: Session, subject: str, subject_id: int, event: str, url: str, body: dict[str, Any]
) -> None:
    from jobs.db import insert_ignoring_duplicates

    now = utcnow()
    delivery_id = uuid.uuid4().hex
    payload = {
        "delivery_id": delivery_id,
        "event": event,
        "subject": subject,
        "created_at": now.isoformat(),
        subject: body,
    }
    # One row per subject and event: a status is final, so this happens once; the unique key
    # makes sure of it.
    insert_ignoring_duplicates(
        session,
        NotificationDelivery,
        [
            {
                "delivery_id": delivery_id,
                "subject": subject,
                "subject_id": subject_id,
                "event": event,
                "url": url,
                "body": json.dumps(payload, separators=(",", ":"), ensure_ascii=False),
                "state": PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
        ],
    )


def job_ended(session: Session, job_id: int, status: str) -> None:
    """Called in the transaction that ended the job: queue the job's notification, and the
    experiment's if this was its last job to end."""
    # populate_existing: the change was an UPDATE statement; a Job object this session loaded
    # before it (cancel_job's) would still show the old row.
    job = session.execute(
        select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
    ).scalar_one()
    url = _wanted(job.spec, status)
    if url is not None:
        _add_delivery(session, "job", job_id, status, url, job_summary(job))
    if job.experiment_id is not None:
        _experiment_job_ended(session, job.experiment_id)


def _experiment_job_ended(session: Session, experiment_id: int) -> None:
    spec = session.execute(select(Experiment.spec).where(Experiment.id == experiment_id)).scalar()
    if not (spec or {}).get("notify"):
        return  # nothing to tell: no lock taken
    # The experiment's row is locked (PostgreSQL): two of its jobs ending at once then see each
    # other's end, so exactly one of them finds the experiment ended.
    experiment = session.execute(
        select(Experiment).where(Experiment.id == experiment_id).with_for_update(key_share=True)
    ).scalar_one_or_none()
    if experiment is None or not (experiment.spec or {}).get("notify"):
        return
    jobs = list(
        session.execute(
            select(Job)
            .where(Job.experiment_id == experiment_id)
            .order_by(Job.id)
            .execution_options(populate_existing=True)
        )
        .scalars()
        .all()
    )
    if any(job.status not in TERMINAL_STATUSES for job in jobs):
        return
    from jobs.experiments import experiment_status

    status = experiment_status(job.status for job in jobs).value
    url = _wanted(experiment.spec, status)
    if url is not None:
        _add_delivery(
            session, "experiment", experiment_id, status, url,
            experiment_summary(experiment, jobs, status),
        )  # fmt: skip


def delivery_counts(session: Session) -> dict[str, int]:
    counts = dict.fromkeys(STATES, 0)
    for state, count in session.execute(
        select(NotificationDelivery.state, func.count()).group_by(NotificationDelivery.state)
    ):
        counts[state] = int(count)
    return counts


# -- the sender's side ---------------------------------------------------------------------------


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
        .where(NotificationDelivery.state == PENDING, NotificationDelivery.next_attempt_at <= now)
        .order_by(NotificationDelivery.next_attempt_at, NotificationDelivery.id)
        .limit(BATCH)
    ).scalars()
    taken = []
    for row in list(rows):
        claimed = session.execute(
            update(NotificationDelivery)
            .where(
                NotificationDelivery.id == row.id,
                NotificationDelivery.state == PENDING,
                NotificationDelivery.attempts == row.attempts,
            )
            .values(attempts=row.attempts + 1, next_attempt_at=now + hold)
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount == 1:  # type: ignore[attr-defined]
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
    parts = urlsplit(due.url)
    host = parts.hostname or ""
    address = addresses[0]
    netloc = f"[{address}]" if ":" in address else address
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    default_port = 443 if parts.scheme == "https" else 80
    host_header = host if parts.port in (None, default_port) else f"{host}:{parts.port}"
    if ":" in host and not host.startswith("["):
        host_header = f"[{host}]" + ("" if parts.port is None else f":{parts.port}")
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
                pinned, content=due.body, headers=headers, extensions={"sni_hostname": host}
            )
    except httpx.HTTPError as error:
        return Outcome(False, error=f"{type(error).__name__}: {error}"[:500])
    if 200 <= response.status_code < 300:
        return Outcome(True, response.status_code)
    return Outcome(False, response.status_code, f"answered {response.status_code}")


def backoff_seconds(attempt: int, settings: Settings) -> float:
    return float(min(settings.notify_backoff_seconds * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS))


def record_outcome(
    session: Session, due: Due, outcome: Outcome, settings: Settings, *, now: datetime | None = None
) -> str:
    """Store what the attempt gave; returns the row's state after it."""
    now = now or utcnow()
    if outcome.delivered:
        values: dict[str, Any] = {"state": DELIVERED, "delivered_at": now}
    elif outcome.permanent or due.attempt >= settings.notify_max_attempts:
        values = {"state": FAILED}
    else:
        values = {
            "next_attempt_at": now + timedelta(seconds=backoff_seconds(due.attempt, settings))
        }
    session.execute(
        update(NotificationDelivery)
        .where(
            NotificationDelivery.id == due.id,
            NotificationDelivery.state == PENDING,
            NotificationDelivery.attempts == due.attempt,
        )
        .values(last_status=outcome.status_code, last_error=outcome.error, **values)
        .execution_options(synchronize_session=False)
    )
    return str(values.get("state", PENDING))
