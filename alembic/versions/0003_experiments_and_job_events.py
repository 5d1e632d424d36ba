"""experiments (groups of jobs) and the per-job event log behind the event streams

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 17:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("preset", sa.String(length=32), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("request_sha256", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key", name="uq_experiments_idempotency_key"),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("experiment_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("event_seq", sa.Integer(), nullable=False, server_default="0"))
        batch.create_foreign_key(
            "fk_jobs_experiment_id", "experiments", ["experiment_id"], ["id"], ondelete="SET NULL"
        )
        batch.create_index("ix_jobs_experiment_id", ["experiment_id"])
    op.create_table(
        "job_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "seq", name="uq_job_events_job_seq"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_job_events_experiment_id", "job_events", ["experiment_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_job_events_experiment_id", table_name="job_events")
    op.drop_table("job_events")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_experiment_id")
        batch.drop_constraint("fk_jobs_experiment_id", type_="foreignkey")
        batch.drop_column("event_seq")
        batch.drop_column("experiment_id")
    op.drop_table("experiments")
