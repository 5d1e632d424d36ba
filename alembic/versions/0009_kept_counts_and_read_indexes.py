"""reads that follow the page: kept status counts, each job's epoch-time sum, the tag rows'
copy of their job's filter columns, and an index per filter pair and experiment sort

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08 09:00:00

`job_counts` holds how many jobs have each status, per experiment and for the whole service
(experiment_id 0), filled here from the jobs and kept from now on by jobs.status_counts. Each job
gets the sum and number of its recorded epoch times and their mean, filled from its epoch rows.
Each tag row gets its job's status, block, experiment and best test accuracy, and a trigger
(`job_tags_follow_job`) copies their later changes. On SQLite a batch migration that recreates
the jobs table drops its triggers: such a migration must make this one again (TRIGGER_SQL).
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW_JOB_INDEXES = {
    "ix_jobs_status_block_id": ["status", "block", "id"],
    "ix_jobs_status_block_best_accuracy": ["status", "block", "best_test_accuracy", "id"],
    "ix_jobs_experiment_status_id": ["experiment_id", "status", "id"],
    "ix_jobs_experiment_block_id": ["experiment_id", "block", "id"],
    "ix_jobs_experiment_status_best_accuracy": [
        "experiment_id",
        "status",
        "best_test_accuracy",
        "id",
    ],
    "ix_jobs_experiment_block_best_accuracy": [
        "experiment_id",
        "block",
        "best_test_accuracy",
        "id",
    ],
    "ix_jobs_experiment_final_accuracy": ["experiment_id", "final_test_accuracy", "id"],
    "ix_jobs_experiment_final_loss": ["experiment_id", "final_train_loss", "id"],
    "ix_jobs_experiment_seconds_per_epoch": ["experiment_id", "seconds_per_epoch", "id"],
    "ix_jobs_experiment_params": ["experiment_id", "params", "id"],
    "ix_jobs_experiment_macs": ["experiment_id", "macs", "id"],
    "ix_jobs_status_created": ["status", "created_at"],
}
NEW_TAG_INDEXES = {
    "ix_job_tags_best_accuracy": ["tag", "best_test_accuracy", "job_id"],
    "ix_job_tags_status": ["tag", "status", "job_id"],
    "ix_job_tags_block": ["tag", "block", "job_id"],
    "ix_job_tags_experiment": ["tag", "experiment_id", "job_id"],
    "ix_job_tags_status_best_accuracy": ["tag", "status", "best_test_accuracy", "job_id"],
    "ix_job_tags_block_best_accuracy": ["tag", "block", "best_test_accuracy", "job_id"],
    "ix_job_tags_experiment_best_accuracy": [
        "tag",
        "experiment_id",
        "best_test_accuracy",
        "job_id",
    ],
}
COPIED = ("status", "best_test_accuracy", "experiment_id")
TRIGGER = "job_tags_follow_job"
_CHANGED_SQLITE = " OR ".join(f"NEW.{name} IS NOT OLD.{name}" for name in COPIED)
_CHANGED_POSTGRESQL = " OR ".join(f"OLD.{name} IS DISTINCT FROM NEW.{name}" for name in COPIED)
_COPY = ", ".join(f"{name} = NEW.{name}" for name in COPIED)
TRIGGER_SQL = {
    "sqlite": [
        f"CREATE TRIGGER {TRIGGER} AFTER UPDATE OF {', '.join(COPIED)} ON jobs FOR EACH ROW "
        f"WHEN {_CHANGED_SQLITE} "
        f"BEGIN UPDATE job_tags SET {_COPY} WHERE job_id = NEW.id; END"
    ],
    "postgresql": [
        f"CREATE FUNCTION {TRIGGER}() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN UPDATE job_tags SET {_COPY} WHERE job_id = NEW.id; RETURN NULL; END $$",
        f"CREATE TRIGGER {TRIGGER} AFTER UPDATE OF {', '.join(COPIED)} ON jobs FOR EACH ROW "
        f"WHEN ({_CHANGED_POSTGRESQL}) EXECUTE FUNCTION {TRIGGER}()",
    ],
}
DROP_TRIGGER_SQL = {
    "sqlite": [f"DROP TRIGGER {TRIGGER}"],
    "postgresql": [f"DROP TRIGGER {TRIGGER} ON jobs", f"DROP FUNCTION {TRIGGER}()"],
}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("epoch_seconds", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(
            sa.Column("epochs_recorded", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("seconds_per_epoch", sa.Float(), nullable=True))
        for name, columns in NEW_JOB_INDEXES.items():
            batch.create_index(name, columns)
    op.execute(
        "UPDATE jobs SET epoch_seconds = recorded.total, epochs_recorded = recorded.number, "
        "seconds_per_epoch = recorded.total / recorded.number "
        "FROM (SELECT job_id, SUM(seconds) AS total, COUNT(*) AS number FROM epoch_metrics "
        "GROUP BY job_id) AS recorded WHERE recorded.job_id = jobs.id"
    )

    with op.batch_alter_table("job_tags") as batch:
        batch.add_column(sa.Column("status", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("block", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("experiment_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("best_test_accuracy", sa.Float(), nullable=True))
    op.execute(
        "UPDATE job_tags SET status = jobs.status, block = jobs.block, "
        "experiment_id = jobs.experiment_id, best_test_accuracy = jobs.best_test_accuracy "
        "FROM jobs WHERE jobs.id = job_tags.job_id"
    )
    with op.batch_alter_table("job_tags") as batch:
        batch.alter_column("status", existing_type=sa.String(length=16), nullable=False)
        batch.alter_column("block", existing_type=sa.String(length=32), nullable=False)
        for name, columns in NEW_TAG_INDEXES.items():
            batch.create_index(name, columns)
    for statement in TRIGGER_SQL[dialect]:
        op.execute(statement)

    op.create_table(
        "job_counts",
        sa.Column("experiment_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("jobs", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("experiment_id", "status"),
    )
    op.execute(
        "INSERT INTO job_counts (experiment_id, status, jobs) "
        "SELECT 0, status, COUNT(*) FROM jobs GROUP BY status"
    )
    op.execute(
        "INSERT INTO job_counts (experiment_id, status, jobs) "
        "SELECT experiment_id, status, COUNT(*) FROM jobs WHERE experiment_id IS NOT NULL "
        "GROUP BY experiment_id, status"
    )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.drop_table("job_counts")
    for statement in DROP_TRIGGER_SQL[dialect]:
        op.execute(statement)
    with op.batch_alter_table("job_tags") as batch:
        for name in NEW_TAG_INDEXES:
            batch.drop_index(name)
        batch.drop_column("best_test_accuracy")
        batch.drop_column("experiment_id")
        batch.drop_column("block")
        batch.drop_column("status")
    with op.batch_alter_table("jobs") as batch:
        for name in NEW_JOB_INDEXES:
            batch.drop_index(name)
        batch.drop_column("seconds_per_epoch")
        batch.drop_column("epochs_recorded")
        batch.drop_column("epoch_seconds")
