"""`python -m worker`: one Celery worker process running one job at a time (one per GPU)."""

from __future__ import annotations

import logging
import sys

from jobs.settings import get_settings
from worker.runner import worker_name
from worker.tasks import celery


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = get_settings()
    celery.worker_main(
        [
            "worker",
            "--pool=solo",
            "--concurrency=1",
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
