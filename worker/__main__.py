"""`python -m worker`: one Celery worker process per GPU, training WORKER_CONCURRENCY jobs at
once on it (default 1)."""

from __future__ import annotations

import logging
import os
import sys

from jobs.artifacts.startup import check_artifact_store
from jobs.logs import bind_process, configure_logging, json_line
from jobs.settings import get_settings
from worker.runner import worker_name
from worker.tasks import celery


def main(argv: list[str] | None = None) -> None:
    settings = get_settings()
    bind_process(worker=worker_name(settings))
    configure_logging(settings)
    # A malformed ARTIFACT_URL or a missing bucket stops the worker here, saying which.
    try:
        check_artifact_store(settings)
    except ValueError as error:
        logging.getLogger("worker").error("cannot start: %s", error)
        raise SystemExit(1) from None
    quiet: list[str] = []
    if settings.log_format == "json":
        # Every line JSON: no start-up banner, and the few lines Celery prints from its signal
        # handlers (where logging's locks must not be taken) written as JSON records.
        quiet = ["--quiet"]
        from celery.apps import worker as celery_worker

        celery_worker.safe_say = _say_as_json
    # One job: Celery's solo pool runs it in the main thread. Several: one thread per job, all on
    # this process's device (PyTorch releases the GIL in its kernels).
    pool = "solo" if settings.worker_concurrency == 1 else "threads"
    celery.worker_main(
        [
            *quiet,
            "worker",
            f"--pool={pool}",
            f"--concurrency={settings.worker_concurrency}",
            "--queues=training",
            f"--hostname={worker_name(settings)}@%h",
            f"--loglevel={settings.log_level}",
            "--without-gossip",
            "--without-mingle",
            *(argv if argv is not None else sys.argv[1:]),
        ]
    )


def _say_as_json(message: str, _file: object = None) -> None:
    os.write(2, (json_line("WARNING", "celery.apps.worker", message) + "\n").encode())


if __name__ == "__main__":
    main()
