"""owner turns: among equal priorities, people take turns before their experiments do

Revision ID: 0013
Revises: 0011
Create Date: 2026-12-07 11:00:00

Each job gets `owner_turn`, its place in the turns its owner takes at its priority
(docs/design/dispatch-order.md), and the dispatch index orders by it before the fair-share key,
with the owner last so that a claim can pass over the jobs of an owner at their running limit
from the index alone. `ix_jobs_owner_queue` finds an owner's queued jobs at a priority in their
own order. Jobs queued before this migration take their fair-share key as their turn: their
order stays as it was, and an owner's next submission numbers their turns again.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0013"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_DISPATCH = ["status", "cancel_requested", "priority", "fair_share_key", "id"]
DISPATCH = ["status", "cancel_requested", "priority", "owner_turn", "fair_share_key", "id", "owner"]
OWNER_QUEUE = ["owner", "status", "cancel_requested", "priority", "fair_share_key", "id"]

# Plain ALTER TABLE, not Alembic's batch mode: rebuilding `jobs` on SQLite would drop the
# trigger that keeps its tag rows' copies (0009).


def upgrade() -> None:
    op.add_column("jobs", sa.Column("owner_turn", sa.Integer(), nullable=False, server_default="0"))
    op.execute("UPDATE jobs SET owner_turn = fair_share_key")
    op.drop_index("ix_jobs_dispatch", table_name="jobs")
    op.create_index("ix_jobs_dispatch", "jobs", DISPATCH)
    op.create_index("ix_jobs_owner_queue", "jobs", OWNER_QUEUE)


def downgrade() -> None:
    op.drop_index("ix_jobs_owner_queue", table_name="jobs")
    op.drop_index("ix_jobs_dispatch", table_name="jobs")
    op.create_index("ix_jobs_dispatch", "jobs", OLD_DISPATCH)
    op.drop_column("jobs", "owner_turn")
