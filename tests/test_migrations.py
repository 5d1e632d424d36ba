"""The migrations are the only way the schema is made: they must build exactly the tables that
jobs/tables.py declares, on every backend, and downgrade cleanly."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from jobs.migrations import downgrade, upgrade
from jobs.tables import JOB_TAGS_TRIGGER, Base


def test_migrated_schema_matches_the_tables(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "render_as_batch": True}
            )
            differences = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert differences == []


def test_downgrade_to_base_and_back(database_url: str) -> None:
    downgrade(database_url, "base")
    engine = create_engine(database_url)
    try:
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    upgrade(database_url)
    engine = create_engine(database_url)
    try:
        assert {"jobs", "experiments", "job_events"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrading_a_database_with_jobs_keeps_every_row(configure, database_url: str) -> None:
    """Migrations that rebuild the jobs table (SQLite's batch mode copies it and drops the old
    one) must not delete the rows that reference it: with foreign keys enforced, the drop would
    cascade to every job's metrics, checkpoints and events."""
    from sqlalchemy import text

    from tests.builders import new_job_id
    from tests.support import drive_job

    configure(database_url)
    job_id = new_job_id(hyperparameters={"epochs": 2})
    drive_job(job_id, 2, finish="succeeded", checkpoint=b"bytes")
    tables = ("jobs", "epoch_metrics", "checkpoint_files", "job_events")

    def counts() -> dict[str, int]:
        engine = create_engine(database_url)
        try:
            with engine.connect() as connection:
                return {
                    table: connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
                    for table in tables
                }
        finally:
            engine.dispose()

    before = counts()
    assert before["epoch_metrics"] == 2 and before["checkpoint_files"] >= 1
    downgrade(database_url, "0006")
    upgrade(database_url)
    assert counts() == before


def test_the_tag_rows_trigger_is_made(database_url: str) -> None:
    """The trigger that keeps each tag row's copy of its job's columns (a batch migration that
    recreates the jobs table on SQLite would drop it silently)."""
    query = {
        "sqlite": "SELECT name FROM sqlite_master WHERE type = 'trigger'",
        "postgresql": "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal",
    }
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            names = set(connection.execute(text(query[engine.dialect.name])).scalars())
    finally:
        engine.dispose()
    assert JOB_TAGS_TRIGGER in names


def test_upgrading_numbers_each_experiments_events_in_id_order(
    configure, database_url: str
) -> None:
    """0010 gives the events already logged their experiment_seq (the experiment stream's id):
    1, 2, 3 ... per experiment, in id order; lone jobs' events get none."""
    from tests.builders import new_job_id
    from tests.support import add_experiment, drive_job

    configure(database_url)
    grouped = [new_job_id(), new_job_id()]
    alone = new_job_id()
    for job_id in (*grouped, alone):
        drive_job(job_id, 1, finish="succeeded")
    experiment_id = add_experiment(grouped)
    downgrade(database_url, "0009")
    upgrade(database_url)
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT experiment_id, experiment_seq FROM job_events ORDER BY id")
            ).all()
    finally:
        engine.dispose()
    assert [seq for experiment, seq in rows if experiment == experiment_id] == list(range(1, 9))
    assert all(seq is None for experiment, seq in rows if experiment is None) and len(rows) == 12
