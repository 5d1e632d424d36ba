"""The `cifar-jobs experiment` commands against a real API process and worker: submit (preset
"report" and a grid), follow, show with the summary table and CSV, plots, list, cancel, and the
API's experiment errors in one line. They need the /experiments routes of the API."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CLI_API_KEY
from tests.support import PNG_SIGNATURE, assert_one_line_error, run_cli, submitted_id

# Each test runs the command as its own Python process.
pytestmark = pytest.mark.slow

# The report's figures that the preset's summary shows next to each block's results.
REPORT_ACCURACY = {"plain": "70.55%", "residual": "72.56%", "mobile": "61.49%"}
BLOCKS = tuple(REPORT_ACCURACY)


@pytest.fixture(scope="module")
def report_experiment(cli_api: str) -> tuple[int, subprocess.CompletedProcess[str]]:
    """The report's comparison with tiny settings (one epoch, 32 training and 16 test images),
    submitted with --follow and trained by the worker: (experiment id, the command)."""
    result = run_cli(
        "experiment", "submit", "--name", "report smoke", "--preset", "report", "--epochs", "1",
        "--train-samples", "32", "--test-samples", "16", "--follow", url=cli_api, timeout=290,
    )  # fmt: skip
    return submitted_id(result, "experiment"), result


def test_submit_follow_reports_each_job_then_the_summary_and_exits_zero(
    report_experiment: tuple[int, subprocess.CompletedProcess[str]],
) -> None:
    experiment_id, result = report_experiment
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "\x1b[" not in result.stdout, "a pipe gets plain lines, not live bars"
    for block in BLOCKS:
        assert re.search(rf"^job \d+ {block}: succeeded after 1/1 epochs", result.stdout, re.M), (
            result.stdout
        )
        # The summary table: the block's row with the report's test accuracy.
        assert re.search(
            rf"^\s*\d+\s+{block}\s+succeeded\s+1/1\s.*{REPORT_ACCURACY[block]}", result.stdout, re.M
        ), result.stdout
    assert (
        result.stdout.strip()
        .splitlines()[-1]
        .startswith(f"experiment {experiment_id} 'report smoke', preset report: succeeded, 3 jobs")
    )


def test_show_list_csv_and_plots(
    cli_api: str, report_experiment: tuple[int, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    experiment_id, _ = report_experiment
    shown = run_cli(
        "experiment",
        "show",
        str(experiment_id),
        "--sort",
        "best_test_accuracy",
        "--order",
        "desc",
        "--csv",
        str(tmp_path / "summary.csv"),
        url=cli_api,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"experiment {experiment_id} 'report smoke', preset report")
    for block in BLOCKS:
        assert re.search(rf"^\s*\d+\s+{block}\s+succeeded", shown.stdout, re.M), shown.stdout

    rows = list(csv.DictReader(io.StringIO((tmp_path / "summary.csv").read_text())))
    assert sorted(row["block"] for row in rows) == sorted(BLOCKS)
    assert {row["status"] for row in rows} == {"succeeded"}
    assert list(rows[0])[:2] == ["job_id", "block"]
    # The report's published figures beside the measured ones, as on the experiment's page.
    published = {row["block"]: f"{float(row['report_final_test_accuracy']):.2%}" for row in rows}
    assert published == REPORT_ACCURACY

    to_stdout = run_cli("experiment", "show", str(experiment_id), "--csv", "-", url=cli_api)
    assert to_stdout.stdout == (tmp_path / "summary.csv").read_text()

    as_json = json.loads(
        run_cli("experiment", "show", str(experiment_id), "--json", url=cli_api).stdout
    )
    assert as_json["job_count"] == 3 and as_json["preset"] == "report"
    job_ids = {row["job_id"] for row in as_json["jobs"]}

    listed = run_cli("experiment", "list", url=cli_api)
    assert re.search(
        rf"^\s*{experiment_id}\s+report smoke\s+report\s+succeeded", listed.stdout, re.M
    ), listed.stdout
    jobs = json.loads(
        run_cli("list", "--experiment", str(experiment_id), "--json", url=cli_api).stdout
    )
    assert {job["id"] for job in jobs["items"]} == job_ids
    assert {job["experiment_id"] for job in jobs["items"]} == {experiment_id}

    for metric in ("train_loss", "test_accuracy", "accuracy-vs-macs", "accuracy-vs-params"):
        image = tmp_path / f"{metric}.png"
        plotted = run_cli(
            "experiment",
            "plot",
            str(experiment_id),
            "--metric",
            metric,
            "-o",
            str(image),
            url=cli_api,
        )
        assert plotted.returncode == 0, plotted.stderr
        assert image.read_bytes().startswith(PNG_SIGNATURE), metric


def test_a_grid_experiment_cancelled_then_followed_exits_one(cli_keyed_api: str) -> None:
    submitted = run_cli(
        "experiment", "submit", "--name", "lr grid", "--block", "mobile",
        "--grid", "learning_rate=0.01,0.1", "--epochs", "1", "--train-samples", "32",
        "--test-samples", "16", url=cli_keyed_api, api_key=CLI_API_KEY,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    experiment_id = submitted_id(submitted, "experiment")
    assert "2 jobs (2 queued)" in submitted.stdout and "varying: learning_rate" in submitted.stdout

    shown = run_cli(
        "experiment", "show", str(experiment_id), url=cli_keyed_api, api_key=CLI_API_KEY
    )
    assert re.search(r"^\s*\d+\s+mobile\s+0\.01\s+queued\s+0/1", shown.stdout, re.M), shown.stdout
    assert re.search(r"^\s*\d+\s+mobile\s+0\.1\s+queued\s+0/1", shown.stdout, re.M), shown.stdout

    cancelled = run_cli(
        "experiment", "cancel", str(experiment_id), url=cli_keyed_api, api_key=CLI_API_KEY
    )
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == f"experiment {experiment_id} cancelled: 2 cancelled"

    followed = run_cli(
        "experiment", "follow", str(experiment_id), url=cli_keyed_api, api_key=CLI_API_KEY
    )
    assert followed.returncode == 1, (followed.stdout, followed.stderr)
    # With API_KEY set the key's holder, the built-in admin, owns what it submits.
    assert f"experiment {experiment_id} 'lr grid', owned by admin: cancelled" in followed.stdout

    again = run_cli(
        "experiment", "cancel", str(experiment_id), url=cli_keyed_api, api_key=CLI_API_KEY
    )
    assert assert_one_line_error(again, 1)  # 409: every job had already ended


def test_experiment_errors_are_one_line(cli_keyed_api: str) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("experiment", *args, url=cli_keyed_api, api_key=CLI_API_KEY)

    assert assert_one_line_error(run("show", "9999"), 1) == "experiment 9999 not found"
    assert assert_one_line_error(run("follow", "9999"), 1) == "experiment 9999 not found"

    # 2 blocks x 501 seeds: each list is short, their product over the limit.
    seeds = ",".join(str(seed) for seed in range(501))
    too_many = run("submit", "--name", "big", "--block", "mobile", "--block", "plain",
                   "--seeds", seeds)  # fmt: skip
    assert "experiment would create 1002 jobs; the limit is 1000" in assert_one_line_error(
        too_many, 2
    )

    # The report's settings are fixed: a learning rate is refused, naming the field.
    fixed = run("submit", "--name", "r", "--preset", "report", "--lr", "0.1")
    assert "learning_rate" in assert_one_line_error(fixed, 2)

    # More jobs than the queue takes (this API queues at most 2): 503 with Retry-After.
    full = run("submit", "--name", "three", "--block", "mobile", "--seeds", "0,1,2")
    message = assert_one_line_error(full, 1)
    assert message.startswith("the API is unavailable (queue_full, retry after ")


def test_a_search_from_a_yaml_file_followed_shows_its_trials_pruned(
    cli_api: str, tmp_path: Path
) -> None:
    """A search submitted from a YAML file and followed on the worker: each trial's line, the
    hopeless learning rate's trials pruned at asha's first rung, the search's header, exit 0."""
    spec = tmp_path / "search.yaml"
    spec.write_text(
        "name: cli search\n"
        "blocks: [mobile]\n"
        "hyperparameters: {epochs: 2, batch_size: 16, seed: 3}\n"
        "train_samples: 32\n"
        "test_samples: 16\n"
        "search:\n"
        "  space:\n"
        "    learning_rate: {choice: [0.05, 1.0e-7]}\n"
        "    weight_decay: {choice: [0.0, 1.0e-5]}\n"
        "  sampler: grid\n"
        "  seed: 4\n"
        "  objective: {metric: test_loss}\n"
        "  pruner: {type: asha, min_epochs: 1, reduction_factor: 3}\n"
    )
    result = run_cli(
        "experiment", "submit", "--file", str(spec), "--follow", url=cli_api, timeout=290
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    experiment_id = submitted_id(result, "experiment")
    # Seed 4 orders the grid's two good points first: each hopeless trial meets them at the rung.
    pruned = re.findall(
        r"^job \d+ mobile learning_rate=1e-07 .*: pruned at rung 0 after 1/2 epochs",
        result.stdout,
        re.M,
    )
    assert len(pruned) == 2, result.stdout
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith(f"experiment {experiment_id} 'cli search': succeeded, 4 jobs"), last
    assert "; search: 4/4 trials, " in last and "best " in last
    epochs = int(re.search(r"search: 4/4 trials, (\d+)/8 epochs", last).group(1))
    assert epochs == 8 - len(pruned)
