"""Each checkpoint row names the store that holds it: after ARTIFACT_URL changes (a local folder
moved, checkpoints moved to an object store, or back), the older checkpoints are still listed,
served, resumed from and deleted in the store that holds them; one in a store this server cannot
open is listed as missing and its download says why. The migration gives existing rows the store
configured when it runs."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select, text, update

from jobs.artifacts import configured_locator, store_locator
from jobs.db import session_scope
from jobs.settings import get_settings
from jobs.tables import Checkpoint
from tests.builders import new_job_id
from tests.support import S3Server, drive_job, s3_objects

CONTENT = b"epoch two of a checkpoint" * 100


def client() -> TestClient:
    from app.main import create_app

    return TestClient(create_app())


def listing(api: TestClient, job_id: int) -> dict[str, str]:
    response = api.get(f"/jobs/{job_id}/checkpoints")
    assert response.status_code == 200, response.text
    return {item["name"]: item["state"] for item in response.json()}


def test_after_the_artifact_folder_moves_older_checkpoints_are_served_from_theirs(
    configure: Any, database_url: str, tmp_path: Path
) -> None:
    first = tmp_path / "first-store"
    configure(database_url, ARTIFACT_DIR=str(first))
    job_id = new_job_id(hyperparameters={"epochs": 2})
    drive_job(job_id, 2, finish="succeeded", checkpoint=CONTENT)
    with session_scope() as session:
        (row,) = session.execute(select(Checkpoint)).scalars()
        assert row.store_url == first.resolve().as_uri() == configured_locator(get_settings())

    configure(database_url, ARTIFACT_DIR=str(tmp_path / "second-store"))
    with client() as api:
        assert listing(api, job_id) == {"latest": "intact", "best": "intact", "final": "intact"}
        download = api.get(f"/jobs/{job_id}/checkpoints/final")
        assert download.status_code == 200 and download.content == CONTENT
        assert download.headers["etag"] == f'"{hashlib.sha256(CONTENT).hexdigest()}"'
        assert api.delete(f"/jobs/{job_id}").status_code == 204
    assert not list(first.rglob("*.pt"))  # removed from the store that held them


def test_a_checkpoint_in_a_store_this_server_cannot_open_is_listed_missing_and_says_why(
    configure: Any, database_url: str
) -> None:
    configure(database_url)
    job_id = new_job_id(hyperparameters={"epochs": 1})
    drive_job(job_id, 1, finish="succeeded", checkpoint=CONTENT)
    with session_scope() as session:
        session.execute(update(Checkpoint).values(store_url="gs://a-bucket/ckpt"))
    with client() as api:
        assert listing(api, job_id) == {"latest": "missing", "best": "missing", "final": "missing"}
        download = api.get(f"/jobs/{job_id}/checkpoints/latest")
    assert download.status_code == 404
    assert download.json()["error"] == "checkpoint_not_found"
    assert "store this server cannot open" in download.json()["detail"]
    assert "gs://" in download.json()["detail"]


def test_checkpoints_stored_on_s3_stay_readable_after_switching_to_a_local_folder(
    configure: Any, sqlite_url: str, s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    configure(sqlite_url, ARTIFACT_URL=f"s3://{s3_bucket}/ckpt", S3_ENDPOINT_URL=s3_server.url)
    job_id = new_job_id(hyperparameters={"epochs": 1})
    drive_job(job_id, 1, finish="succeeded", checkpoint=CONTENT)
    with session_scope() as session:
        (row,) = session.execute(select(Checkpoint)).scalars()
    # The server is part of what is recorded: the setting may go away.
    assert row.store_url == store_locator(
        f"s3://{s3_bucket}/ckpt", get_settings_options(s3_server.url)
    )
    assert row.store_url.startswith(f"s3://{s3_bucket}/ckpt?endpoint_url=http")

    configure(sqlite_url, ARTIFACT_URL=str(tmp_path / "local-store"))
    with client() as api:
        assert listing(api, job_id)["final"] == "intact"
        download = api.get(f"/jobs/{job_id}/checkpoints/final")
        assert download.status_code == 200 and download.content == CONTENT
        assert api.delete(f"/jobs/{job_id}").status_code == 204
    assert s3_objects(s3_server, s3_bucket, "ckpt/") == {}


def get_settings_options(endpoint: str) -> Any:
    from jobs.artifacts import StoreOptions

    return StoreOptions(endpoint_url=endpoint)


def test_the_migration_gives_existing_checkpoints_the_configured_store(
    configure: Any, database_url: str, tmp_path: Path
) -> None:
    from jobs.migrations import downgrade, upgrade

    configure(database_url, ARTIFACT_DIR=str(tmp_path / "where-they-are"))
    job_id = new_job_id(hyperparameters={"epochs": 1})
    downgrade(database_url, "0007")
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO checkpoint_files (job_id, epoch, attempt, size_bytes, sha256, "
                    "relative_path, recorded_at) VALUES (:job, 1, 1, 3, :sha, 'jobs/1/x.pt', "
                    "CURRENT_TIMESTAMP)"
                ),
                {"job": job_id, "sha": "ab" * 32},
            )
        upgrade(database_url)
        with engine.connect() as connection:
            stored = connection.execute(text("SELECT key, store_url FROM checkpoint_files")).one()
    finally:
        engine.dispose()
    assert tuple(stored) == ("jobs/1/x.pt", (tmp_path / "where-they-are").resolve().as_uri())
