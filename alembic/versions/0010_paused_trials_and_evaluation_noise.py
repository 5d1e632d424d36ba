"""search trials that pause at a rung, their decisions, and how noisy each epoch's figures are

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 12:00:00

A trial's pruner may pause it at a rung (`jobs.pause_requested`, then the status `paused`);
every decision about a trial is kept with it (`jobs.trial_state`); each epoch records the images
its evaluations counted and the standard errors of its mean losses (`epoch_metrics.evaluation`),
which the pruners compare trials within. A search keeps its withdrawn trials' count and places,
and its next sampler place, on the experiment (`experiments.trials_withdrawn`, `free_places`,
`next_place`): before, every trial's place was its number. An experiment's events are numbered
in the order they committed (`job_events.experiment_seq`, its stream's id): the existing ones in
id order.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain ALTER TABLE, not Alembic's batch mode: rebuilding `jobs` on SQLite would drop the
# trigger that keeps its tag rows' copies (0009). SQLite adds and drops these columns in place.


def upgrade() -> None:
    op.add_column(
        "jobs",
        sa.Column("pause_requested", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column("jobs", sa.Column("trial_state", sa.JSON(), nullable=True))
    op.add_column("epoch_metrics", sa.Column("evaluation", sa.JSON(), nullable=True))
    op.add_column(
        "experiments",
        sa.Column("trials_withdrawn", sa.Integer(), nullable=False, server_default="0"),
    )
    op.add_column("experiments", sa.Column("free_places", sa.JSON(), nullable=True))
    op.add_column(
        "experiments", sa.Column("next_place", sa.Integer(), nullable=False, server_default="0")
    )
    op.execute("UPDATE experiments SET next_place = trials_created")
    op.add_column("job_events", sa.Column("experiment_seq", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE job_events SET experiment_seq = numbered.n FROM ("
        " SELECT id, row_number() OVER (PARTITION BY experiment_id ORDER BY id) AS n"
        " FROM job_events WHERE experiment_id IS NOT NULL) AS numbered"
        " WHERE job_events.id = numbered.id"
    )
    op.create_index(
        "uq_job_events_experiment_seq",
        "job_events",
        ["experiment_id", "experiment_seq"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("uq_job_events_experiment_seq", table_name="job_events")
    op.drop_column("job_events", "experiment_seq")
    op.drop_column("experiments", "next_place")
    op.drop_column("experiments", "free_places")
    op.drop_column("experiments", "trials_withdrawn")
    op.drop_column("epoch_metrics", "evaluation")
    op.drop_column("jobs", "trial_state")
    op.drop_column("jobs", "pause_requested")
