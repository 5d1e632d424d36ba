"""Celery tasks: thin shells that pass a job id to the runner."""

from __future__ import annotations

import logging

from celery.exceptions import Reject
from celery.signals import setup_logging, worker_ready, worker_shutdown, worker_shutting_down

from jobs import wiring
from jobs.logs import bind_process, configure_logging
from jobs.queue import RUN_JOB_TASK, get_celery
from jobs.settings import get_settings
from worker.notifier import Notifier
from worker.reconciler import Reconciler
from worker.runner import run_job, shutting_down, worker_name
from worker.telemetry import serve_metrics

logger = logging.getLogger(__name__)
# The worker changes jobs: the reactions to their events are installed before any task runs.
wiring.connect()
celery = get_celery()
_reconciler: Reconciler | None = None
_notifier: Notifier | None = None

SHUTTING_DOWN = "worker shutting down"


class QuietShutdownRejects(logging.Filter):
    """Celery logs every rejected message as a warning with its traceback (the reject policy
    of celery.app.trace). A message left in the queue because this worker is stopping is the
    expected end of a warm shutdown (its job's own message, sent again as the job was handed
    back, arrives before the worker stops), and the task has said so in one line: drop
    Celery's record of it."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, Reject) and error.reason == SHUTTING_DOWN)


logging.getLogger("celery.app.trace").addFilter(QuietShutdownRejects())


@celery.task(name=RUN_JOB_TASK)
def run_job_task(job_id: object) -> str:
    if not isinstance(job_id, int) or isinstance(job_id, bool):
        logger.error("dropping a message with a malformed job id: %r", job_id)
        return "malformed"
    if shutting_down.is_set():
        # Leave the message for another worker rather than claiming a job only to release it.
        logger.info(
            "message for job %s left in the queue for another worker: this one is stopping",
            job_id,
        )
        raise Reject(SHUTTING_DOWN, requeue=True)
    return run_job(job_id, settings=get_settings())


@setup_logging.connect
def _configure_logging(**_: object) -> None:
    """The service's logging (LOG_FORMAT, LOG_LEVEL) instead of Celery's: a receiver of this
    signal tells Celery to leave logging alone, so its own records go through the same handler."""
    settings = get_settings()
    bind_process(worker=worker_name(settings))
    configure_logging(settings)


@worker_ready.connect
def _start_reconciler(**_: object) -> None:
    global _reconciler, _notifier
    settings = get_settings()
    serve_metrics(settings)
    _reconciler = Reconciler(settings)
    _reconciler.start()
    _notifier = Notifier(settings)
    _notifier.start()


@worker_shutting_down.connect
def _stop_training(**_: object) -> None:
    shutting_down.set()


@worker_shutdown.connect
def _stop_reconciler(**_: object) -> None:
    if _notifier is not None:
        _notifier.stop()
    if _reconciler is not None:
        _reconciler.stop()
