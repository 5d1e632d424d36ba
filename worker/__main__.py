"""`python -m worker`: one Celery worker process per GPU, training WORKER_CONCURRENCY jobs at
once on it (default 1)."""

from __future__ import annotations

import logging
import sys

from jobs.artifacts.startup import check_artifact_store
from jobs.settings import get_settings
from worker.runner import worker_name
from worker.tasks import celery


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = get_settings()
    # A malformed ARTIFACT_URL or a missing bucket stops the worker here, saying which.
    check_artifact_store(settings)
    # One job: Celery's solo pool runs it in the main thread. Several: one thread per job, all on
    # this process's device (PyTorch releases the GIL in its kernels).
    pool = "solo" if settings.worker_concurrency == 1 else "threads"
    celery.worker_main(
        [
            "worker",
            f"--pool={pool}",
            f"--concurrency={settings.worker_concurrency}",
            "--queues=training",
            f"--hostname={worker_name(settings)}@%h",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            *(argv if argv is not None else sys.argv[1:]),
        ]
    )


if __name__ == "__main__":
    main()
