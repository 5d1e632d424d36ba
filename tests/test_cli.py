"""The `cifar-jobs` command, run as a separate process against a real API process (and a real
worker where a job must train): submit --follow, metrics, plots, verified and resumable
downloads, cancel, and one-line errors. The experiment commands are in test_cli_experiments.py."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pty
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import CLI_API_KEY, IN_CI, service_environment
from tests.support import (
    PNG_SIGNATURE,
    ROOT,
    assert_one_line_error,
    cli_environment,
    free_port,
    run_cli,
    start_api,
    submitted_id,
)

# Each test runs the command as its own Python process.
pytestmark = pytest.mark.slow

TINY_JOB = ["--block", "mobile", "--epochs", "2", "--batch-size", "32"]
TINY_JOB += ["--train-samples", "64", "--test-samples", "32", "--seed", "7"]
# An epoch line of --follow: "      1/2      4.5953     0.00%  ..."
EPOCH_LINE = re.compile(r"^\s*(\d+)/(\d+)\s+(\S+)\s+(\S+)%\s+(\S+)\s+(\S+)%")


@pytest.fixture(scope="module")
def followed_job(cli_api: str) -> tuple[int, subprocess.CompletedProcess[str]]:
    """A tiny job submitted with --follow and trained by the worker: (job id, the command)."""
    result = run_cli("submit", *TINY_JOB, "--name", "cli follow", "--follow", url=cli_api)
    return submitted_id(result), result


def api_get(url: str, path: str) -> httpx.Response:
    response = httpx.get(f"{url}{path}", timeout=30)
    assert response.status_code == 200, response.text
    return response


# --- submit --follow ------------------------------------------------------------------------


def test_submit_follow_prints_every_epoch_and_exits_zero_when_the_job_succeeds(
    cli_api: str, followed_job: tuple[int, subprocess.CompletedProcess[str]]
) -> None:
    job_id, result = followed_job
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "\x1b[" not in result.stdout, "a pipe gets plain lines, not a live bar"
    metrics = api_get(cli_api, f"/jobs/{job_id}/metrics").json()["metrics"]
    printed = [EPOCH_LINE.match(line) for line in result.stdout.splitlines()]
    rows = [match for match in printed if match]
    assert [(int(row[1]), int(row[2])) for row in rows] == [(1, 2), (2, 2)], result.stdout
    for row, epoch in zip(rows, metrics, strict=True):
        assert float(row[3]) == pytest.approx(epoch["train_loss"], abs=1e-4)
        assert float(row[6]) == pytest.approx(epoch["test_accuracy"] * 100, abs=0.01)
    last_line = result.stdout.strip().splitlines()[-1]
    assert last_line.startswith(f"job {job_id} succeeded after 2 epochs"), last_line


def test_follow_under_a_terminal_draws_a_progress_bar(
    cli_api: str, followed_job: tuple[int, subprocess.CompletedProcess[str]]
) -> None:
    job_id, _ = followed_job
    controller, terminal = pty.openpty()
    env = {**cli_environment(cli_api), "TERM": "xterm-256color", "COLUMNS": "100"}
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "follow", str(job_id)],
        cwd=ROOT,
        env=env,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closed: the command has exited
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)
    assert process.wait(timeout=60) == 0
    text = output.decode(errors="replace")
    assert "━" in text and "2/2" in text, text  # rich's bar and its epochs column
    assert f"job {job_id} succeeded" in text


# --- metrics, plots, list, show ---------------------------------------------------------------


def test_metrics_as_csv_json_and_table(
    cli_api: str, followed_job: tuple[int, subprocess.CompletedProcess[str]]
) -> None:
    job_id, _ = followed_job
    expected = api_get(cli_api, f"/jobs/{job_id}/metrics").json()

    as_csv = run_cli("metrics", str(job_id), "--format", "csv", url=cli_api)
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    for row, epoch in zip(rows, expected["metrics"], strict=True):
        assert {field: float(value) for field, value in row.items()} == pytest.approx(epoch)

    as_json = run_cli("metrics", str(job_id), "--format", "json", url=cli_api)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == expected

    later = run_cli("metrics", str(job_id), "--format", "json", "--since-epoch", "1", url=cli_api)
    assert [row["epoch"] for row in json.loads(later.stdout)["metrics"]] == [2]

    table = run_cli("metrics", str(job_id), url=cli_api)
    assert table.returncode == 0, table.stderr
    assert "train loss" in table.stdout
    assert f"{expected['metrics'][1]['test_accuracy'] * 100:.2f}%" in table.stdout


def test_plot_writes_png_files(
    cli_api: str, followed_job: tuple[int, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    job_id, _ = followed_job
    result = run_cli(
        "plot", str(job_id), "--metric", "loss", "-o", str(tmp_path / "loss.png"), url=cli_api
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "loss.png").read_bytes().startswith(PNG_SIGNATURE)
    # Without -o: job-ID-METRIC.png in the working directory.
    result = run_cli("plot", str(job_id), "--metric", "accuracy", url=cli_api, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / f"job-{job_id}-accuracy.png").read_bytes().startswith(PNG_SIGNATURE)


def test_list_show_and_cancel_of_an_ended_job(
    cli_api: str, followed_job: tuple[int, subprocess.CompletedProcess[str]]
) -> None:
    job_id, _ = followed_job
    listed = run_cli("list", "--status", "succeeded", url=cli_api)
    assert listed.returncode == 0, listed.stderr
    assert re.search(rf"^\s*{job_id}\s+cli follow\s+mobile\s+succeeded\s+2/2", listed.stdout, re.M)
    assert listed.stdout.splitlines()[-1].strip() == "1 job", listed.stdout

    none_failed = run_cli("list", "--status", "failed", "--json", url=cli_api)
    assert json.loads(none_failed.stdout)["items"] == []

    shown = run_cli("show", str(job_id), url=cli_api)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"^status\s+succeeded$", shown.stdout, re.M), shown.stdout
    assert re.search(r"^checkpoints\s+.*final \(epoch 2", shown.stdout, re.M), shown.stdout

    as_json = json.loads(run_cli("show", str(job_id), "--json", url=cli_api).stdout)
    assert as_json["id"] == job_id and as_json["status"] == "succeeded"

    ended = run_cli("cancel", str(job_id), url=cli_api)
    assert assert_one_line_error(ended, 1) == (
        f"Job {job_id} already succeeded; it cannot be cancelled."
    )


# --- download ---------------------------------------------------------------------------------


def test_download_verifies_the_sha256_resumes_and_deletes_a_corrupted_file(
    cli_api: str, followed_job: tuple[int, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    job_id, _ = followed_job
    listing = {row["name"]: row for row in api_get(cli_api, f"/jobs/{job_id}/checkpoints").json()}
    final = listing["final"]
    content = api_get(cli_api, final["url"]).content

    whole = tmp_path / "whole.pt"
    result = run_cli("download", str(job_id), "final", "-o", str(whole), url=cli_api)
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(whole.read_bytes()).hexdigest() == final["sha256"]
    assert final["sha256"] in result.stdout and "verified" in result.stdout
    assert not (tmp_path / "whole.pt.part").exists()

    # A partial download is resumed from where it stopped (Range), and verified as a whole.
    half = len(content) // 2
    resumed = tmp_path / "resumed.pt"
    (tmp_path / "resumed.pt.part").write_bytes(content[:half])
    result = run_cli("download", str(job_id), "-o", str(resumed), url=cli_api)
    assert result.returncode == 0, result.stderr
    assert f"at byte {half} of {len(content)}" in result.stdout
    assert resumed.read_bytes() == content
    assert not (tmp_path / "resumed.pt.part").exists()

    # A partial file whose bytes are not the checkpoint's: detected, deleted, exit 1.
    corrupted = tmp_path / "corrupted.pt"
    (tmp_path / "corrupted.pt.part").write_bytes(bytes(b ^ 0xFF for b in content[:half]))
    result = run_cli("download", str(job_id), "-o", str(corrupted), url=cli_api)
    message = assert_one_line_error(result, 1)
    assert "does not match its sha256" in message and final["sha256"] in message
    assert not corrupted.exists() and not (tmp_path / "corrupted.pt.part").exists()

    # Into a folder: job-ID-NAME.pt there.
    result = run_cli("download", str(job_id), "best", "-o", str(tmp_path), url=cli_api)
    assert result.returncode == 0, result.stderr
    best = (tmp_path / f"job-{job_id}-best.pt").read_bytes()
    assert hashlib.sha256(best).hexdigest() == listing["best"]["sha256"]


# --- cancel, Ctrl-C, 401, 503 (an API with a key and no worker) ------------------------------


def _submit_queued(url: str) -> int:
    response = httpx.post(
        f"{url}/jobs",
        json={"block": "mobile", "hyperparameters": {"epochs": 1}},
        headers={"X-API-Key": CLI_API_KEY},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    return int(response.json()["id"])


def _cancel_quietly(url: str, job_id: int) -> None:
    httpx.post(f"{url}/jobs/{job_id}/cancel", headers={"X-API-Key": CLI_API_KEY}, timeout=30)


def test_cancel_then_follow_exits_one(cli_keyed_api: str) -> None:
    result = run_cli("submit", *TINY_JOB, url=cli_keyed_api, api_key=CLI_API_KEY)
    assert result.returncode == 0, result.stderr
    job_id = submitted_id(result)
    try:
        cancelled = run_cli("cancel", str(job_id), url=cli_keyed_api, api_key=CLI_API_KEY)
        assert cancelled.returncode == 0, cancelled.stderr
        assert cancelled.stdout.strip() == f"job {job_id} cancelled"

        followed = run_cli("follow", str(job_id), url=cli_keyed_api, api_key=CLI_API_KEY)
        assert followed.returncode == 1, (followed.stdout, followed.stderr)
        assert followed.stdout.strip().splitlines()[-1] == f"job {job_id} cancelled after 0 epochs"

        again = run_cli("cancel", str(job_id), url=cli_keyed_api, api_key=CLI_API_KEY)
        assert again.returncode == 0 and again.stdout.strip() == f"job {job_id} cancelled"
    finally:
        _cancel_quietly(cli_keyed_api, job_id)


def _interruptible() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_following_and_leaves_the_job_alone(cli_keyed_api: str) -> None:
    job_id = _submit_queued(cli_keyed_api)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", "follow", str(job_id), "--interval", "0.2"],
            cwd=ROOT,
            env=cli_environment(cli_keyed_api, CLI_API_KEY),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # As from a terminal: a suite started in the background (`make test &`) passes
            # SIGINT on as ignored, and Python then never raises KeyboardInterrupt.
            preexec_fn=_interruptible,
        )
        assert process.stdout is not None
        first_line = process.stdout.readline()  # following has begun
        assert first_line.startswith(f"job {job_id}: queued"), first_line
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
        assert process.returncode == 130, (stdout, stderr)
        assert stderr == (
            f"cifar-jobs: stopped following job {job_id}; it goes on (cancel it with: "
            f"cifar-jobs cancel {job_id})\n"
        )
        job = httpx.get(
            f"{cli_keyed_api}/jobs/{job_id}", headers={"X-API-Key": CLI_API_KEY}, timeout=30
        ).json()
        assert job["status"] == "queued" and not job["cancel_requested"]
    finally:
        _cancel_quietly(cli_keyed_api, job_id)


@pytest.mark.e2e
def test_follow_rides_out_an_api_restart(tmp_path: Path, dataset_root: Path) -> None:
    """The follower keeps polling while the API is down and goes on when it is back."""
    from jobs.migrations import upgrade

    database_url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    upgrade(database_url)
    env = service_environment(tmp_path, database_url, dataset_root)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = start_api(env, tmp_path, port)
    job_id = int(httpx.post(f"{url}/jobs", json={"block": "mobile"}, timeout=30).json()["id"])
    follower = subprocess.Popen(
        [sys.executable, "-m", "cli", "follow", str(job_id), "--interval", "0.2"],
        cwd=ROOT,
        env=cli_environment(url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline().startswith(f"job {job_id}: queued")
        api.stop()
        outage = follower.stdout.readline()
        assert outage == f"cannot reach the API at {url}: connection refused; still trying\n"
        api = start_api(env, tmp_path, port)
        assert follower.stdout.readline() == "the API answers again\n"
        httpx.post(f"{url}/jobs/{job_id}/cancel", timeout=30)
        stdout, stderr = follower.communicate(timeout=60)
        assert follower.returncode == 1, (stdout, stderr)
        assert stdout.strip().endswith(f"job {job_id} cancelled after 0 epochs")
    finally:
        if follower.poll() is None:
            follower.kill()
        api.stop()


def test_api_key_missing_wrong_and_given(cli_keyed_api: str) -> None:
    missing = run_cli("list", url=cli_keyed_api)
    assert assert_one_line_error(missing, 1) == (
        "the API needs a token: pass --token, set CIFAR_JOBS_TOKEN or run cifar-jobs login"
    )
    wrong = run_cli("list", "--api-key", "nope", url=cli_keyed_api)
    assert assert_one_line_error(wrong, 1) == (
        "the API refused the token from --token: it is not the key or a user's token"
    )
    wrong_env = run_cli("list", url=cli_keyed_api, api_key="nope")
    assert "the API refused the token from CIFAR_JOBS_API_KEY" in assert_one_line_error(
        wrong_env, 1
    )
    from_env = run_cli("list", "--json", url=cli_keyed_api, api_key=CLI_API_KEY)
    assert from_env.returncode == 0, from_env.stderr
    assert "items" in json.loads(from_env.stdout)
    # Connection flags before the command, and the flag over the environment.
    from_flag = run_cli(
        "--api-key", CLI_API_KEY, "list", url=cli_keyed_api, api_key="stale-key-in-the-env"
    )
    assert from_flag.returncode == 0, from_flag.stderr


def test_a_full_queue_is_a_503_naming_retry_after(cli_keyed_api: str) -> None:
    queued = [_submit_queued(cli_keyed_api) for _ in range(2)]  # the API's limit
    try:
        result = run_cli("submit", *TINY_JOB, url=cli_keyed_api, api_key=CLI_API_KEY)
        message = assert_one_line_error(result, 1)
        assert message.startswith("the API is unavailable (queue_full, retry after 30 s): ")
        assert "2 jobs are already queued (limit 2)" in message
    finally:
        for job_id in queued:
            _cancel_quietly(cli_keyed_api, job_id)


# --- errors -----------------------------------------------------------------------------------


def test_a_stopped_server_is_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for args in (["list"], ["show", "1"], ["submit", "--block", "mobile"], ["follow", "3"]):
        result = run_cli(*args, url=url)
        assert (
            assert_one_line_error(result, 1) == f"cannot reach the API at {url}: connection refused"
        )


def test_not_found_and_validation_errors_are_one_line(cli_api: str, tmp_path: Path) -> None:
    for args in (
        ["show", "999999"],
        ["metrics", "999999"],
        ["cancel", "999999"],
        ["download", "999999"],
        ["plot", "999999"],
    ):
        assert assert_one_line_error(run_cli(*args, url=cli_api), 1) == "job 999999 not found"

    too_few = run_cli("submit", "--block", "mobile", "--epochs", "0", url=cli_api)
    assert assert_one_line_error(too_few, 2) == (
        "hyperparameters.epochs: Input should be greater than or equal to 1"
    )
    spec = tmp_path / "spec.yaml"
    spec.write_text("block: mobile\nhyperparameters:\n  epochs: 1\nbogus: 1\n")
    unknown = run_cli("submit", "--file", str(spec), url=cli_api)
    assert assert_one_line_error(unknown, 2) == "bogus: Extra inputs are not permitted"
    block = run_cli("submit", "--block", "dense", url=cli_api)
    assert assert_one_line_error(block, 2).startswith("block: Input should be 'plain'")


def test_usage_errors_exit_two_in_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # none of these reach the API
    cases = {
        ("submit", "--epochs", "x"): "argument --epochs: invalid int value: 'x'",
        ("submit", "--epochs", "2"): "--block is required",
        ("show", "abc"): "argument ID: an id is a positive integer, not 'abc'",
        ("download", "1", "newest"): "argument name: invalid choice: 'newest'",
        ("frobnicate",): "argument COMMAND: invalid choice: 'frobnicate'",
        ("submit", "--file", str(tmp_path / "missing.yaml")): "cannot read the spec file",
        ("experiment", "submit", "--block", "plain"): "--name is required",
        ("experiment", "submit", "--name", "x"): "give the blocks to compare with --block",
        ("experiment", "submit", "--name", "x", "--block", "plain", "--grid", "lr"): "--grid takes",
        ("experiment", "submit", "--name", "x", "--block", "plain", "--seeds", "0,a"): "--seeds",
        ("list", "--url", "localhost:8000"): "the API URL must look like",
    }
    for args, expected in cases.items():
        assert expected in assert_one_line_error(run_cli(*args, url=url), 2), args


# --- request bodies (no API needed) -------------------------------------------------------------


def test_submit_dry_run_lays_the_flags_over_a_yaml_spec(tmp_path: Path) -> None:
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "block: plain\nhyperparameters:\n  learning_rate: 1e-3\n  epochs: 5\ntags: [a]\n"
    )
    url = f"http://127.0.0.1:{free_port()}"
    args = ["submit", "-f", str(spec), "--epochs", "2", "--augment", "no", "--tag", "b"]
    result = run_cli(*args, "--dry-run", url=url)
    assert result.returncode == 0, result.stderr
    # YAML's 1e-3 is a number, as in JSON; only the flags given are sent.
    assert json.loads(result.stdout) == {
        "block": "plain",
        "hyperparameters": {"learning_rate": 0.001, "epochs": 2, "augment": False},
        "tags": ["b"],
    }


def test_experiment_dry_run_builds_the_grid_and_seeds(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run_cli(
        "experiment", "submit", "--name", "lr sweep", "--block", "plain", "--block", "residual",
        "--grid", "learning_rate=0.01,0.1", "--grid", "batch_size=64,128", "--seeds", "0,1",
        "--epochs", "3", "--train-samples", "500", "--dry-run", url=url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "name": "lr sweep",
        "blocks": ["plain", "residual"],
        "grid": {"learning_rate": [0.01, 0.1], "batch_size": [64, 128]},
        "seeds": [0, 1],
        "hyperparameters": {"epochs": 3},
        "train_samples": 500,
    }
    spec = tmp_path / "experiment.json"
    spec.write_text(json.dumps({"name": "report", "preset": "report", "tags": ["r"]}))
    result = run_cli("experiment", "submit", "-f", str(spec), "--epochs", "1", "--dry-run", url=url)
    assert json.loads(result.stdout) == {
        "name": "report",
        "preset": "report",
        "tags": ["r"],
        "hyperparameters": {"epochs": 1},
    }


def test_priority_is_a_flag_of_both_submissions(cli_keyed_api: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    job = run_cli("submit", "--block", "mobile", "--priority", "7", "--dry-run", url=url)
    assert json.loads(job.stdout) == {"block": "mobile", "priority": 7}
    experiment = run_cli(
        "experiment", "submit", "--name", "n", "--preset", "report", "--priority", "-3",
        "--dry-run", url=url,
    )  # fmt: skip
    assert json.loads(experiment.stdout) == {"name": "n", "preset": "report", "priority": -3}

    key = CLI_API_KEY
    made = run_cli("submit", *TINY_JOB, "--priority", "7", "--json", url=cli_keyed_api, api_key=key)
    assert made.returncode == 0, made.stderr
    job_id = json.loads(made.stdout)["id"]
    try:
        assert json.loads(made.stdout)["priority"] == 7
        grouped = run_cli(
            "experiment", "submit", "--name", "low", "--block", "mobile", "--epochs", "1",
            "--priority", "-3", "--json", url=cli_keyed_api, api_key=key,
        )  # fmt: skip
        assert grouped.returncode == 0, grouped.stderr
        experiment_job = json.loads(grouped.stdout)["jobs"][0]["job_id"]
        assert json.loads(grouped.stdout)["priority"] == -3
        shown = run_cli("show", str(experiment_job), url=cli_keyed_api, api_key=key)
        assert re.search(r"^priority\s+-3$", shown.stdout, re.M), shown.stdout
        assert re.search(r"^queue\s+2nd: after 1 job of higher priority\.$", shown.stdout, re.M), (
            shown.stdout
        )
        _cancel_quietly(cli_keyed_api, experiment_job)
    finally:
        _cancel_quietly(cli_keyed_api, job_id)
    refused = run_cli("submit", *TINY_JOB, "--priority", "101", url=cli_keyed_api, api_key=key)
    assert "priority" in assert_one_line_error(refused, 2)


# --- the console script -------------------------------------------------------------------------


def test_the_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "cifar-jobs"
    if not script.exists():
        message = f"{script} is missing: `make venv` installs it (pip install --no-deps -e .)"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: cifar-jobs")
    for command in ("submit", "follow", "download", "experiment"):
        assert command in result.stdout


def test_list_reads_page_after_page_through_the_cursors() -> None:
    """--limit and --all follow each page's `next` until enough rows are read."""
    import argparse

    from cli.main import _read_pages

    pages = {
        "/jobs": {"items": [{"id": 5}, {"id": 4}], "next": "/jobs?cursor=b"},
        "/jobs?cursor=b": {"items": [{"id": 3}, {"id": 2}], "next": "/jobs?cursor=c"},
        "/jobs?cursor=c": {"items": [{"id": 1}], "next": None},
    }
    asked: list[tuple[str, dict[str, object]]] = []

    class Api:
        def get_json(self, path: str, **params: object) -> object:
            asked.append((path, params))
            return pages[path]

    everything = _read_pages(Api(), "/jobs", argparse.Namespace(all=True, limit=50), tag="t")
    assert [item["id"] for item in everything["items"]] == [5, 4, 3, 2, 1]
    assert everything["next"] is None
    assert asked[0] == ("/jobs", {"tag": "t", "limit": 200})
    assert [path for path, _ in asked[1:]] == ["/jobs?cursor=b", "/jobs?cursor=c"]
    asked.clear()
    three = _read_pages(Api(), "/jobs", argparse.Namespace(all=False, limit=3))
    assert [item["id"] for item in three["items"]] == [5, 4, 3]
    assert three["next"] == "/jobs?cursor=c" and len(asked) == 2


def test_show_says_why_a_queued_job_is_where_it_is() -> None:
    """`show` prints the API's queue_reason (and the priority) under the status of a queued
    job, and neither once it has left the queue."""
    from cli.render import job_details

    job = {
        "id": 7,
        "name": None,
        "tags": [],
        "block": "mobile",
        "params": 1326052,
        "macs": 68_000_000,
        "dataset": "cifar100",
        "status": "queued",
        "priority": 0,
        "queue_position": 2,
        "queue_reason": "2nd: after 1 job of higher priority.",
        "epochs_done": 0,
        "epochs_total": 3,
        "spec": {},
        "attempt": 0,
        "max_attempts": 3,
    }
    lines = [line.plain for line in job_details(job, [])]
    status = next(i for i, line in enumerate(lines) if line.startswith("status"))
    assert re.fullmatch(r"status\s+queued \(position 2\)", lines[status])
    assert re.fullmatch(r"priority\s+0", lines[status + 1])
    assert re.fullmatch(r"queue\s+2nd: after 1 job of higher priority\.", lines[status + 2])
    running = {**job, "status": "running", "queue_position": None, "queue_reason": None}
    assert not any(
        line.plain.startswith(("queue", "priority")) for line in job_details(running, [])
    )


def test_search_dry_run_builds_the_space_from_flags() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run_cli(
        "search", "--name", "digits", "--block", "mobile",
        "--param", "learning_rate=loguniform:0.001:0.3", "--param", "batch_size=choice:16,64",
        "--sampler", "tpe", "--startup-trials", "4", "--max-trials", "12",
        "--max-concurrent", "2", "--pruner", "hyperband", "--min-epochs", "1",
        "--reduction-factor", "3", "--objective", "test_loss", "--epochs", "6",
        "--priority", "5", "--dry-run", url=url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "name": "digits",
        "blocks": ["mobile"],
        "hyperparameters": {"epochs": 6},
        "priority": 5,
        "search": {
            "space": {
                "learning_rate": {"loguniform": [0.001, 0.3]},
                "batch_size": {"choice": [16, 64]},
            },
            "pruner": {"type": "hyperband", "min_epochs": 1, "reduction_factor": 3},
            "sampler": "tpe",
            "max_trials": 12,
            "max_concurrent": 2,
            "startup_trials": 4,
            "objective": {"metric": "test_loss"},
        },
    }
    bad = run_cli("search", "--name", "x", "--block", "mobile", "--param", "lr=between:1", url=url)
    assert_one_line_error(bad, 2)
    assert "--param takes NAME=KIND:ARGS" in bad.stderr


def test_a_search_from_flags_shows_its_settings_then_resumes_and_refuses_a_bad_extension(
    cli_keyed_api: str,
) -> None:
    url = cli_keyed_api
    made = run_cli(
        "search", "--name", "flags", "--block", "mobile",
        "--param", "learning_rate=choice:0.1,0.2", "--sampler", "grid",
        "--max-concurrent", "1", "--pruner", "none", "--epochs", "2", url=url, api_key=CLI_API_KEY,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    experiment_id = int(re.search(r"search (\d+) submitted: 1 of 2 trials made", made.stdout)[1])
    shown = run_cli("experiment", "show", str(experiment_id), url=url, api_key=CLI_API_KEY)
    assert shown.returncode == 0, shown.stderr
    assert "sampler: grid, seed 0; pruner: none; objective: test_accuracy (max)" in shown.stdout
    assert re.search(r"\btrial\b.*\brung\b", shown.stdout), shown.stdout
    cancelled = run_cli("experiment", "cancel", str(experiment_id), url=url, api_key=CLI_API_KEY)
    assert cancelled.returncode == 0, cancelled.stderr
    resumed = run_cli("experiment", "resume", str(experiment_id), url=url, api_key=CLI_API_KEY)
    assert resumed.returncode == 0, resumed.stderr
    assert f"search {experiment_id} resumed: queued" in resumed.stdout
    again = run_cli("experiment", "resume", str(experiment_id), url=url, api_key=CLI_API_KEY)
    assert "was not cancelled" in assert_one_line_error(again, 1)
    too_many = run_cli(
        "experiment", "extend", str(experiment_id), "--max-trials", "3", url=url,
        api_key=CLI_API_KEY,
    )  # fmt: skip
    assert "the grid has 2 points" in assert_one_line_error(too_many, 2)
    cleanup = run_cli("experiment", "cancel", str(experiment_id), url=url, api_key=CLI_API_KEY)
    assert cleanup.returncode == 0, cleanup.stderr
