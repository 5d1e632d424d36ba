"""The HTTP API in process (TestClient) on SQLite and PostgreSQL, with the embedded broker."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import matplotlib.image
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.builders import submit_job
from tests.support import drive_job, flip_bit_keeping_mtime

JOB = {"block": "residual", "hyperparameters": {"epochs": 3}, "train_samples": 50}


def submit(client: TestClient, **changes: object) -> dict:
    return submit_job(client, **{**JOB, **changes})


def test_architectures_give_the_seed_table(client: TestClient) -> None:
    rows = {row["block"]: row for row in client.get("/architectures").json()}
    assert rows["plain"]["params"] == 11_050_212 and rows["plain"]["gmacs"] == 0.55
    assert rows["residual"]["params"] == 11_224_932 and rows["residual"]["gmacs"] == 0.56
    assert rows["mobile"]["params"] == 1_326_052 and rows["mobile"]["gmacs"] == 0.07
    assert rows["plain"]["params_millions"] == 11.05 and rows["mobile"]["params_millions"] == 1.33


def test_submit_fills_the_seed_defaults_and_complexity(client: TestClient) -> None:
    response = client.post("/jobs", json={"block": "plain"})
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued" and job["queue_position"] == 1
    assert job["spec"]["hyperparameters"] == {
        "batch_size": 128,
        "learning_rate": 0.01,
        "epochs": 100,
        "optimizer": "sgd",
        "momentum": 0.9,
        "weight_decay": 0.0,
        "scheduler": "none",
        "step_size": 30,
        "gamma": 0.1,
        "augment": True,
        "seed": 0,
        "precision": "fp32",
        "compile": None,
    }
    assert job["spec"]["dataset"] == "cifar100"
    assert (job["params"], job["macs"]) == (11_050_212, 551_979_108)
    assert (job["epochs_done"], job["epochs_total"]) == (0, 100)
    assert client.get(f"/jobs/{job['id']}").json()["id"] == job["id"]


def test_cifar10_jobs_count_ten_classes(client: TestClient) -> None:
    job = submit(client, block="plain", dataset="cifar10")
    assert job["params"] == 11_050_212 - 90 * 512 - 90


def test_list_filters_newest_first_and_paginates(client: TestClient) -> None:
    ids = [submit(client, block=block)["id"] for block in ("plain", "mobile", "plain")]
    listing = client.get("/jobs").json()
    assert [item["id"] for item in listing["items"]] == ids[::-1] and listing["next"] is None
    assert [i["queue_position"] for i in listing["items"]] == [3, 2, 1]
    plain = client.get("/jobs", params={"block": "plain"}).json()
    assert [item["id"] for item in plain["items"]] == [ids[2], ids[0]]
    first = client.get("/jobs", params={"limit": 1, "block": "plain"})
    assert [item["id"] for item in first.json()["items"]] == [ids[2]]
    following = first.json()["next"]
    assert first.headers["Link"] == f'<{following}>; rel="next"'
    page = client.get(following)
    assert [item["id"] for item in page.json()["items"]] == [ids[0]]
    assert page.json()["next"] is None and "Link" not in page.headers
    offset = client.get("/jobs", params={"offset": 1})
    assert offset.status_code == 422 and offset.json()["fields"][0]["field"] == "offset"
    client.post(f"/jobs/{ids[1]}/cancel")
    cancelled = client.get("/jobs", params={"status": "cancelled"}).json()
    assert [item["id"] for item in cancelled["items"]] == [ids[1]]
    assert client.get(f"/jobs/{ids[2]}").json()["queue_position"] == 2
    assert client.get("/jobs", params={"status": "bogus"}).status_code == 422


def test_metrics_polling_and_since_epoch(client: TestClient) -> None:
    job = submit(client)
    assert client.get(f"/jobs/{job['id']}/metrics").json()["metrics"] == []
    drive_job(job["id"], 3)
    body = client.get(f"/jobs/{job['id']}/metrics").json()
    assert body["status"] == "running" and body["epochs_done"] == 3
    assert [row["epoch"] for row in body["metrics"]] == [1, 2, 3]
    assert body["metrics"][1] == {
        "epoch": 2,
        "train_loss": 2.0,
        "train_accuracy": 0.2,
        "test_loss": 3.0,
        "test_accuracy": 0.1,
        "learning_rate": 0.01,
        "seconds": 2.0,
        "images_per_second": 25.0,
    }
    later = client.get(f"/jobs/{job['id']}/metrics", params={"since_epoch": 2}).json()
    assert [row["epoch"] for row in later["metrics"]] == [3]
    detail = client.get(f"/jobs/{job['id']}").json()
    assert detail["best_test_accuracy"] == pytest.approx(0.15)
    assert detail["final_train_loss"] == pytest.approx(4 / 3)
    assert detail["started_at"] is not None and detail["queue_position"] is None


def decode_png(content: bytes):
    assert content.startswith(b"\x89PNG\r\n\x1a\n")
    return matplotlib.image.imread(io.BytesIO(content), format="png")


def test_plots_are_valid_pngs(client: TestClient) -> None:
    first, second = submit(client, block="plain"), submit(client, block="mobile")
    drive_job(first["id"], 3)
    drive_job(second["id"], 2)
    for name in ("loss.png", "accuracy.png"):
        response = client.get(f"/jobs/{first['id']}/plots/{name}")
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        image = decode_png(response.content)
        assert image.shape[0] > 100 and image.shape[1] > 100
    empty = submit(client)
    assert decode_png(client.get(f"/jobs/{empty['id']}/plots/loss.png").content).size
    for metric in ("train_loss", "test_accuracy"):
        response = client.get(
            "/plots/compare.png", params={"jobs": f"{first['id']},{second['id']}", "metric": metric}
        )
        assert response.status_code == 200
        decode_png(response.content)
    assert client.get("/plots/compare.png", params={"jobs": "1,x"}).status_code == 422
    assert client.get("/plots/compare.png", params={"jobs": "999"}).status_code == 404
    assert client.get(f"/jobs/{first['id']}/plots/other.png").status_code == 404


def test_plots_are_drawn_once_per_data_and_revalidated_by_etag(client: TestClient) -> None:
    from app.plots import _cached_line_chart_png
    from jobs.db import session_scope
    from jobs.lifecycle import record_epoch

    job = submit(client)
    claim = drive_job(job["id"], 2)
    url = f"/jobs/{job['id']}/plots/loss.png"
    first = client.get(url)
    draws = _cached_line_chart_png.cache_info().misses
    again = client.get(url)
    assert again.content == first.content and again.headers["etag"] == first.headers["etag"]
    assert _cached_line_chart_png.cache_info().misses == draws, "the same data was drawn twice"
    unchanged = client.get(url, headers={"If-None-Match": f'W/{first.headers["etag"]}, "x"'})
    assert unchanged.status_code == 304 and unchanged.content == b""
    assert unchanged.headers["etag"] == first.headers["etag"]
    with session_scope() as session:  # a new epoch: a new image and tag
        row = {"epoch": 3, "train_loss": 1.0, "train_accuracy": 0.3, "test_loss": 2.0}
        row |= {"test_accuracy": 0.2, "learning_rate": 0.01, "seconds": 1.0}
        record_epoch(session, claim, row | {"images_per_second": 9.0}, lease_seconds=600)
    changed = client.get(url, headers={"If-None-Match": first.headers["etag"]})
    assert changed.status_code == 200 and changed.headers["etag"] != first.headers["etag"]
    decode_png(changed.content)


def test_checkpoint_download_with_sha256_etag(client: TestClient) -> None:
    job = submit(client)
    assert client.get(f"/jobs/{job['id']}/checkpoints").json() == []
    assert client.get(f"/jobs/{job['id']}/checkpoints/latest").status_code == 404
    payload = b"checkpoint bytes" * 1000
    drive_job(job["id"], 3, finish="succeeded", checkpoint=payload)
    listing = client.get(f"/jobs/{job['id']}/checkpoints").json()
    assert [row["name"] for row in listing] == ["latest", "best", "final"]
    digest = hashlib.sha256(payload).hexdigest()
    assert listing[2]["sha256"] == digest and listing[2]["size_bytes"] == len(payload)
    response = client.get(listing[2]["url"])
    assert response.status_code == 200 and response.content == payload
    assert response.headers["etag"] == f'"{digest}"'
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-length"] == str(len(payload))
    assert response.headers["content-disposition"] == (
        f'attachment; filename="job-{job["id"]}-final.pt"'
    )
    cached = client.get(listing[2]["url"], headers={"If-None-Match": f'"{digest}"'})
    assert cached.status_code == 304 and cached.content == b""
    assert cached.headers["etag"] == f'"{digest}"'
    unfinished = submit(client)
    drive_job(unfinished["id"], 1, checkpoint=payload)
    missing = client.get(f"/jobs/{unfinished['id']}/checkpoints/final")
    assert missing.status_code == 404 and missing.json() == {
        "error": "checkpoint_not_found",
        "detail": f"Job {unfinished['id']} has no final checkpoint yet.",
    }


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_latest_rotated_away_while_the_request_waited_serves_the_newer_one(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """The request reads which file `latest` names, then opens it; a worker that records a
    newer epoch between the two deletes the older file. The request chooses again instead of
    answering 404 while a newer checkpoint exists."""
    from jobs.artifacts import ArtifactStore, artifact_store
    from jobs.checkpoints import prunable_checkpoints
    from jobs.db import session_scope
    from jobs.lifecycle import CheckpointRecord, record_checkpoint, record_epoch
    from jobs.settings import get_settings
    from jobs.tables import Job
    from tests.support import epoch_figures

    job = submit(client)
    claim = drive_job(job["id"], 1, checkpoint=b"epoch one")
    store = artifact_store(get_settings())
    real_open = ArtifactStore.open_verified
    opened: list[str] = []

    def rotate_then_open(self: ArtifactStore, key: str, **recorded: object) -> object:
        """What the worker does between the request's read and its open: epoch 2 stored and
        recorded, and the rows and files no name points at any more removed."""
        if not opened:
            newer = store.checkpoint_key(job["id"], claim.attempt, 2)
            path = store.staging_dir(job["id"], claim.attempt) / "epoch-0002.pt"
            path.write_bytes(b"epoch two")
            digest = hashlib.sha256(b"epoch two").hexdigest()
            stored = store.put(newer, path, size_bytes=9, sha256=digest)
            with session_scope() as session:
                record_epoch(session, claim, epoch_figures(2), lease_seconds=600)
                record_checkpoint(
                    session, claim, CheckpointRecord(2, 9, stored.sha256, newer, store.locator)
                )
                pruned = prunable_checkpoints(session, session.get(Job, job["id"]))
                for row in pruned:
                    session.delete(row)
            store.delete([row.key for row in pruned])
        opened.append(key)
        return real_open(self, key, **recorded)  # type: ignore[arg-type]

    monkeypatch.setattr(ArtifactStore, "open_verified", rotate_then_open)
    response = client.request(method, f"/jobs/{job['id']}/checkpoints/latest")
    assert response.status_code == 200, response.text
    assert response.headers["x-checkpoint-epoch"] == "2"
    assert response.headers["etag"] == f'"{hashlib.sha256(b"epoch two").hexdigest()}"'
    assert response.content == (b"epoch two" if method == "GET" else b"")
    assert [Path(key).name for key in opened] == ["epoch-0001.pt", "epoch-0002.pt"]


CHECKPOINT = bytes(range(256)) * 40  # 10240 bytes, each offset recognisable


@pytest.fixture
def checkpoint_url(client: TestClient) -> str:
    job = submit(client)
    drive_job(job["id"], 1, checkpoint=CHECKPOINT)
    return f"/jobs/{job['id']}/checkpoints/latest"


def test_checkpoint_download_resumes_with_range(client: TestClient, checkpoint_url: str) -> None:
    size = len(CHECKPOINT)
    etag = f'"{hashlib.sha256(CHECKPOINT).hexdigest()}"'
    for header, start, end in (
        ("bytes=0-99", 0, 99),
        ("bytes=4096-", 4096, size - 1),
        ("bytes=-10", size - 10, size - 1),
        ("bytes=10000-99999", 10000, size - 1),  # an end past the file is cut to it
    ):
        part = client.get(checkpoint_url, headers={"Range": header})
        assert part.status_code == 206, header
        assert part.content == CHECKPOINT[start : end + 1], header
        assert part.headers["content-range"] == f"bytes {start}-{end}/{size}"
        assert part.headers["content-length"] == str(end - start + 1)
        assert part.headers["etag"] == etag

    # A resumed download: the first part, then the rest only if the file is still the same.
    first = client.get(checkpoint_url, headers={"Range": "bytes=0-4999"})
    rest = client.get(checkpoint_url, headers={"Range": "bytes=5000-", "If-Range": etag})
    assert rest.status_code == 206 and first.content + rest.content == CHECKPOINT
    changed = client.get(checkpoint_url, headers={"Range": "bytes=5000-", "If-Range": '"old"'})
    assert changed.status_code == 200 and changed.content == CHECKPOINT
    weak = client.get(checkpoint_url, headers={"Range": "bytes=5000-", "If-Range": f"W/{etag}"})
    assert weak.status_code == 200 and weak.content == CHECKPOINT

    # Several ranges: one multipart/byteranges body with a part per range.
    several = client.get(checkpoint_url, headers={"Range": "bytes=0-1, 100-102"})
    assert several.status_code == 206
    assert several.headers["content-type"].startswith("multipart/byteranges; boundary=")
    assert b"Content-Range: bytes 0-1/10240\r\n\r\n\x00\x01\r\n" in several.content
    assert b"Content-Range: bytes 100-102/10240\r\n\r\ndef\r\n" in several.content
    assert several.headers["content-length"] == str(len(several.content))

    for header in (f"bytes={size}-", f"bytes={size + 5}-{size + 9}", "bytes=-0"):
        refused = client.get(checkpoint_url, headers={"Range": header})
        assert refused.status_code == 416, header
        assert refused.headers["content-range"] == f"bytes */{size}"
        assert refused.json()["error"] == "range_not_satisfiable"
    for header in ("lines=0-5", "bytes=abc", "bytes 0-5", "bytes=9-3"):
        whole = client.get(checkpoint_url, headers={"Range": header})
        assert whole.status_code == 200 and whole.content == CHECKPOINT, header

    head = client.head(checkpoint_url, headers={"Range": "bytes=0-99"})
    assert head.status_code == 206 and head.content == b""
    assert head.headers["content-range"] == f"bytes 0-99/{size}"


def test_checkpoint_conditional_requests(client: TestClient, checkpoint_url: str) -> None:
    etag = f'"{hashlib.sha256(CHECKPOINT).hexdigest()}"'
    for if_none_match in (etag, f"W/{etag}", f'"other", {etag}', f'W/"x",W/{etag}', "*"):
        cached = client.get(checkpoint_url, headers={"If-None-Match": if_none_match})
        assert cached.status_code == 304, if_none_match
        assert cached.content == b"" and cached.headers["etag"] == etag
        head = client.head(checkpoint_url, headers={"If-None-Match": if_none_match})
        assert head.status_code == 304 and head.headers["etag"] == etag
    for if_none_match in ('"other"', 'W/"other", "x"', etag[:-2] + '"'):
        fresh = client.get(checkpoint_url, headers={"If-None-Match": if_none_match})
        assert fresh.status_code == 200 and fresh.content == CHECKPOINT, if_none_match

    last_modified = client.get(checkpoint_url).headers["last-modified"]
    later, earlier = "Fri, 01 Jan 2100 00:00:00 GMT", "Thu, 01 Jan 1970 00:00:00 GMT"
    for headers, status in (
        ({"If-Modified-Since": last_modified}, 304),
        ({"If-Modified-Since": later}, 304),
        ({"If-Modified-Since": earlier}, 200),
        ({"If-Modified-Since": "not a date"}, 200),
        # If-None-Match decides when both are sent.
        ({"If-None-Match": '"other"', "If-Modified-Since": later}, 200),
        ({"If-Match": etag}, 200),
        ({"If-Match": f'"other", {etag}'}, 200),
        ({"If-Match": "*"}, 200),
        ({"If-Match": '"other"'}, 412),
        ({"If-Match": f"W/{etag}"}, 412),  # If-Match compares strongly
        ({"If-Unmodified-Since": later}, 200),
        ({"If-Unmodified-Since": earlier}, 412),
        # If-Match decides when both are sent.
        ({"If-Match": etag, "If-Unmodified-Since": earlier}, 200),
    ):
        response = client.get(checkpoint_url, headers=headers)
        assert response.status_code == status, (headers, response.status_code)
        if status == 412:
            assert response.json()["error"] == "precondition_failed"
            assert response.headers["etag"] == etag


def test_checkpoint_download_serves_the_file_of_the_row(client: TestClient) -> None:
    from sqlalchemy import update

    from jobs.db import session_scope
    from jobs.settings import get_settings
    from jobs.tables import Checkpoint

    job = submit(client)
    drive_job(job["id"], 1, checkpoint=CHECKPOINT)
    url = f"/jobs/{job['id']}/checkpoints/latest"
    root = get_settings().resolved_artifact_dir
    other = root / "jobs" / str(job["id"]) / "other.pt"
    other.write_bytes(b"another file")

    def point_row_at(key: str, content: bytes = b"another file") -> None:
        with session_scope() as session:
            session.execute(
                update(Checkpoint)
                .where(Checkpoint.job_id == job["id"])
                .values(
                    key=key,
                    size_bytes=len(content),
                    sha256=hashlib.sha256(content).hexdigest(),
                )
            )

    point_row_at(str(other.relative_to(root)))
    assert client.get(url).content == b"another file"
    other.write_bytes(b"another fil3")  # damaged in place: never served
    damaged = client.get(url)
    assert damaged.status_code == 500 and damaged.json()["error"] == "checkpoint_damaged"
    outside = root.parent / "outside.pt"
    outside.write_bytes(b"not an artifact")
    for key in ("../outside.pt", str(outside), "jobs/none.pt"):
        point_row_at(key)
        response = client.get(url)
        assert response.status_code == 404, key
        assert response.json()["error"] == "checkpoint_not_found"


def test_a_checkpoint_damaged_at_rest_is_never_served_even_with_its_mtime_restored(
    client: TestClient,
) -> None:
    from sqlalchemy import update

    from jobs.db import session_scope
    from jobs.settings import get_settings
    from jobs.tables import Checkpoint, EpochMetric

    job = submit(client)
    drive_job(job["id"], 3, finish="succeeded", checkpoint=CHECKPOINT, checkpoint_epochs=(1, 3))
    with session_scope() as session:  # epoch 1 becomes `best`; 3 stays `latest` and `final`
        session.execute(
            update(EpochMetric)
            .where(EpochMetric.job_id == job["id"], EpochMetric.epoch == 1)
            .values(test_accuracy=0.99)
        )
        [key] = session.execute(
            select(Checkpoint.key).where(Checkpoint.job_id == job["id"], Checkpoint.epoch == 3)
        ).scalars()
    base = f"/jobs/{job['id']}/checkpoints"
    etag = f'"{hashlib.sha256(CHECKPOINT).hexdigest()}"'
    first = client.get(f"{base}/final")  # verified once, and remembered
    assert first.status_code == 200 and first.content == CHECKPOINT

    flip_bit_keeping_mtime(get_settings().resolved_artifact_dir / key)

    for method, name, headers in (
        ("GET", "final", {}),
        ("GET", "latest", {}),
        ("HEAD", "final", {}),
        ("GET", "final", {"Range": "bytes=0-99"}),
        ("GET", "final", {"Range": "bytes=5000-", "If-Range": etag}),
        ("HEAD", "final", {"Range": "bytes=0-99"}),
        ("GET", "final", {"If-None-Match": etag}),
        ("GET", "final", {"If-Match": etag}),
    ):
        response = client.request(method, f"{base}/{name}", headers=headers)
        assert response.status_code == 500, (method, name, headers, response.status_code)
        assert response.headers["content-type"] == "application/json", (method, headers)
        assert "etag" not in response.headers and "content-range" not in response.headers
        if method == "GET":
            assert response.json() == {
                "error": "checkpoint_damaged",
                "detail": f"The {name} checkpoint of job {job['id']} (epoch 3) no longer "
                "matches its recorded size and sha256; it is not served.",
            }
        else:
            assert response.content == b""
    states = {row["name"]: row["state"] for row in client.get(base).json()}
    assert states == {"latest": "damaged", "best": "intact", "final": "damaged"}
    best = client.get(f"{base}/best")  # the job's other checkpoint is untouched
    assert best.status_code == 200 and best.content == CHECKPOINT
    assert best.headers["x-checkpoint-epoch"] == "1"


def test_head_answers_every_read_like_get_without_a_body(
    client: TestClient, checkpoint_url: str
) -> None:
    job_id = checkpoint_url.split("/")[2]
    for path in (
        "/health",
        "/ready",
        "/architectures",
        "/jobs",
        f"/jobs/{job_id}",
        f"/jobs/{job_id}/metrics",
        f"/jobs/{job_id}/plots/loss.png",
        f"/plots/compare.png?jobs={job_id}",
        f"/jobs/{job_id}/checkpoints",
        checkpoint_url,
        "/openapi.json",
        "/jobs/999",
        f"/jobs/{job_id}/checkpoints/best",
    ):
        get, head = client.get(path), client.head(path)
        assert head.status_code == get.status_code, path
        assert head.content == b"", path
        assert head.headers["content-type"] == get.headers["content-type"], path
        if "png" not in path:  # PNG bytes may differ from one rendering to the next
            assert head.headers["content-length"] == str(len(get.content)), path
    assert client.head(f"/jobs/{job_id}/cancel").status_code == 405
    assert client.get(f"/jobs/{job_id}").json()["status"] == "running"


def test_a_wrong_method_is_405_listing_every_method_of_the_path(client: TestClient) -> None:
    job = submit(client)
    for method, path, allowed in (
        ("DELETE", "/jobs", "GET, HEAD, POST"),
        ("PUT", "/jobs", "GET, HEAD, POST"),
        ("PUT", f"/jobs/{job['id']}", "GET, HEAD, PATCH, DELETE"),
        ("GET", f"/jobs/{job['id']}/cancel", "POST"),
        ("OPTIONS", "/health", "GET, HEAD"),
        ("POST", f"/jobs/{job['id']}/checkpoints/latest", "GET, HEAD"),
        ("TRACE", "/plots/compare.png", "GET, HEAD"),
    ):
        response = client.request(method, path)
        assert response.status_code == 405, (method, path)
        assert response.headers["allow"] == allowed, (method, path)
        assert response.json() == {
            "error": "method_not_allowed",
            "detail": f"{method} is not allowed on {path}; it answers {allowed}.",
        }
    assert client.get(f"/jobs/{job['id']}").json()["status"] == "queued"


def test_only_canonical_job_ids_name_a_job(client: TestClient) -> None:
    job = submit(client)
    assert job["id"] == 1
    for spelling in ("1.0", "+1", "01", "1e0", "0x1", " 1", "1_0", "-1", "0", "2147483648"):
        for tail in ("", "/metrics", "/checkpoints", "/plots/loss.png"):
            response = client.get(f"/jobs/{spelling}{tail}")
            assert response.status_code == 404, (spelling, tail)
            assert response.json()["error"] == "not_found"
        assert client.post(f"/jobs/{spelling}/cancel").status_code == 404
    assert client.get("/jobs/1").status_code == 200
    assert client.get("/jobs/1").json()["status"] == "queued"


def test_compare_takes_a_plain_list_of_ids(client: TestClient) -> None:
    job = submit(client)
    drive_job(job["id"], 2)
    assert client.get("/plots/compare.png", params={"jobs": f"{job['id']},{job['id']}"}).is_success
    for far in (2**31, 2**63, 2**64, 10**30):
        response = client.get("/plots/compare.png", params={"jobs": f"{job['id']},{far}"})
        assert response.status_code == 404, far
        assert response.json() == {"error": "job_not_found", "detail": f"No job with id {far}."}
    for bad in ("", "1,", ",1", "1,,2", "1, 2", "01", "+1", "1.0", "0", "x", ",".join(["1"] * 13)):
        response = client.get("/plots/compare.png", params={"jobs": bad})
        assert response.status_code == 422, bad
        assert response.json()["error"] in ("invalid_request", "validation_error")


def test_plots_use_whole_epochs_and_leave_jobs_without_epochs_out_of_the_legend() -> None:
    from app.plots import Series, line_chart

    def whole(ticks: list[float], limits: tuple[float, float]) -> list[float]:
        shown = [tick for tick in ticks if limits[0] <= tick <= limits[1]]
        assert shown and all(float(tick).is_integer() for tick in shown), shown
        return shown

    for epochs in ([], [1], [1, 2], list(range(1, 8))):
        figure = line_chart(
            [Series("", epochs, [1.0] * len(epochs))], metric="train_loss", title="t"
        )
        axes = figure.axes[0]
        whole(list(axes.get_xticks()), axes.get_xlim())
    empty = line_chart([Series("", [], [])], metric="train_loss", title="t", empty_note="none")
    assert [text.get_text() for text in empty.axes[0].texts] == ["none"]

    compared = line_chart(
        [Series("plain (job 1)", [1, 2], [3.0, 2.0]), Series("mobile (job 2)", [], [])],
        metric="test_accuracy",
        title="t",
        empty_note="no epochs recorded",
    )
    axes = compared.axes[0]
    legend = axes.get_legend()
    labels = [text.get_text() for text in legend.get_texts()] if legend else []
    assert labels == ["plain (job 1)"]
    assert [line.get_label() for line in axes.get_lines()] == ["plain (job 1)"]
    assert [text.get_text() for text in axes.texts] == ["no epochs recorded: mobile (job 2)"]


def test_a_finished_job_without_a_checkpoint_is_not_said_to_have_one_yet(
    client: TestClient,
) -> None:
    for finish in ("failed", "cancelled", None):
        job = submit(client)
        drive_job(job["id"], 1, finish=finish)
        detail = client.get(f"/jobs/{job['id']}/checkpoints/final").json()["detail"]
        if finish is None:
            assert detail == f"Job {job['id']} has no final checkpoint yet."
        else:
            assert detail == f"Job {job['id']} {finish} without a final checkpoint."


def test_cancel_in_each_state(client: TestClient) -> None:
    queued = submit(client)
    first = client.post(f"/jobs/{queued['id']}/cancel")
    assert first.status_code == 200 and first.json()["status"] == "cancelled"
    again = client.post(f"/jobs/{queued['id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"

    running = submit(client)
    drive_job(running["id"], 1)
    response = client.post(f"/jobs/{running['id']}/cancel").json()
    assert response["status"] == "running" and response["cancel_requested"] is True

    finished = submit(client)
    drive_job(finished["id"], 3, finish="succeeded")
    refused = client.post(f"/jobs/{finished['id']}/cancel")
    assert refused.status_code == 409 and refused.json()["error"] == "job_not_cancellable"
    assert client.get(f"/jobs/{finished['id']}").json()["status"] == "succeeded"
    assert client.post("/jobs/424242/cancel").status_code == 404


def test_unknown_job_is_a_json_404(client: TestClient) -> None:
    for path in (
        "/jobs/999",
        "/jobs/999/metrics",
        "/jobs/999/checkpoints",
        "/jobs/999/plots/loss.png",
    ):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"] == "job_not_found"
        assert "999" in response.json()["detail"]


def test_ready_and_health(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready", "database": "ok", "broker": "ok"}


def test_openapi_documents_every_route_with_an_example(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in (
        "/jobs",
        "/jobs/{job_id}",
        "/jobs/{job_id}/metrics",
        "/jobs/{job_id}/cancel",
        "/jobs/{job_id}/plots/{plot_name}",
        "/plots/compare.png",
        "/jobs/{job_id}/checkpoints",
        "/jobs/{job_id}/checkpoints/{name}",
        "/architectures",
        "/health",
        "/ready",
    ):
        assert path in paths, path
        for operation in paths[path].values():
            assert operation.get("summary"), path
    components = schema["components"]["schemas"]
    assert components["JobCreate"]["examples"][0]["block"] == "residual"
    for name in (
        "JobRead",
        "JobList",
        "JobMetrics",
        "CheckpointRead",
        "ArchitectureRead",
        "ErrorRead",
        "Health",
        "Readiness",
    ):
        assert components[name]["examples"], name


def test_openapi_lists_the_valid_names_and_ids(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()

    def parameter(path: str, name: str) -> dict:
        [found] = [p for p in schema["paths"][path]["get"]["parameters"] if p["name"] == name]
        return found["schema"]

    assert parameter("/jobs/{job_id}/plots/{plot_name}", "plot_name")["enum"] == [
        "loss.png",
        "accuracy.png",
    ]
    assert parameter("/jobs/{job_id}/checkpoints/{name}", "name")["enum"] == [
        "latest",
        "best",
        "final",
    ]
    jobs_pattern = parameter("/plots/compare.png", "jobs")["pattern"]
    import re

    assert re.fullmatch(jobs_pattern, "1,2,12") and not re.fullmatch(jobs_pattern, "1, 2")
    assert parameter("/jobs/{job_id}", "job_id") | {"title": None} == {
        "type": "integer",
        "minimum": 1,
        "maximum": 2**31 - 1,
        "description": "The job's id.",
        "title": None,
    }
    submit_operation = schema["paths"]["/jobs"]["post"]
    [key] = [p for p in submit_operation["parameters"] if p["name"] == "idempotency-key"]
    assert key["schema"]["anyOf"][0]["minLength"] == 1
    for status in ("400", "413", "415", "422"):
        assert submit_operation["responses"][status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorRead"
        }
    download = schema["paths"]["/jobs/{job_id}/checkpoints/{name}"]["get"]["responses"]
    assert {"200", "206", "304", "404", "412", "416"} <= set(download)


def test_plots_and_downloads_do_their_slow_work_after_the_read_transaction(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drawing a chart and opening (hashing) a checkpoint file happen with no database
    connection checked out: a read never holds a transaction while it does slow work."""
    import app.routes.checkpoints as checkpoint_routes
    import app.routes.plots as plot_routes
    from jobs.artifacts import ArtifactStore
    from jobs.db import get_engine

    held: list[tuple[str, int]] = []

    def observed(module: object, name: str) -> None:
        real = getattr(module, name)

        def wrapper(*args: object, **kwargs: object) -> object:
            held.append((name, get_engine(write=False).pool.checkedout()))
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    for name in ("line_chart_png", "png_bytes"):
        observed(plot_routes, name)
    observed(checkpoint_routes, "object_download")
    observed(ArtifactStore, "open_verified")  # where every backend hashes
    job = submit(client)
    drive_job(job["id"], 3, finish="succeeded", checkpoint=b"weights")
    experiment = client.post(
        "/experiments",
        json={"name": "e", "blocks": ["mobile"], "hyperparameters": {"epochs": 1}},
    )
    assert experiment.status_code == 202, experiment.text
    experiment_id = experiment.json()["id"]
    for url in (
        f"/jobs/{job['id']}/plots/loss.png",
        f"/plots/compare.png?jobs={job['id']}",
        f"/experiments/{experiment_id}/plots/test_accuracy.png",
        f"/experiments/{experiment_id}/plots/accuracy-vs-macs.png",
        f"/jobs/{job['id']}/checkpoints/final",
        f"/jobs/{job['id']}/checkpoints",
    ):
        assert client.get(url).status_code == 200, url
    assert held == [
        ("line_chart_png", 0),
        ("line_chart_png", 0),
        ("line_chart_png", 0),
        ("png_bytes", 0),
        ("open_verified", 0),
        ("object_download", 0),
        ("open_verified", 0),  # the listing's one checkpoint (latest = best = final)
    ]
