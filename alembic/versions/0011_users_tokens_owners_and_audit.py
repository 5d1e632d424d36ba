"""users, their tokens, who owns each job and experiment, and an audit trail

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 10:30:00

A lab's people (`users`: a unique name, a role, disabled or not, optional per-user limits on
queued and running jobs) and their API tokens (`user_tokens`: only a SHA-256 hash of each is
kept, revocable one by one). Jobs and experiments record their owner's name (`owner`, null for
work submitted without accounts). `audit_events` keeps who submitted, cancelled, re-prioritised
and deleted what: it has no foreign key, so it outlives a deleted job or experiment.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain ALTER TABLE, not Alembic's batch mode: rebuilding `jobs` on SQLite would drop the
# trigger that keeps its tag rows' copies (0009). SQLite adds these columns in place.


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("max_queued_jobs", sa.Integer(), nullable=True),
        sa.Column("max_running_jobs", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "user_tokens",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("label", sa.String(100), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_user_tokens_user_id", "user_tokens", ["user_id", "id"])
    op.create_table(
        "audit_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(64), nullable=True),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("experiment_id", sa.Integer(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_audit_events_job_id", "audit_events", ["job_id", "id"])
    op.create_index("ix_audit_events_experiment_id", "audit_events", ["experiment_id", "id"])
    op.create_index("ix_audit_events_actor", "audit_events", ["actor", "id"])
    op.add_column("jobs", sa.Column("owner", sa.String(64), nullable=True))
    op.create_index("ix_jobs_owner_id", "jobs", ["owner", "id"])
    op.create_index("ix_jobs_owner_status_id", "jobs", ["owner", "status", "id"])
    op.add_column("experiments", sa.Column("owner", sa.String(64), nullable=True))
    op.create_index("ix_experiments_owner_id", "experiments", ["owner", "id"])


def downgrade() -> None:
    op.drop_index("ix_experiments_owner_id", table_name="experiments")
    op.drop_column("experiments", "owner")
    op.drop_index("ix_jobs_owner_status_id", table_name="jobs")
    op.drop_index("ix_jobs_owner_id", table_name="jobs")
    op.drop_column("jobs", "owner")
    op.drop_table("audit_events")
    op.drop_table("user_tokens")
    op.drop_table("users")
