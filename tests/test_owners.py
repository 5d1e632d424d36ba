"""Who owns what, in the core on SQLite and PostgreSQL: a lone job takes the owner it was
submitted with; an experiment's jobs and every trial of a search, the later ones made when a
trial ends included, take the experiment's."""

from __future__ import annotations

from sqlalchemy import select

from jobs import experiments, submission
from jobs.db import session_scope
from jobs.settings import get_settings
from jobs.specs import ExperimentCreate, JobCreate
from jobs.tables import Experiment, Job
from tests.test_search import by_learning_rate, run_trial, search_body

SPEC = {"block": "mobile", "hyperparameters": {"epochs": 1}, "train_samples": 10}


def owners(experiment_id: int | None = None) -> list[str | None]:
    with session_scope(write=False) as session:
        query = select(Job.owner).order_by(Job.id)
        if experiment_id is not None:
            query = query.where(Job.experiment_id == experiment_id)
        return list(session.scalars(query))


def test_a_lone_job_and_a_grid_take_their_owner(db: str) -> None:
    with session_scope() as session:
        spec = JobCreate.model_validate(SPEC)
        submission.create_job(session, spec, settings=get_settings(), owner="alice")
        submission.create_job(session, spec, settings=get_settings())
        grid = ExperimentCreate.model_validate(
            {"name": "grid", "blocks": ["mobile", "plain"], "hyperparameters": {"epochs": 1}}
        )
        made = experiments.create_experiment(session, grid, settings=get_settings(), owner="bob")
        experiment_id = made.experiment.id
    assert owners()[:2] == ["alice", None]
    assert owners(experiment_id) == ["bob", "bob"]
    with session_scope(write=False) as session:
        experiment = session.get(Experiment, experiment_id)
        assert experiment is not None and experiment.owner == "bob"


def test_every_trial_of_a_search_takes_its_owner(db: str) -> None:
    spec = ExperimentCreate.model_validate(search_body(max_trials=4, max_concurrent=2))
    with session_scope() as session:
        made = experiments.create_experiment(session, spec, settings=get_settings(), owner="carol")
        experiment_id = made.experiment.id
    assert owners(experiment_id) == ["carol", "carol"]
    before = _ids(experiment_id)
    run_trial(min(before), by_learning_rate)  # its end makes the next trial
    assert len(_ids(experiment_id)) > len(before)
    assert set(owners(experiment_id)) == {"carol"}


def _ids(experiment_id: int) -> list[int]:
    with session_scope(write=False) as session:
        return list(session.scalars(select(Job.id).where(Job.experiment_id == experiment_id)))
