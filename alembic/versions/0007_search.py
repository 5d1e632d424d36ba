"""search experiments: trials' Optuna state on their job rows, the pruned status

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(
            sa.Column("trials_created", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("trial_number", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("trial_params", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("trial_attrs", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("rung", sa.Integer(), nullable=True))
        batch.add_column(
            sa.Column("prune_requested", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("prune_requested")
        batch.drop_column("rung")
        batch.drop_column("trial_attrs")
        batch.drop_column("trial_params")
        batch.drop_column("trial_number")
    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("cancel_requested")
        batch.drop_column("trials_created")
