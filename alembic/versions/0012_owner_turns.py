"""owner turns: among equal priorities, people take turns before their experiments do

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 11:00:00

`owner_turns` keeps, per priority and owner, the turn the owner's first queued job there takes
and when the owner joined the turns (docs/design/dispatch-order.md): a claim advances one row,
so submitting, cancelling or re-prioritising a job renumbers nothing. `owner` is '' for jobs
without an owner. `ix_jobs_owner_queue` finds an owner's queued jobs at a priority in their own
order. The owners of jobs queued before this migration join in the order of their first queued
job.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OWNER_QUEUE = ["owner", "status", "cancel_requested", "priority", "fair_share_key", "id"]


def upgrade() -> None:
    op.create_table(
        "owner_turns",
        sa.Column("priority", sa.Integer(), primary_key=True),
        sa.Column("owner", sa.String(64), primary_key=True),
        sa.Column("next_turn", sa.Integer(), nullable=False),
        sa.Column("joined", sa.BigInteger(), nullable=False),
    )
    op.execute(
        "INSERT INTO owner_turns (priority, owner, next_turn, joined) "
        "SELECT priority, COALESCE(owner, ''), 0, min(id) FROM jobs "
        "WHERE status = 'queued' GROUP BY priority, COALESCE(owner, '')"
    )
    op.create_index("ix_jobs_owner_queue", "jobs", OWNER_QUEUE)


def downgrade() -> None:
    op.drop_index("ix_jobs_owner_queue", table_name="jobs")
    op.drop_table("owner_turns")
