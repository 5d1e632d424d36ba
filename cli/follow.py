"""Following a job or an experiment until it ends: a live progress bar on a terminal (plain
lines in a pipe or a file), each epoch printed as it lands, polling about once a second."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli.client import ApiClient, ApiUnavailable
from cli.errors import EXIT_INTERRUPTED, CliError
from cli.render import (
    EPOCH_LINE_HEADER,
    decimal,
    epoch_line,
    experiment_header,
    experiment_jobs_table,
    job_status,
    percent,
    status_counts,
    varied_label,
)

POLL_SECONDS = 1.0
# An experiment's every job row in one answer (the API's most jobs of an experiment).
EXPERIMENT_ROWS = 1000
# A follower outlives a restart of the API or a busy database: it keeps polling through
# connection failures and 503 answers for this long before it gives up.
OUTAGE_SECONDS = 120.0
MAX_RETRY_WAIT_SECONDS = 10.0
T = TypeVar("T")


class _Poller:
    """Runs the follower's requests, riding out an API that is briefly unreachable or busy."""

    def __init__(self, console: Console, interval_seconds: float) -> None:
        self.console = console
        self.interval_seconds = interval_seconds
        self._outage_since: float | None = None

    def call(self, request: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """request(*args, **kwargs), or None after an outage (the wait already done)."""
        try:
            answer = request(*args, **kwargs)
        except ApiUnavailable as error:
            now = time.monotonic()
            if self._outage_since is None:
                self._outage_since = now
                self.console.print(f"{error.message}; still trying")
            elif now - self._outage_since > OUTAGE_SECONDS:
                raise CliError(f"{error.message} (gave up after {OUTAGE_SECONDS:g} s)") from None
            wait = min(error.retry_after_seconds or self.interval_seconds, MAX_RETRY_WAIT_SECONDS)
            time.sleep(max(wait, self.interval_seconds))
            return None
        if self._outage_since is not None:
            self._outage_since = None
            self.console.print("the API answers again")
        return answer

    def pause(self) -> None:
        time.sleep(self.interval_seconds)


def _progress(console: Console) -> Progress | None:
    """A live bar on a terminal; None in a pipe or a file, where plain lines are printed."""
    if not console.is_terminal:
        return None
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epochs  {task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _interrupted(what: str, cancel_command: str) -> CliError:
    return CliError(
        f"stopped following {what}; it goes on (cancel it with: {cancel_command})",
        exit_status=EXIT_INTERRUPTED,
    )


def _status_note(job: dict[str, Any]) -> str:
    note = f"job {job['id']}: {job_status(job)}"
    if job["status"] == "running" and job.get("worker"):
        note += f" on {job['worker']} (attempt {job['attempt']}/{job['max_attempts']})"
    return note


def _job_outcome(job: dict[str, Any]) -> str:
    status = job["status"]
    if status == "succeeded":
        return (
            f"job {job['id']} succeeded after {job['epochs_done']} epochs: best test accuracy "
            f"{percent(job.get('best_test_accuracy'))}, final "
            f"{percent(job.get('final_test_accuracy'))}, final train loss "
            f"{decimal(job.get('final_train_loss'))}"
        )
    if status == "failed":
        reason = f" ({job['error_reason']})" if job.get("error_reason") else ""
        error = f": {job['error']}" if job.get("error") else ""
        return f"job {job['id']} failed{reason} after {job['epochs_done']} epochs{error}"
    return f"job {job['id']} cancelled after {job['epochs_done']} epochs"


def follow_job(
    api: ApiClient, job_id: int, console: Console, *, interval_seconds: float = POLL_SECONDS
) -> int:
    """Print every epoch of the job as it lands, until it ends: 0 when it succeeded, 1 when it
    failed or was cancelled. Ctrl-C stops following and leaves the job running."""
    subject = f"job {job_id}"
    job = api.get_json(f"/jobs/{job_id}", subject=subject)  # fails at once: nothing to follow
    poller = _Poller(console, interval_seconds)
    progress = _progress(console)
    task = None
    if progress is not None:
        progress.start()
        task = progress.add_task(
            f"job {job_id}", total=job["epochs_total"], completed=0, status=job_status(job)
        )
    since_epoch = 0
    last_note = None
    try:
        while True:
            # The job first, then its epochs: an ended job's epochs are all recorded already,
            # so the epoch query that follows sees every one of them.
            polled = poller.call(api.get_json, f"/jobs/{job_id}", subject=subject)
            if polled is None:
                continue
            job = polled
            metrics = poller.call(
                api.get_json, f"/jobs/{job_id}/metrics", subject=subject, since_epoch=since_epoch
            )
            if metrics is None:
                continue
            note = _status_note(job)
            if note != last_note and not job["ended"]:
                console.print(note)
                last_note = note
            for row in metrics["metrics"]:
                if since_epoch == 0:
                    console.print(EPOCH_LINE_HEADER)
                console.print(epoch_line(row, metrics["epochs_total"]))
                since_epoch = row["epoch"]
            if progress is not None and task is not None:
                progress.update(
                    task,
                    total=metrics["epochs_total"],
                    completed=max(metrics["epochs_done"], since_epoch),
                    status=job_status(job),
                )
            if job["ended"]:
                break
            poller.pause()
    except KeyboardInterrupt:
        raise _interrupted(subject, f"cifar-jobs cancel {job_id}") from None
    finally:
        if progress is not None:
            progress.stop()
    console.print(_job_outcome(job))
    return 0 if job["status"] == "succeeded" else 1


def _experiment_job_note(row: dict[str, Any]) -> str:
    label = f"job {row['job_id']} {varied_label(row)}"
    if row["status"] == "running" and row["epochs_done"]:
        return (
            f"{label}: epoch {row['epochs_done']}/{row['epochs_total']}, train loss "
            f"{decimal(row.get('final_train_loss'))}, test accuracy "
            f"{percent(row.get('final_test_accuracy'))}"
        )
    if row["status"] == "pruned":
        rung = "" if row.get("rung") is None else f" at rung {row['rung']}"
        return (
            f"{label}: pruned{rung} after {row['epochs_done']}/{row['epochs_total']} epochs, "
            f"best test accuracy {percent(row.get('best_test_accuracy'))}"
        )
    if row["ended"]:
        return (
            f"{label}: {row['status']} after {row['epochs_done']}/{row['epochs_total']} epochs, "
            f"best test accuracy {percent(row.get('best_test_accuracy'))}"
        )
    return f"{label}: {row['status']}"


def follow_experiment(
    api: ApiClient, experiment_id: int, console: Console, *, interval_seconds: float = POLL_SECONDS
) -> int:
    """Print each job's progress as its epochs land, then the summary table: 0 when every job
    succeeded, 1 otherwise. Ctrl-C stops following and leaves the jobs running."""
    subject = f"experiment {experiment_id}"
    path = f"/experiments/{experiment_id}"
    experiment = api.get_json(path, subject=subject, limit=EXPERIMENT_ROWS)
    poller = _Poller(console, interval_seconds)
    progress = _progress(console)
    overall = None
    job_tasks: dict[int, Any] = {}
    if progress is not None:
        progress.start()
        overall = progress.add_task(f"experiment {experiment_id}", total=None, status="")
    notes: dict[int, str] = {}
    console.print(experiment_header(experiment))
    try:
        while True:
            rows = experiment.get("jobs") or []
            for row in rows:
                note = _experiment_job_note(row)
                if notes.get(row["job_id"]) != note:
                    console.print(note)
                    notes[row["job_id"]] = note
                if progress is not None:
                    if row["job_id"] not in job_tasks:
                        job_tasks[row["job_id"]] = progress.add_task(
                            f"  job {row['job_id']} {varied_label(row)}", total=None, status=""
                        )
                    progress.update(
                        job_tasks[row["job_id"]],
                        total=row["epochs_total"],
                        completed=row["epochs_done"],
                        status=row["status"],
                    )
            if progress is not None and overall is not None:
                progress.update(
                    overall,
                    total=sum(row["epochs_total"] for row in rows),
                    completed=sum(row["epochs_done"] for row in rows),
                    status=f"{experiment['status']}: "
                    f"{status_counts(experiment.get('status_counts') or {})}",
                )
            if experiment["ended"]:
                break
            poller.pause()
            polled = poller.call(api.get_json, path, subject=subject, limit=EXPERIMENT_ROWS)
            if polled is not None:
                experiment = polled
    except KeyboardInterrupt:
        raise _interrupted(subject, f"cifar-jobs experiment cancel {experiment_id}") from None
    finally:
        if progress is not None:
            progress.stop()
    console.print(experiment_jobs_table(experiment, width=console.width))
    console.print(experiment_header(experiment))
    return 0 if experiment["status"] == "succeeded" else 1
