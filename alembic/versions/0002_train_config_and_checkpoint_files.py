"""the engine's config on each job; one immutable checkpoint file per epoch

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 16:10:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HYPERPARAMETERS = (
    "batch_size",
    "learning_rate",
    "epochs",
    "optimizer",
    "momentum",
    "weight_decay",
    "scheduler",
    "step_size",
    "gamma",
    "augment",
    "seed",
    "precision",
)


def _config_from_spec(spec: dict[str, Any]) -> dict[str, Any]:
    hyperparameters = spec.get("hyperparameters") or {}
    config = {name: hyperparameters[name] for name in HYPERPARAMETERS if name in hyperparameters}
    for name in ("block", "dataset", "train_samples", "test_samples"):
        if name in spec:
            config[name] = spec[name]
    return config


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("config", sa.JSON(), nullable=True))
    connection = op.get_bind()
    jobs = sa.table("jobs", sa.column("id", sa.Integer), sa.column("spec", sa.JSON),
                    sa.column("config", sa.JSON))  # fmt: skip
    for job_id, spec in connection.execute(sa.select(jobs.c.id, jobs.c.spec)).all():
        connection.execute(
            jobs.update().where(jobs.c.id == job_id).values(config=_config_from_spec(spec))
        )
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("config", existing_type=sa.JSON(), nullable=False)

    op.create_table(
        "checkpoint_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("relative_path", sa.String(length=500), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "epoch", name="uq_checkpoint_files_job_epoch"),
    )
    # Earlier rows named files that were rewritten in place (latest.pt, best.pt, final.pt): keep
    # one row per job and epoch; its sha256 is checked before the file is served or resumed.
    op.execute(
        """
        INSERT INTO checkpoint_files
            (job_id, epoch, attempt, size_bytes, sha256, relative_path, recorded_at)
        SELECT c.job_id, c.epoch, 0, c.size_bytes, c.sha256, c.relative_path, c.recorded_at
        FROM checkpoints AS c
        WHERE c.id = (SELECT MIN(d.id) FROM checkpoints AS d
                      WHERE d.job_id = c.job_id AND d.epoch = c.epoch)
        """
    )
    op.drop_table("checkpoints")


def downgrade() -> None:
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=16), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("relative_path", sa.String(length=500), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "name", name="uq_checkpoints_job_name"),
    )
    op.execute(
        """
        INSERT INTO checkpoints (job_id, name, epoch, size_bytes, sha256, relative_path,
                                 recorded_at)
        SELECT job_id, 'latest', epoch, size_bytes, sha256, relative_path, recorded_at
        FROM checkpoint_files AS f
        WHERE f.epoch = (SELECT MAX(g.epoch) FROM checkpoint_files AS g WHERE g.job_id = f.job_id)
        """
    )
    op.drop_table("checkpoint_files")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("config")
