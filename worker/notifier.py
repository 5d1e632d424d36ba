"""The notification sender: a thread of each worker process that posts the due rows of the
outbox (jobs.notifications), outside any training loop and any request. Several workers each
run one; a row is taken by one sender at a time, and one that a dead sender held becomes due
again, so every notification is delivered at least once."""

from __future__ import annotations

import logging
import threading
from urllib.parse import urlsplit

from jobs import notifications
from jobs.db import session_scope
from jobs.settings import Settings

logger = logging.getLogger(__name__)

# How often an idle sender looks for due rows (one indexed query).
POLL_SECONDS = 1.0


def send_due(settings: Settings) -> int:
    """One pass: take the due rows, post each, record each outcome; returns how many were
    posted."""
    with session_scope() as session:
        due = notifications.take_due(session, settings)
    for item in due:
        # The host only: a webhook URL's path is often a secret of its own.
        host = urlsplit(item.url).hostname
        outcome = notifications.post(item, settings)
        with session_scope() as session:
            state = notifications.record_outcome(session, item, outcome, settings)
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
                sent = send_due(self.settings)
            except Exception:  # the database may be restarting; the next pass retries
                logger.exception("notification pass failed")
                sent = 0
            if not sent:
                self._done.wait(POLL_SECONDS)

    def stop(self) -> None:
        self._done.set()
