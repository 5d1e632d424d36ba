"""Every documented filter, pair of filters and sort of GET /jobs, and every sort of an
experiment's jobs, is planned as a read of one index in its order that holds every filter as an
equality, on a database without statistics (the service runs no ANALYZE): on SQLite by the
indexes alone, on PostgreSQL with jobs.db.index_order. So a page costs its rows whatever the
data; bench/scale.py measures it."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, func, insert, select
from sqlalchemy.engine import Connection

from bench.scale import TAG, Shape, build
from jobs.db import get_engine, session_scope
from jobs.listing import EXPERIMENT_SORT_COLUMNS, Cursor, experiment_job_keys, list_jobs
from jobs.tables import Job, JobTag

FILTERS: dict[str, Any] = {"status": "running", "block": "plain", "tag": TAG}
FILTER_COMBINATIONS = [
    (),
    *((name,) for name in [*FILTERS, "experiment_id"]),
    *itertools.combinations([*FILTERS, "experiment_id"], 2),
]


@contextmanager
def statements() -> Iterator[list[tuple[str, Any]]]:
    """The statements the read sessions run meanwhile, with their parameters."""
    seen: list[tuple[str, Any]] = []

    def record(_c: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    engine = get_engine(write=False)
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


@pytest.fixture
def built(db: str) -> dict[str, Any]:
    """2,000 jobs in experiments of 400, the newest 200 queued, every tenth tagged, and every
    job with ten more tags (a planner without statistics guesses the rows an index range holds
    from the table's size: on tables this small every guess is one row, and any index looks as
    good as another); no statistics."""
    ids = build(db, Shape(2000, 2, experiment_size=400))
    with session_scope() as session:
        jobs = session.execute(
            select(Job.id, Job.status, Job.block, Job.experiment_id, Job.best_test_accuracy)
        ).all()
        session.execute(
            insert(JobTag),
            [
                {
                    "tag": f"other-{n}",
                    "job_id": job.id,
                    "status": job.status,
                    "block": job.block,
                    "experiment_id": job.experiment_id,
                    "best_test_accuracy": job.best_test_accuracy,
                }
                for job in jobs
                for n in range(10)
            ],
        )
        assert session.execute(select(func.count()).select_from(JobTag)).scalar_one() > 20_000
    return ids


def sqlite_plans(connection: Connection, seen: list[tuple[str, Any]]) -> list[str]:
    return [
        " | ".join(row[3] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", p))
        for sql, p in seen
        if sql.startswith("SELECT")
    ]


def postgresql_plans(connection: Connection, seen: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """Each SELECT's plan, under the planner settings the session had set when it ran."""
    plans = []
    with connection.begin():
        for sql, parameters in seen:
            if not sql.startswith("SELECT") or "set_config" in sql:
                connection.exec_driver_sql(sql, parameters)
                continue
            explained = connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {sql}", parameters)
            plans.append(explained.scalar_one()[0]["Plan"])
    return plans


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def check(database: str, seen: list[tuple[str, Any]], filters: list[str], tie_sort: bool) -> None:
    """Every SELECT seen reads an index holding each filter as an equality, in its order: no
    sort (but, for a descending experiment sort, of the ties of the value the page ends in),
    no scan of a table (but the jobs in id order, with no filter)."""
    columns = {"experiment_id" if name == "experiment_id" else name for name in filters}
    with get_engine(write=False).connect() as connection:
        if database == "sqlite":
            for plan in sqlite_plans(connection, seen):
                assert "TEMP B-TREE FOR ORDER BY" not in plan, plan
                assert "RIGHT PART" not in plan or tie_sort, plan
                if not columns:
                    continue
                assert "SCAN" not in plan, plan
                condition = re.search(r"USING (?:COVERING )?INDEX \w+ \(([^)]*)\)", plan)
                assert condition is not None, plan
                for column in columns:
                    assert f"{column}=?" in condition.group(1), (column, plan)
            return
        for plan in postgresql_plans(connection, seen):
            kinds = [node["Node Type"] for node in nodes(plan)]
            assert "Sort" not in kinds and not any("Bitmap" in kind for kind in kinds), plan
            assert "Incremental Sort" not in kinds or tie_sort, plan
            assert "Seq Scan" not in kinds, plan
            conditions = " ".join(
                node.get("Index Cond", "") for node in nodes(plan) if "Index Name" in node
            )
            for column in columns:
                assert re.search(rf"\b{column}\)?(?:::\w+)? = ", conditions), (
                    column,
                    json.dumps(plan),
                )


@pytest.mark.parametrize("sort", ["created", "best_test_accuracy"])
def test_every_filter_pair_and_sort_reads_one_index_in_order(
    db: str, built: dict[str, Any], sort: str
) -> None:
    values = {**FILTERS, "experiment_id": built["experiment"]}
    for combination in FILTER_COMBINATIONS:
        with session_scope(write=False) as session, statements() as seen:
            page, following = list_jobs(
                session, sort=sort, limit=5, **{name: values[name] for name in combination}
            )
            if following is not None:  # a page after the first, from its cursor
                list_jobs(
                    session,
                    sort=sort,
                    limit=5,
                    cursor=following,
                    **{name: values[name] for name in combination},
                )
        check(db.split(":")[0].split("+")[0], seen, list(combination), tie_sort=False)


def test_every_sort_of_an_experiments_jobs_reads_one_index_in_order(
    db: str, built: dict[str, Any]
) -> None:
    experiment = built["experiment"]
    for sort, order in itertools.product(EXPERIMENT_SORT_COLUMNS, ("asc", "desc")):
        of = f"experiment:{sort}:{order}"
        for cursor in (None, Cursor(of, 5, None if sort == "job_id" else 1.0).encode()):
            with session_scope(write=False) as session, statements() as seen:
                experiment_job_keys(session, experiment, sort=sort, order=order, cursor=cursor)
            check(
                db.split(":")[0].split("+")[0],
                seen,
                ["experiment_id"],
                tie_sort=order == "desc" and sort not in ("job_id", "block", "status"),
            )
