"""an index per list order and filter, priorities and the fair-share key, job tags as rows,
and deleted jobs whose files are still to be removed

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW_JOB_INDEXES = {
    "ix_jobs_status_id": ["status", "id"],
    "ix_jobs_block_id": ["block", "id"],
    "ix_jobs_best_accuracy": ["best_test_accuracy", "id"],
    "ix_jobs_status_best_accuracy": ["status", "best_test_accuracy", "id"],
    "ix_jobs_block_best_accuracy": ["block", "best_test_accuracy", "id"],
    "ix_jobs_experiment_best_accuracy": ["experiment_id", "best_test_accuracy", "id"],
    "ix_jobs_dispatch": ["status", "cancel_requested", "priority", "fair_share_key", "id"],
}


def upgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(
            sa.Column("fair_share_key", sa.Integer(), nullable=False, server_default="0")
        )
        batch.drop_index("ix_jobs_status_created")
        batch.drop_index("ix_jobs_experiment_id")
        batch.create_index("ix_jobs_experiment_id", ["experiment_id", "id"])
        for name, columns in NEW_JOB_INDEXES.items():
            batch.create_index(name, columns)
    # Jobs queued before this migration keep their first-in first-out order.
    op.execute("UPDATE jobs SET fair_share_key = id")
    op.create_table(
        "job_tags",
        sa.Column("tag", sa.String(length=50), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("tag", "job_id"),
    )
    op.create_index("ix_job_tags_job_id", "job_tags", ["job_id"])
    op.create_table(
        "artifact_deletions",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("job_id"),
    )
    # Existing jobs' tags, from their JSON lists (a typed column decodes them on each backend).
    jobs = sa.table("jobs", sa.column("id", sa.Integer), sa.column("tags", sa.JSON))
    rows = op.get_bind().execute(sa.select(jobs.c.id, jobs.c.tags)).all()
    tags = [
        {"tag": tag, "job_id": job_id}
        for job_id, listed in rows
        for tag in dict.fromkeys(listed or [])
    ]
    if tags:
        op.bulk_insert(
            sa.table("job_tags", sa.column("tag", sa.String), sa.column("job_id", sa.Integer)),
            tags,
        )


def downgrade() -> None:
    op.drop_table("artifact_deletions")
    op.drop_index("ix_job_tags_job_id", table_name="job_tags")
    op.drop_table("job_tags")
    with op.batch_alter_table("jobs") as batch:
        for name in NEW_JOB_INDEXES:
            batch.drop_index(name)
        batch.drop_index("ix_jobs_experiment_id")
        batch.create_index("ix_jobs_experiment_id", ["experiment_id"])
        batch.create_index("ix_jobs_status_created", ["status", "created_at"])
        batch.drop_column("fair_share_key")
        batch.drop_column("priority")
    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("priority")
