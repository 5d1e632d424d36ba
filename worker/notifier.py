"""The notification sender: a thread of each worker process that turns ended jobs into
deliveries (the outbox reading the job event log) and posts the due ones, outside any training
loop and any request. Several workers each run one; the outbox's cursor is read by one of them
at a time, a delivery is taken by one sender at a time, and one that a dead sender held becomes
due again, so every notification is delivered at least once."""

from __future__ import annotations

import logging
import threading
from urllib.parse import urlsplit

from jobs.db import session_scope
from jobs.notifications import delivery, outbox
from jobs.settings import Settings

logger = logging.getLogger(__name__)

# How often an idle sender looks for ended jobs and due rows (two indexed queries).
POLL_SECONDS = 1.0


def read_outbox() -> int:
    """Make the deliveries owed for the jobs that ended since the last pass; how many status
    events were read."""
    read = 0
    while True:
        with session_scope() as session:
            batch = outbox.consume(session)
        read += batch
        if batch < outbox.BATCH:
            return read


def send_due(settings: Settings) -> int:
    """One pass: take the due rows, post each, record each outcome; returns how many were
    posted."""
    with session_scope() as session:
        due = delivery.take_due(session, settings)
    for item in due:
        # The host only: a webhook URL's path is often a secret of its own.
        host = urlsplit(item.url).hostname
        outcome = delivery.post(item, settings)
        with session_scope() as session:
            state = delivery.record_outcome(session, item, outcome, settings)
        extra = {"delivery_id": item.delivery_id, f"{item.subject}_id": item.subject_id}
        if outcome.delivered:
            logger.info(
                "notification %s (%s.%s) delivered to %s",
                item.delivery_id, item.subject, item.event, host, extra=extra,
            )  # fmt: skip
        else:
            logger.warning(
                "notification %s (%s.%s) to %s: attempt %s %s; now %s",
                item.delivery_id, item.subject, item.event, host, item.attempt,
                outcome.error, state, extra=extra,
            )  # fmt: skip
    return len(due)


class Notifier(threading.Thread):
    def __init__(self, settings: Settings) -> None:
        super().__init__(name="notifier", daemon=True)
        self.settings = settings
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                read_outbox()
                sent = send_due(self.settings)
            except Exception:  # the database may be restarting; the next pass retries
                logger.exception("notification pass failed")
                sent = 0
            if not sent:
                self._done.wait(POLL_SECONDS)

    def stop(self) -> None:
        self._done.set()
