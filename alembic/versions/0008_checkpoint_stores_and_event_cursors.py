"""checkpoints record their store; the job event log's readers keep a cursor

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 09:00:00

`checkpoint_files.relative_path` becomes `key`, and each row records the store that holds it
(`store_url`). Existing rows get the store configured when the migration runs: run it with the
ARTIFACT_URL (and S3_ENDPOINT_URL) that held the checkpoints so far. A deleted job's record
lists the stores its files are in. `event_cursors` holds how far each reader of the job event log
has read; the notifications' reader starts after the events that exist now (their notifications
were made when they happened).
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa

from alembic import op
from jobs.artifacts.store import configured_locator
from jobs.settings import get_settings

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("checkpoint_files") as batch:
        batch.alter_column("relative_path", new_column_name="key")
        batch.add_column(sa.Column("store_url", sa.String(length=1000), nullable=True))
    op.execute(
        sa.text("UPDATE checkpoint_files SET store_url = :store").bindparams(
            store=configured_locator(get_settings())
        )
    )
    with op.batch_alter_table("checkpoint_files") as batch:
        batch.alter_column("store_url", existing_type=sa.String(length=1000), nullable=False)
    with op.batch_alter_table("artifact_deletions") as batch:
        batch.add_column(sa.Column("store_urls", sa.JSON(), nullable=True))
    cursors = op.create_table(
        "event_cursors",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    last = op.get_bind().execute(sa.text("SELECT max(id) FROM job_events")).scalar() or 0
    op.bulk_insert(
        cursors,
        [
            {
                "name": "notifications",
                "event_id": int(last),
                "updated_at": datetime.now(UTC),
            }
        ],
    )


def downgrade() -> None:
    op.drop_table("event_cursors")
    with op.batch_alter_table("artifact_deletions") as batch:
        batch.drop_column("store_urls")
    with op.batch_alter_table("checkpoint_files") as batch:
        batch.drop_column("store_url")
        batch.alter_column("key", new_column_name="relative_path")
