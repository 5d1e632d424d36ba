"""search trials that pause at a rung, their decisions, and how noisy each epoch's figures are

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 12:00:00

A trial's pruner may pause it at a rung (`jobs.pause_requested`, then the status `paused`);
every decision about a trial is kept with it (`jobs.trial_state`); each epoch records the images
its evaluations counted and the standard errors of its mean losses (`epoch_metrics.evaluation`),
which the pruners compare trials within.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("pause_requested", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("trial_state", sa.JSON(), nullable=True))
    with op.batch_alter_table("epoch_metrics") as batch:
        batch.add_column(sa.Column("evaluation", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("epoch_metrics") as batch:
        batch.drop_column("evaluation")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("trial_state")
        batch.drop_column("pause_requested")
