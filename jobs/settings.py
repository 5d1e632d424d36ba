"""Settings, read once from the environment (and an optional .env file)."""

from __future__ import annotations

from functools import cached_property, lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Every setting of the service; each is documented in README.md and .env.example."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    var_dir: Path = Field(Path("var"), description="Where the embedded defaults keep their files.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: a SQLite file under VAR_DIR."
    )
    celery_broker_url: str | None = Field(
        None, description="Celery broker; default: kombu's SQLAlchemy transport on a SQLite file."
    )
    data_dir: Path = Field(Path("data"), description="Where the CIFAR datasets are read from.")
    artifact_dir: Path | None = Field(
        None, description="Checkpoints and other job files; default VAR_DIR/artifacts."
    )
    artifact_url: str | None = Field(
        None,
        description="Where checkpoints are stored: a local directory (a path or file:// URL) or "
        "s3://bucket/prefix; default ARTIFACT_DIR.",
    )
    s3_endpoint_url: str | None = Field(
        None, description="An S3-compatible server's URL; default AWS. Credentials: AWS_*."
    )
    artifact_staging_dir: Path | None = Field(
        None,
        description="With an object store: where checkpoints wait for their upload and resumed "
        "ones are downloaded to; default VAR_DIR/staging.",
    )
    artifact_upload_timeout_seconds: float = Field(
        600.0,
        gt=0,
        description="How long one checkpoint's upload may keep failing before the job fails.",
    )
    allow_download: bool = Field(True, description="Fetch CIFAR from its official URL if missing.")
    cifar100_url: str | None = None
    cifar100_md5: str | None = None
    cifar10_url: str | None = None
    cifar10_md5: str | None = None

    heartbeat_seconds: float = Field(10.0, gt=0)
    lease_seconds: float = Field(60.0, gt=0)
    max_attempts: int = Field(3, ge=1, le=100)
    max_job_seconds: float = Field(48 * 3600.0, gt=0)
    max_queued_jobs: int = Field(10_000, ge=1)
    max_queued_jobs_per_user: int | None = Field(
        None,
        ge=0,
        description="With accounts: queued jobs one user may have (users.max_queued_jobs "
        "overrides it per user); unset: no limit.",
    )
    max_body_bytes: int = Field(16 * 1024, ge=1024)
    api_key: str | None = None
    device: str = Field("auto", description="Worker device: auto, cpu, cuda or cuda:N.")
    worker_name: str | None = None
    worker_concurrency: int = Field(
        1, ge=1, le=16, description="Jobs one worker process trains at once on its device."
    )
    torch_threads: int = Field(
        0,
        ge=0,
        le=1024,
        description="CPU threads (PyTorch intra-op) per training job; 0: the CPUs the worker "
        "may use (affinity, cgroup quota) divided by WORKER_CONCURRENCY, at least 1.",
    )

    log_format: Literal["text", "json"] = Field(
        "text", description="text: readable lines; json: one JSON object per line."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    metrics_token: str | None = Field(
        None, description="A bearer token that /metrics accepts besides the API key."
    )
    worker_metrics_port: int = Field(
        0, ge=0, le=65535, description="Port of a worker's own /metrics; 0: none."
    )
    worker_metrics_host: str = Field("0.0.0.0", description="Address that port listens on.")
    notify_secret: str | None = Field(
        None, description="Signs notification bodies (HMAC-SHA256); unset: notify is refused."
    )
    # A comma-separated list in the environment, not JSON.
    notify_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts notify URLs may name; empty: any host with only public addresses.",
    )
    notify_timeout_seconds: float = Field(10.0, gt=0, le=300)
    notify_max_attempts: int = Field(12, ge=1, le=100)
    notify_backoff_seconds: float = Field(5.0, gt=0, le=3600)

    @field_validator(
        "api_key",
        "database_url",
        "celery_broker_url",
        "artifact_url",
        "s3_endpoint_url",
        "metrics_token",
        "notify_secret",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _any_case(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        return value.lower() if value.lower() in ("text", "json") else value.upper()

    @field_validator("notify_allowed_hosts", mode="before")
    @classmethod
    def _host_list(cls, value: object) -> object:
        # A comma-separated list in the environment ("hooks.example.org,127.0.0.1").
        if isinstance(value, str):
            return [host.strip().lower().strip("[]") for host in value.split(",") if host.strip()]
        return value

    # Resolved once per settings object: the path lookup is a few system calls, and the
    # database URL is read for every request.
    @cached_property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.var_dir / 'jobs.sqlite3').resolve()}"

    @cached_property
    def resolved_broker_url(self) -> str:
        return (
            self.celery_broker_url
            or f"sqla+sqlite:///{(self.var_dir / 'broker.sqlite3').resolve()}"
        )

    @cached_property
    def resolved_artifact_dir(self) -> Path:
        return (self.artifact_dir or self.var_dir / "artifacts").resolve()

    @cached_property
    def resolved_artifact_staging_dir(self) -> Path:
        return (self.artifact_staging_dir or self.var_dir / "staging").resolve()

    @property
    def checkpoint_folder_setting(self) -> str:
        """The setting that names where the engine writes checkpoint files (for messages)."""
        if self.artifact_url is not None and "://" in self.artifact_url:
            if not self.artifact_url.startswith("file://"):
                return "ARTIFACT_STAGING_DIR"
            return "ARTIFACT_URL"
        return "ARTIFACT_URL" if self.artifact_url is not None else "ARTIFACT_DIR"

    @property
    def visibility_timeout_seconds(self) -> int:
        """Above the longest allowed job, so Redis never redelivers a job that is still running."""
        return int(self.max_job_seconds + 3600)

    def download_source(self, dataset: str) -> tuple[str | None, str | None]:
        if dataset == "cifar10":
            return self.cifar10_url, self.cifar10_md5
        return self.cifar100_url, self.cifar100_md5


@lru_cache
def get_settings() -> Settings:
    settings = Settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    return settings
