"""The migrations are the only way the schema is made: they must build exactly the tables that
jobs/tables.py declares, on every backend, and downgrade cleanly."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from jobs.migrations import downgrade, upgrade
from jobs.tables import Base


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
