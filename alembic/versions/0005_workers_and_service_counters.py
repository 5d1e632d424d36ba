"""workers' heartbeats and the service's counters, read by /metrics

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("hostname", sa.String(length=200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    counters = op.create_table(
        "service_counters",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    # The epochs recorded before this migration count too.
    epochs = op.get_bind().execute(sa.text("SELECT COUNT(*) FROM epoch_metrics")).scalar() or 0
    op.bulk_insert(counters, [{"name": "epochs_recorded", "value": int(epochs)}])


def downgrade() -> None:
    op.drop_table("service_counters")
    op.drop_table("workers")
