"""The HTTP API in process (TestClient) on SQLite and PostgreSQL, with the embedded broker."""

from __future__ import annotations

import hashlib
import io

import matplotlib.image
import pytest
from fastapi.testclient import TestClient

from tests.support import drive_job

JOB = {"block": "residual", "hyperparameters": {"epochs": 3}, "train_samples": 50}


def submit(client: TestClient, **changes: object) -> dict:
    response = client.post("/jobs", json={**JOB, **changes})
    assert response.status_code == 202, response.text
    return response.json()


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
    assert [item["id"] for item in listing["items"]] == ids[::-1] and listing["total"] == 3
    assert [i["queue_position"] for i in listing["items"]] == [3, 2, 1]
    plain = client.get("/jobs", params={"block": "plain"}).json()
    assert [item["id"] for item in plain["items"]] == [ids[2], ids[0]]
    page = client.get("/jobs", params={"limit": 1, "offset": 1}).json()
    assert [item["id"] for item in page["items"]] == [ids[1]] and page["total"] == 3
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


def decode_png(content: bytes):  # type: ignore[no-untyped-def]
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


def test_checkpoint_download_with_sha256_etag(client: TestClient) -> None:
    job = submit(client)
    assert client.get(f"/jobs/{job['id']}/checkpoints").json() == []
    assert client.get(f"/jobs/{job['id']}/checkpoints/latest").status_code == 404
    payload = b"checkpoint bytes" * 1000
    drive_job(job["id"], 3, finish="succeeded", checkpoint=payload)
    listing = client.get(f"/jobs/{job['id']}/checkpoints").json()
    assert [row["name"] for row in listing] == ["latest", "best", "final"]
    digest = hashlib.sha256(payload).hexdigest()
    assert listing[1]["sha256"] == digest and listing[1]["size_bytes"] == len(payload)
    response = client.get(listing[1]["url"])
    assert response.status_code == 200 and response.content == payload
    assert response.headers["etag"] == f'"{digest}"'
    assert "attachment" in response.headers["content-disposition"]
    cached = client.get(listing[1]["url"], headers={"If-None-Match": f'"{digest}"'})
    assert cached.status_code == 304 and cached.content == b""
    unfinished = submit(client)
    drive_job(unfinished["id"], 1, checkpoint=payload)
    missing = client.get(f"/jobs/{unfinished['id']}/checkpoints/final")
    assert missing.status_code == 404 and missing.json()["error"] == "checkpoint_not_found"


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
