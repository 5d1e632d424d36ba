"""The job core's own rules: the layering (adapters on the core, never the reverse, and the
core's own imports one way), the domain events and their receivers in one documented order, the
one dispatch order behind both claims and queue positions, a recorded epoch that says whether to
go on, and the statuses and failure reasons that every adapter takes from the core's enums."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from jobs import dispatch, experiments, lifecycle, submission
from jobs.accounts import NO_ACCOUNTS
from jobs.db import session_scope
from jobs.lifecycle import GO_ON, StopReason, claim_job, claim_next_job, record_epoch
from jobs.settings import get_settings
from jobs.specs import ExperimentCreate, JobCreate
from jobs.tables import FailureReason, Job, JobStatus
from tests.builders import job_spec, new_jobs
from tests.support import epoch_row

ROOT = Path(__file__).resolve().parent.parent


def imported_packages(package: str) -> dict[str, set[str]]:
    """{module file: top-level packages it imports} for every module of a package."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_adapters_depend_on_the_core_never_the_reverse() -> None:
    for module, names in imported_packages("jobs").items():
        assert not names & {"app", "worker", "cli", "fastapi", "starlette", "torch"}, module
    for module, names in imported_packages("worker").items():
        assert "app" not in names, module
    for module, names in imported_packages("app").items():
        assert "worker" not in names, module


def test_the_http_adapter_writes_no_row_and_holds_no_queries() -> None:
    """Routes parse, call the core and render: app/ builds no SQL statement and calls no
    session method that reads or writes rows (it only opens the core's sessions)."""
    for path in sorted((ROOT / "app").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
                # Type hints and the exceptions that mean "database unavailable" only.
                assert node.module in ("sqlalchemy.orm", "sqlalchemy.exc"), path
                if node.module == "sqlalchemy.orm":
                    assert [alias.name for alias in node.names] == ["Session"], path
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "session"
            ):
                assert node.func.attr not in SESSION_ROW_METHODS, (path, node.lineno)


SESSION_ROW_METHODS = {"add", "add_all", "delete", "execute", "get", "merge", "flush", "scalar"}


def core_modules() -> dict[str, Path]:
    """{module name: file} for every module of jobs/."""
    modules = {}
    for path in sorted((ROOT / "jobs").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def test_no_module_of_the_core_imports_inside_a_function() -> None:
    """An import inside a function is how a cycle hides from a reader; the core has none."""
    for name, path in core_modules().items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                inner = [
                    item.lineno
                    for item in ast.walk(node)
                    if isinstance(item, ast.Import | ast.ImportFrom)
                ]
                assert not inner, f"{name} imports inside {node.name} (lines {inner})"


def test_the_core_imports_run_one_way() -> None:
    """Every import of jobs/ counted (a function's too), the graph of its modules has no cycle;
    and every module is named in a layer of the import-linter contract `make lint` checks."""
    import tomllib

    import grimp

    graph = grimp.build_graph("jobs", cache_dir=None)
    modules = {module for module in graph.modules if module.startswith("jobs")}
    edges = {
        module: {m for m in graph.find_modules_directly_imported_by(module) if m in modules}
        for module in modules
    }
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(edges[module]):
            if state.get(imported) == "open":
                cycle = path[path.index(imported) :] + [imported]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if imported not in state:
                visit(imported, [*path, imported])
        state[module] = "done"

    for module in sorted(modules):
        if module not in state:
            visit(module, [module])

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    layered = {name.strip() for layer in layers for name in layer.split("|")}
    packages = {"jobs", "jobs.search", "jobs.notifications"}  # docstrings only
    for module in core_modules():
        named = any(module == item or module.startswith(item + ".") for item in layered)
        assert named or module in packages, f"{module} is in no layer of the import contract"


def test_the_lifecycle_names_neither_the_search_nor_the_notifications() -> None:
    tree = ast.parse((ROOT / "jobs" / "lifecycle.py").read_text())
    imported = {
        node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    } | {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    names = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    for forbidden in ("search", "notifications", "study", "outbox"):
        assert not any(forbidden in item for item in imported | names), forbidden


def test_the_receivers_of_each_event_in_their_documented_order() -> None:
    """jobs/wiring.py's docstring lists them; this pins the same order."""
    from jobs import signals, wiring
    from jobs.search import study

    assert (
        signals.Receivers(
            job_ended=(study.on_job_ended,),
            job_paused=(study.on_job_paused,),
            epoch_stored=(study.on_epoch_stored,),
        )
        == wiring.RECEIVERS
    )
    assert signals.installed() == wiring.RECEIVERS  # conftest connected this process
    doc = wiring.__doc__ or ""
    receivers = wiring.RECEIVERS
    for receiver in (*receivers.job_ended, *receivers.job_paused, *receivers.epoch_stored):
        assert f"{receiver.__module__}.{receiver.__name__}" in doc


def test_a_new_reaction_to_a_jobs_end_is_one_receiver_in_the_same_transaction(db: str) -> None:
    """A receiver installed beside the wiring's runs inside the transaction that ended the job:
    what it writes commits with the end or not at all; no edit to the lifecycle."""
    from jobs import signals, wiring
    from jobs.counters import add_to_counter
    from jobs.tables import ServiceCounter

    heard: list[signals.JobEnded] = []

    def count_ends(session: Any, event: signals.JobEnded) -> list[signals.TrialMove]:
        heard.append(event)
        add_to_counter(session, f"ended:{event.status}")
        return []

    signals.install(
        signals.Receivers(
            job_ended=(*wiring.RECEIVERS.job_ended, count_ends),
            job_paused=wiring.RECEIVERS.job_paused,
            epoch_stored=wiring.RECEIVERS.epoch_stored,
        )
    )
    try:
        first, second = new_jobs(2)
        with pytest.raises(RuntimeError), session_scope() as session:
            lifecycle.cancel_job(session, first)
            raise RuntimeError("the request failed after the cancel")
        with session_scope() as session:
            assert session.get(ServiceCounter, "ended:cancelled") is None  # rolled back with it
            lifecycle.cancel_job(session, second)
        with session_scope() as session:
            assert session.get(ServiceCounter, "ended:cancelled").value == 1
    finally:
        wiring.connect()
    assert [(event.job_id, event.status, event.cause) for event in heard] == [
        (first, JobStatus.CANCELLED, signals.EndCause.CANCEL),
        (second, JobStatus.CANCELLED, signals.EndCause.CANCEL),
    ]


def test_an_event_emitted_before_the_receivers_are_installed_is_refused(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobs import signals

    (job_id,) = new_jobs(1)
    monkeypatch.setattr(signals, "_installed", None)  # a process that never connected
    with pytest.raises(signals.NotWired), session_scope() as session:
        lifecycle.cancel_job(session, job_id)


def new_grid(learning_rates: list[float], **fields: Any) -> tuple[int, list[int]]:
    """A grid experiment of mobile jobs, one per learning rate: its id and its jobs' ids."""
    with session_scope() as session:
        experiment_id = experiments.create_experiment(
            session,
            ExperimentCreate(
                name="e",
                blocks=["mobile"],
                hyperparameters={"epochs": 2},
                grid={"learning_rate": learning_rates},
                **fields,
            ),
            settings=get_settings(),
        ).experiment.id
    with session_scope(write=False) as session:
        query = select(Job.id).where(Job.experiment_id == experiment_id).order_by(Job.id)
        return experiment_id, list(session.scalars(query))


def test_a_new_jobs_id_is_sent_when_the_transaction_commits_not_at_its_savepoint(
    configure, database_url: str, redis_url: str
) -> None:  # type: ignore[no-untyped-def]
    """create_job adds the row inside a SAVEPOINT, whose release SQLAlchemy reports as a
    commit: an id sent then reaches an idle worker before the row is visible to it."""
    from tests.support import redis_queue_job_ids

    configure(database_url, broker_url=redis_url)
    with session_scope() as session:
        job_id = submission.create_job(session, job_spec(), settings=get_settings()).job.id
        assert redis_queue_job_ids(redis_url) == []
        try:
            with session.begin_nested():  # a savepoint rolled back keeps the outer job's id
                session.execute(select(Job.id))
                raise RuntimeError
        except RuntimeError:
            pass
    assert redis_queue_job_ids(redis_url) == [job_id]
    with session_scope() as session:
        submission.create_job(session, job_spec(), settings=get_settings())
        session.rollback()
    assert redis_queue_job_ids(redis_url) == [job_id]


def test_queue_positions_follow_the_order_in_which_jobs_are_claimed(db: str) -> None:
    ids = new_jobs(5)
    with session_scope() as session:
        lifecycle.cancel_job(session, ids[1])  # leaves the queue
        claim_job(session, ids[3], worker="early", lease_seconds=30)  # taken out of turn
    with session_scope(write=False) as session:
        positions = dispatch.queue_positions(session, ids)
        assert dispatch.queue_position(session, ids[1]) is None
    assert positions == {ids[0]: 1, ids[2]: 2, ids[4]: 3}
    claimed = []
    for _ in range(4):
        with session_scope() as session:
            claim = claim_next_job(session, worker="w", lease_seconds=30)
            claimed.append(None if claim is None else claim.job_id)
    assert claimed == sorted(positions, key=positions.__getitem__) + [None]


def test_a_page_of_positions_and_each_job_alone_agree_with_the_claim_order(db: str) -> None:
    """A page's positions (the whole queue numbered once) and one job's (entries ahead counted)
    are two queries for one order: mixed priorities, an experiment and lone jobs behind it."""
    lone = new_jobs(3)
    _, grid_ids = new_grid([0.1, 0.01, 0.001, 0.0001])
    assert len(grid_ids) == 4
    late = new_jobs(2)
    with session_scope() as session:
        lifecycle.set_priority(session, late[1], 5, actor=NO_ACCOUNTS)
        lifecycle.set_priority(session, lone[2], -5, actor=NO_ACCOUNTS)
    ids = lone + grid_ids + late
    with session_scope(write=False) as session:
        page = dispatch.queue_positions(session, ids)
        alone = {job_id: dispatch.queue_position(session, job_id) for job_id in ids}
    assert page == alone and sorted(page.values()) == list(range(1, len(ids) + 1))
    assert page[late[1]] == 1 and page[lone[2]] == len(ids)
    claimed = []
    for _ in ids:
        with session_scope() as session:
            claim = claim_next_job(session, worker="w", lease_seconds=30)
            assert claim is not None
            claimed.append(claim.job_id)
    assert claimed == sorted(page, key=page.__getitem__)


def test_an_experiments_jobs_are_made_as_a_lone_job_is(db: str) -> None:
    """An experiment's jobs are inserted together (submission.add_jobs); each gets the row,
    tags and first status event a job submitted alone gets, and its later events follow."""
    from jobs.events import events_after
    from jobs.tables import JobTag

    spec = JobCreate(block="mobile", hyperparameters={"epochs": 2}, tags=["a", "b"])
    with session_scope() as session:
        lone = submission.create_job(session, spec, settings=get_settings()).job.id
    experiment_id, _ = new_grid([0.1, 0.01, 0.001], tags=["a", "b"])
    with session_scope(write=False) as session:
        grid = list(
            session.scalars(select(Job).where(Job.experiment_id == experiment_id).order_by(Job.id))
        )
        assert [job.config["learning_rate"] for job in grid] == [0.1, 0.01, 0.001]
        single = session.get(Job, lone)
        assert single is not None
        columns = ("status", "tags", "params", "macs", "epochs_total", "event_seq", "block")
        for job in grid:
            assert [getattr(job, name) for name in columns] == [
                getattr(single, name) for name in columns
            ]
        assert [job.fair_share_key for job in grid] == list(
            range(grid[0].fair_share_key, grid[0].fair_share_key + 3)
        )
        tags = session.execute(
            select(JobTag.job_id, JobTag.tag).order_by(JobTag.job_id, JobTag.tag)
        )
        assert list(tags) == [
            (job_id, tag) for job_id in [lone] + [j.id for j in grid] for tag in "ab"
        ]
        first = events_after(session, job_ids=[lone])
        made_events = events_after(session, experiment_id=experiment_id)
    assert [(event.seq, event.kind) for event in first] == [(1, "status")]
    assert [(event.job_id, event.seq) for event in made_events] == [(job.id, 1) for job in grid]
    for event in made_events:
        assert event.data == {**first[0].data, "job_id": event.job_id}
    with session_scope() as session:
        lifecycle.cancel_job(session, grid[0].id)
    with session_scope(write=False) as session:
        after = events_after(session, job_ids=[grid[0].id])
    assert [(event.seq, event.data["status"]) for event in after] == [
        (1, "queued"),
        (2, "cancelled"),
    ]


def test_an_experiments_new_jobs_are_announced_to_the_event_watchers(db: str) -> None:
    if not db.startswith("postgresql"):
        pytest.skip("NOTIFY is PostgreSQL's; SQLite's watchers poll the newest event id")
    import psycopg
    from sqlalchemy import make_url

    from jobs.events import JOB_EVENTS_CHANNEL

    url = make_url(db).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute(f"LISTEN {JOB_EVENTS_CHANNEL}")
        _, ids = new_grid([0.1, 0.01, 0.001])
        heard = [note.payload for note in listener.notifies(timeout=10, stop_after=3)]
    assert sorted(heard) == sorted(str(job_id) for job_id in ids)


def test_a_recorded_epoch_says_whether_the_attempt_goes_on(db: str) -> None:
    (job_id,) = new_jobs(1)
    with session_scope() as session:
        claim = claim_job(session, job_id, worker="a", lease_seconds=30)
    assert claim is not None
    with session_scope() as session:
        decision = record_epoch(session, claim, epoch_row(1, 0.3), lease_seconds=30)
    assert decision == GO_ON and decision.go_on
    with session_scope() as session:
        lifecycle.cancel_job(session, job_id)
    with session_scope() as session:
        decision = record_epoch(session, claim, epoch_row(2, 0.4), lease_seconds=30)
    assert not decision.go_on and decision.stop == StopReason.CANCELLED


def test_the_api_takes_statuses_and_failure_reasons_from_the_core(client) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["JobStatus"]["enum"] == [status.value for status in JobStatus]
    assert schemas["FailureReason"]["enum"] == [reason.value for reason in FailureReason]
    job = client.post("/jobs", json={"block": "mobile", "hyperparameters": {"epochs": 1}}).json()
    assert (job["status"], job["ended"]) == ("queued", False)
    cancelled = client.post(f"/jobs/{job['id']}/cancel").json()
    assert (cancelled["status"], cancelled["ended"]) == ("cancelled", True)
    experiment = client.post(
        "/experiments", json={"name": "e", "blocks": ["mobile"], "hyperparameters": {"epochs": 1}}
    ).json()
    assert set(experiment["status_counts"]) == {status.value for status in JobStatus}
    assert experiment["ended"] is False and experiment["jobs"][0]["ended"] is False


def test_every_status_has_a_style_in_the_command_line_and_the_dashboard() -> None:
    from cli.render import STATUS_STYLES

    css = (ROOT / "app" / "static" / "dashboard.css").read_text()
    for status in JobStatus:
        assert status.value in STATUS_STYLES, status
        assert f".status-{status.value} {{" in css, status


def test_the_readme_documents_every_failure_reason_from_the_enum() -> None:
    readme = (ROOT / "README.md").read_text()
    for reason in FailureReason:
        assert f"| `{reason}` | {reason.description} |" in readme, reason
    assert "invalid_spec" not in readme
