"""The SQL tables (SQLAlchemy 2). Alembic migrations (alembic/) are the only way they are made."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class JobStatus(StrEnum):
    """A job's status; the API, the dashboard and the command line take the list and which of
    them are final (`ended`) from here."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PRUNED = "pruned"  # a search trial its pruner stopped early; its metrics and checkpoints stay
    # A search trial waiting at a rung for the other trials of its bracket: it holds no worker,
    # keeps its checkpoints, and resumes from the last one when its pruner promotes it.
    PAUSED = "paused"

    @property
    def ended(self) -> bool:
        """A final status: it never changes again."""
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.PRUNED}
)


def experiment_status(statuses: Iterable[str]) -> JobStatus:
    """An experiment's status from its jobs': running if any runs, else queued if any is
    queued, else paused if a search's trials wait at a rung, else succeeded if all succeeded or
    were pruned (a search's budget used up), else failed if any failed, else cancelled."""
    present = set(statuses)
    for status in (JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.PAUSED):
        if status in present:
            return status
    if present <= {JobStatus.SUCCEEDED, JobStatus.PRUNED}:
        return JobStatus.SUCCEEDED
    if JobStatus.FAILED in present:
        return JobStatus.FAILED
    return JobStatus.CANCELLED


class FailureReason(StrEnum):
    """Why a job `failed` (its `error_reason`); `error` says more, for a person."""

    DATASET_UNAVAILABLE = "dataset_unavailable"
    STORAGE_FULL = "storage_full"
    TRAINING_ERROR = "training_error"
    TIMEOUT = "timeout"
    WORKER_LOST = "worker_lost"
    ARTIFACT_STORE_UNAVAILABLE = "artifact_store_unavailable"
    DIVERGED = "diverged"

    @property
    def description(self) -> str:
        return FAILURE_REASON_DESCRIPTIONS[self]


FAILURE_REASON_DESCRIPTIONS = {
    FailureReason.DATASET_UNAVAILABLE: "the workers could neither find nor download the dataset",
    FailureReason.STORAGE_FULL: "the checkpoint storage was full",
    FailureReason.TRAINING_ERROR: "training raised an error (its type and message are in error)",
    FailureReason.TIMEOUT: "the job ran longer than MAX_JOB_SECONDS",
    FailureReason.WORKER_LOST: "the worker stopped responding on each of MAX_ATTEMPTS attempts",
    FailureReason.ARTIFACT_STORE_UNAVAILABLE: "a checkpoint could not be stored in (or read "
    "back from) the artifact store within ARTIFACT_UPLOAD_TIMEOUT_SECONDS",
    FailureReason.DIVERGED: "a loss became NaN or infinite (error names the epoch and the "
    "learning rate, the usual cause); the epochs before it are kept",
}
# The names under which a job's checkpoint files are served; each points at one epoch's file.
CHECKPOINT_NAMES = ("latest", "best", "final")


class Experiment(Base):
    """A group of jobs submitted and read as one: blocks x grid x seeds, or a search whose
    trials are its jobs (jobs.search)."""

    __tablename__ = "experiments"
    __table_args__ = (Index("ix_experiments_owner_id", "owner", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    preset: Mapped[str | None] = mapped_column(String(32))
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # the submitted request, as shown
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    request_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The priority its jobs were given (see Job.priority).
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # A search's trials made so far: the next trial's number, raised only under the experiment's
    # row lock (and compared-and-set), so no trial number is ever given twice.
    trials_created: Mapped[int] = mapped_column(Integer, default=0)
    # Of those, the trials cancelled with the search (withdrawn: they do not count against
    # max_trials); the sampler places they held, to be given again first; and the next place
    # never given. Kept here, under the same lock, so making a trial reads no other trial.
    trials_withdrawn: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    free_places: Mapped[list[int] | None] = mapped_column(JSON, default=list)
    next_place: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Set (first, in the same transaction) when the experiment is cancelled: a search then
    # makes no more trials.
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # The name of the user who submitted it (jobs.accounts); None without accounts.
    owner: Mapped[str | None] = mapped_column(String(64))

    jobs: Mapped[list[Job]] = relationship(back_populates="experiment", order_by="Job.id")


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int | None] = mapped_column(
        ForeignKey("experiments.id", ondelete="SET NULL")
    )
    # The name of the user who submitted it, or its experiment's (jobs.accounts); None without
    # accounts.
    owner: Mapped[str | None] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(200))
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    block: Mapped[str] = mapped_column(String(32))
    dataset: Mapped[str] = mapped_column(String(32))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # the submitted request, as shown
    config: Mapped[dict[str, Any]] = mapped_column(JSON)  # engine.TrainConfig, validated
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    error_reason: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # A free worker takes the highest priority first (PRIORITY_MIN..PRIORITY_MAX, jobs.dispatch);
    # among equal priorities people take turns (OwnerTurn), and one person's jobs go by the
    # lowest fair_share_key, then the lowest id.
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    fair_share_key: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    params: Mapped[int] = mapped_column(BigInteger)
    macs: Mapped[int] = mapped_column(BigInteger)
    epochs_total: Mapped[int] = mapped_column(Integer)
    epochs_done: Mapped[int] = mapped_column(Integer, default=0)
    best_test_accuracy: Mapped[float | None] = mapped_column(Float)
    final_test_accuracy: Mapped[float | None] = mapped_column(Float)
    final_train_loss: Mapped[float | None] = mapped_column(Float)
    # The sum and number of the job's recorded epoch times, added to with each stored epoch
    # row, and their mean: an experiment's summary and sort read them instead of its epoch rows.
    epoch_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    epochs_recorded: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    seconds_per_epoch: Mapped[float | None] = mapped_column(Float)

    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str | None] = mapped_column(String(200))
    lease_token: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    enqueue_count: Mapped[int] = mapped_column(Integer, default=0)

    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    request_sha256: Mapped[str | None] = mapped_column(String(64))

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # A search trial's Optuna state, its only copy (jobs.search rebuilds the study from these
    # rows): its number, sampled params, system attributes (a grid point, the value at each
    # rung passed), the highest rung it reached, and a pruning decision not yet carried out.
    trial_number: Mapped[int | None] = mapped_column(Integer)
    trial_params: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    trial_attrs: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    rung: Mapped[int | None] = mapped_column(Integer)
    prune_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # The pruner paused the trial at a rung (stored with the epoch): its attempt stops, keeps its
    # checkpoint, and the trial waits `paused` (jobs.search.pruners, Hyperband).
    pause_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # A search trial's bracket and every decision its pruner made about it (rung, value,
    # cutoff, noise margin, trials compared with, outcome), in order.
    trial_state: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The number of this job's rows in job_events: each new event takes event_seq + 1 in the
    # UPDATE that also changes the job, so on every backend a job's events commit in seq order.
    event_seq: Mapped[int] = mapped_column(Integer, default=0)

    experiment: Mapped[Experiment | None] = relationship(back_populates="jobs")
    metrics: Mapped[list[EpochMetric]] = relationship(
        back_populates="job", order_by="EpochMetric.epoch", cascade="all, delete-orphan"
    )
    checkpoints: Mapped[list[Checkpoint]] = relationship(
        back_populates="job", order_by="Checkpoint.epoch", cascade="all, delete-orphan"
    )

    # One index per list order and filter, and per pair of filters, so that each page is a
    # range scan of an index that holds every filter as an equality, whatever the planner knows
    # of the data (ids grow with submission: "newest first" is id order); one per column an
    # experiment's jobs sort by; the dispatch order's, so that a claim is one seek and a queue
    # position counts index entries only; and the queue's oldest job is one seek.
    __table_args__ = (
        Index("ix_jobs_status_id", "status", "id"),
        Index("ix_jobs_block_id", "block", "id"),
        Index("ix_jobs_experiment_id", "experiment_id", "id"),
        Index("ix_jobs_best_accuracy", "best_test_accuracy", "id"),
        Index("ix_jobs_status_best_accuracy", "status", "best_test_accuracy", "id"),
        Index("ix_jobs_block_best_accuracy", "block", "best_test_accuracy", "id"),
        Index("ix_jobs_experiment_best_accuracy", "experiment_id", "best_test_accuracy", "id"),
        Index("ix_jobs_status_block_id", "status", "block", "id"),
        Index("ix_jobs_status_block_best_accuracy", "status", "block", "best_test_accuracy", "id"),
        Index("ix_jobs_experiment_status_id", "experiment_id", "status", "id"),
        Index("ix_jobs_experiment_block_id", "experiment_id", "block", "id"),
        Index(
            "ix_jobs_experiment_status_best_accuracy",
            "experiment_id",
            "status",
            "best_test_accuracy",
            "id",
        ),
        Index(
            "ix_jobs_experiment_block_best_accuracy",
            "experiment_id",
            "block",
            "best_test_accuracy",
            "id",
        ),
        Index("ix_jobs_experiment_final_accuracy", "experiment_id", "final_test_accuracy", "id"),
        Index("ix_jobs_experiment_final_loss", "experiment_id", "final_train_loss", "id"),
        Index("ix_jobs_experiment_seconds_per_epoch", "experiment_id", "seconds_per_epoch", "id"),
        Index("ix_jobs_experiment_params", "experiment_id", "params", "id"),
        Index("ix_jobs_experiment_macs", "experiment_id", "macs", "id"),
        Index("ix_jobs_dispatch", "status", "cancel_requested", "priority", "fair_share_key", "id"),
        Index("ix_jobs_status_created", "status", "created_at"),
        Index("ix_jobs_owner_id", "owner", "id"),
        Index("ix_jobs_owner_status_id", "owner", "status", "id"),
        # An owner's queued jobs at a priority in their own order (jobs.dispatch).
        Index(
            "ix_jobs_owner_queue",
            "owner",
            "status",
            "cancel_requested",
            "priority",
            "fair_share_key",
            "id",
        ),
    )


class OwnerTurn(Base):
    """Where one owner is in the turns people take at one priority (jobs.dispatch): their first
    queued job there takes `next_turn`, their next one next_turn + 1, and so on; within a turn,
    owners go in the order they joined. A claim adds one; a job given back to the queue takes
    one off. `owner` is '' for jobs without an owner (one person)."""

    __tablename__ = "owner_turns"

    priority: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    next_turn: Mapped[int] = mapped_column(Integer)
    joined: Mapped[int] = mapped_column(BigInteger)


class JobTag(Base):
    """A job's tags, one row each, so that listing the jobs with a tag is a range scan. Each row
    carries a copy of the job's filter and sort columns, so that a tag with another filter or
    the accuracy sort is a range scan of one index too. They are copied when the row is made,
    and a trigger on the job row (JOB_TAGS_TRIGGER, made by the migrations) copies each later
    change of status, best test accuracy or experiment in the statement that makes it."""

    __tablename__ = "job_tags"

    tag: Mapped[str] = mapped_column(String(50), primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    block: Mapped[str] = mapped_column(String(32))
    experiment_id: Mapped[int | None] = mapped_column(Integer)
    best_test_accuracy: Mapped[float | None] = mapped_column(Float)

    # Deleting a job finds its tags by job id.
    __table_args__ = (
        Index("ix_job_tags_job_id", "job_id"),
        Index("ix_job_tags_best_accuracy", "tag", "best_test_accuracy", "job_id"),
        Index("ix_job_tags_status", "tag", "status", "job_id"),
        Index("ix_job_tags_block", "tag", "block", "job_id"),
        Index("ix_job_tags_experiment", "tag", "experiment_id", "job_id"),
        Index("ix_job_tags_status_best_accuracy", "tag", "status", "best_test_accuracy", "job_id"),
        Index("ix_job_tags_block_best_accuracy", "tag", "block", "best_test_accuracy", "job_id"),
        Index(
            "ix_job_tags_experiment_best_accuracy",
            "tag",
            "experiment_id",
            "best_test_accuracy",
            "job_id",
        ),
    )


# The name of the trigger that copies a job's status and best test accuracy to its tag rows.
JOB_TAGS_TRIGGER = "job_tags_follow_job"


class JobCount(Base):
    """How many jobs have each status: per experiment, and for the whole service (experiment_id
    ALL_JOBS). Kept by jobs.status_counts in the transactions that make, move and delete jobs,
    so that a list of experiments and a scrape read a few rows instead of counting jobs."""

    __tablename__ = "job_counts"

    experiment_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    jobs: Mapped[int] = mapped_column(BigInteger, default=0)


# JobCount.experiment_id of the whole service's counts (experiment ids start at 1).
ALL_JOBS = 0


class ArtifactDeletion(Base):
    """A deleted job whose files are still to be removed. Written in the transaction that
    deletes the job's rows, and removed once the files are gone: a process killed in between
    leaves this row, and the next sweep (jobs.retention) finishes the work."""

    __tablename__ = "artifact_deletions"

    job_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The stores its checkpoints were recorded in, besides the configured one (None: only that).
    store_urls: Mapped[list[str] | None] = mapped_column(JSON)


class EpochMetric(Base):
    __tablename__ = "epoch_metrics"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    train_loss: Mapped[float] = mapped_column(Float)
    train_accuracy: Mapped[float] = mapped_column(Float)
    test_loss: Mapped[float] = mapped_column(Float)
    test_accuracy: Mapped[float] = mapped_column(Float)
    learning_rate: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    images_per_second: Mapped[float] = mapped_column(Float)
    # How much the figures are measurements (jobs.metrics.EVALUATION_NAMES): the images each
    # pass counted and the standard errors of the mean losses; NULL for older epochs.
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    job: Mapped[Job] = relationship(back_populates="metrics")

    __table_args__ = (UniqueConstraint("job_id", "epoch", name="uq_epoch_metrics_job_epoch"),)


class Checkpoint(Base):
    """One epoch's checkpoint file. Files are written once and never changed; `latest`, `best`
    and `final` are chosen among a job's rows (see jobs.checkpoints), never separate files."""

    __tablename__ = "checkpoint_files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    # The object's key in its store, and the store (jobs.artifacts.store_locator): a checkpoint
    # is read from the store that holds it, whatever ARTIFACT_URL says today.
    key: Mapped[str] = mapped_column(String(500))
    store_url: Mapped[str] = mapped_column(String(1000))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    job: Mapped[Job] = relationship(back_populates="checkpoints")

    __table_args__ = (UniqueConstraint("job_id", "epoch", name="uq_checkpoint_files_job_epoch"),)


class JobEvent(Base):
    """What happened to a job, in order: status changes and epoch rows. Written in the same
    transaction as the change it describes; `seq` counts 1, 2, ... per job (the event stream's
    id), `id` orders events across jobs on one SQLite file (polling watchers use it), and
    `experiment_seq` orders an experiment's events as they committed (its stream's id; given
    as the transaction commits, jobs.events)."""

    __tablename__ = "job_events"
    __table_args__ = (
        UniqueConstraint("job_id", "seq", name="uq_job_events_job_seq"),
        Index("ix_job_events_experiment_id", "experiment_id", "id"),
        Index("uq_job_events_experiment_seq", "experiment_id", "experiment_seq", unique=True),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    experiment_id: Mapped[int | None] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)
    experiment_seq: Mapped[int | None] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # jobs.events.EVENT_KINDS
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class EventCursor(Base):
    """How far a consumer of the job event log has read: the id of the last event it handled,
    moved in the transaction that handles the events (jobs.notifications.outbox)."""

    __tablename__ = "event_cursors"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    event_id: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WorkerRecord(Base):
    """A worker process, as it last reported itself: each one upserts its row every reconciler
    pass (HEARTBEAT_SECONDS or faster) and deletes it when it stops, so a row whose heartbeat is
    old is a worker that died. Read by /metrics; rows silent for a day are removed."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    concurrency: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ServiceCounter(Base):
    """A count that only grows (epochs recorded, leases reaped, messages re-sent), added to in the
    transaction of what it counts: exact whichever process did it, and kept across restarts."""

    __tablename__ = "service_counters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


# A delivery is pending (due now or after a backoff) until it is delivered or has failed.
DELIVERY_PENDING, DELIVERY_DELIVERED, DELIVERY_FAILED = "pending", "delivered", "failed"
DELIVERY_STATES = (DELIVERY_PENDING, DELIVERY_DELIVERED, DELIVERY_FAILED)


class NotificationDelivery(Base):
    """One notification owed (jobs.notifications): made in the transaction that ended the job
    (or an experiment's last job), holding the exact body to send, then retried by the sender
    until delivered or failed."""

    __tablename__ = "notification_deliveries"
    __table_args__ = (
        UniqueConstraint("subject", "subject_id", "event", name="uq_notification_deliveries_event"),
        Index("ix_notification_deliveries_due", "state", "next_attempt_at"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    delivery_id: Mapped[str] = mapped_column(String(32), unique=True)  # X-Notification-ID
    subject: Mapped[str] = mapped_column(String(16))  # "job" or "experiment"
    subject_id: Mapped[int] = mapped_column(Integer)
    event: Mapped[str] = mapped_column(String(16))  # the final status
    url: Mapped[str] = mapped_column(String(2000))
    body: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))  # pending, delivered, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# A user's role: an admin may do anything, a member may change only what they own.
ROLE_MEMBER, ROLE_ADMIN = "member", "admin"
ROLES = (ROLE_MEMBER, ROLE_ADMIN)


class User(Base):
    """A person of the lab (jobs.accounts). Never deleted, only disabled, so that the owner
    and actor names in jobs and the audit trail always name someone."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # Limits on this user's queued and running jobs; None: the service's settings apply.
    max_queued_jobs: Mapped[int | None] = mapped_column(Integer)
    max_running_jobs: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class UserToken(Base):
    """One of a user's API tokens: only its SHA-256 is kept (a token is 32 random bytes, so a
    fast hash is enough), shown once when made; revoked tokens stay, marked."""

    __tablename__ = "user_tokens"
    __table_args__ = (Index("ix_user_tokens_user_id", "user_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AuditEvent(Base):
    """Who did what to which job or experiment (submitted, cancelled, re-prioritised, deleted,
    notifications changed) or user: no foreign key, so it outlives what it names."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_job_id", "job_id", "id"),
        Index("ix_audit_events_experiment_id", "experiment_id", "id"),
        Index("ix_audit_events_actor", "actor", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    job_id: Mapped[int | None] = mapped_column(Integer)
    experiment_id: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
