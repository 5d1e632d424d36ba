"""How results are shown: the console, number formats, the tables of jobs, epochs and
experiments, and the epoch line that --follow prints as each epoch lands."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from typing import Any, TextIO

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

EMPTY = "-"
STATUS_STYLES = {
    "queued": "yellow",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
    "pruned": "blue",
    "paused": "dark_orange",
}
# The per-epoch fields of GET /jobs/{id}/metrics, in the order every format shows them.
EPOCH_FIELDS = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "learning_rate",
    "seconds",
    "images_per_second",
)
# Wide enough for the widest table when the output goes to a file or a pipe, where rich would
# otherwise assume 80 columns and squeeze the columns.
PIPE_WIDTH = 200


def make_console(file: TextIO | None = None) -> Console:
    """Markup and highlighting are off: names and error texts from the API are shown as sent."""
    stream = file or sys.stdout
    width = None
    if not stream.isatty() and "COLUMNS" not in os.environ:
        width = PIPE_WIDTH
    return Console(file=stream, width=width, markup=False, highlight=False, emoji=False)


def print_json(data: Any) -> None:
    """An answer of the API, indented, on stdout."""
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def percent(fraction: float | None) -> str:
    return EMPTY if fraction is None else f"{fraction * 100:.2f}%"


def decimal(value: float | None, places: int = 4) -> str:
    return EMPTY if value is None else f"{value:.{places}f}"


def millions(count: int | None) -> str:
    return EMPTY if count is None else f"{count / 1e6:.2f}M"


def gigas(count: int | None) -> str:
    return EMPTY if count is None else f"{count / 1e9:.2f}G"


def timestamp(text: str | None) -> str:
    """An API timestamp in local time, to the minute."""
    if not text:
        return EMPTY
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    return moment.astimezone().strftime("%Y-%m-%d %H:%M")


def job_status(job: dict[str, Any]) -> str:
    status = str(job["status"])
    if status == "queued" and job.get("queue_position"):
        return f"queued (position {job['queue_position']})"
    if status == "running" and job.get("cancel_requested"):
        return "running (cancel requested)"
    if status == "failed" and job.get("error_reason"):
        return f"failed ({job['error_reason']})"
    return status


def styled_status(text: str) -> Text:
    """A status, coloured on a terminal (plain text in a pipe)."""
    return Text(text, style=STATUS_STYLES.get(text.split(" ")[0], ""))


Cell = str | Text
TABLE_GAP = 2  # characters between two columns of fitted_table
WRAPPED_COLUMN_WIDTH = 24  # at most, for names and other free text


def fitted_table(
    headers: list[str],
    rows: list[list[Cell]],
    *,
    width: int,
    left: tuple[str, ...] = (),
    wrap: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
    caption: str = "",
) -> Table:
    """Columns apart by two spaces, no side borders, each at least as wide as its widest value:
    numbers are never cut. Columns in `wrap` (free text) may wrap; where the table does not fit
    `width`, the `optional` columns are left out, in that order, and the caption says so."""

    def widest_value(index: int) -> int:
        return max((len(str(row[index])) for row in rows), default=0)

    def needed(index: int, *, whole_header: bool) -> int:
        header = headers[index]
        header_width = len(header) if whole_header else max(map(len, header.split()))
        if header in wrap:
            return max(header_width, min(widest_value(index), WRAPPED_COLUMN_WIDTH))
        return max(header_width, widest_value(index))

    def fits(columns: list[int], *, whole_header: bool) -> bool:
        total = sum(needed(i, whole_header=whole_header) for i in columns)
        return total + TABLE_GAP * (len(columns) - 1) <= width

    shown = list(range(len(headers)))
    # Headers on one line where that fits, else broken between words; then fewer columns.
    whole_header = fits(shown, whole_header=True)
    left_out: list[str] = []
    for name in optional:
        if whole_header or fits(shown, whole_header=False):
            break
        if name in headers:
            shown.remove(headers.index(name))
            left_out.append(name)
    if left_out:
        note = f"not shown for want of width: {', '.join(left_out)} (see --json)"
        caption = f"{caption}; {note}" if caption else note
    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1),
        collapse_padding=True,
        pad_edge=False,
        caption=caption or None,
        caption_justify="left",
    )
    for index in shown:
        table.add_column(
            headers[index],
            justify="left" if headers[index] in left else "right",
            width=needed(index, whole_header=whole_header),
            overflow="fold",
        )
    for row in rows:
        table.add_row(*(row[index] for index in shown))
    return table


def page_caption(count: int, noun: str, more: bool) -> str:
    """'3 jobs', or with more to read: '50 jobs, newest first; more with --limit N or --all'."""
    caption = f"{count} {noun}{'' if count == 1 else 's'}"
    return caption + ("; more with a larger --limit or --all" if more else "")


def owned(items: list[dict[str, Any]]) -> bool:
    """Whether any row has an owner: on a server without accounts none has, and the owner
    column is left out."""
    return any(item.get("owner") for item in items)


def jobs_table(jobs: list[dict[str, Any]], more: bool, *, width: int) -> Table:
    headers = ["id", "name", "block", "status", "epochs", "best test acc", "final test acc"]
    with_owner = owned(jobs)
    rows: list[list[Cell]] = [
        [
            str(job["id"]),
            *([job.get("owner") or EMPTY] if with_owner else []),
            job.get("name") or EMPTY,
            job["block"],
            styled_status(job_status(job)),
            f"{job['epochs_done']}/{job['epochs_total']}",
            percent(job.get("best_test_accuracy")),
            percent(job.get("final_test_accuracy")),
            timestamp(job.get("created_at")),
        ]
        for job in jobs
    ]
    if with_owner:
        headers.insert(1, "owner")
    return fitted_table(
        [*headers, "created"],
        rows,
        width=width,
        left=("owner", "name", "block", "status", "created"),
        wrap=("name",),
        optional=("created", "final test acc"),
        caption=page_caption(len(jobs), "job", more),
    )


def job_details(job: dict[str, Any], checkpoints: list[dict[str, Any]]) -> list[Text]:
    """`label  value` lines: not a table, which would pad every line to its widest value."""
    spec = job.get("spec") or {}
    hyperparameters = spec.get("hyperparameters") or {}
    fields: list[tuple[str, str | Text]] = [
        ("job", str(job["id"])),
        *([("owner", str(job["owner"]))] if job.get("owner") else []),
        ("name", job.get("name") or EMPTY),
        ("tags", ", ".join(job.get("tags") or []) or EMPTY),
        (
            "block",
            f"{job['block']} ({millions(job.get('params'))} params, {gigas(job.get('macs'))} MACs)",
        ),
        ("dataset", str(job.get("dataset"))),
        ("status", styled_status(job_status(job))),
        ("epochs", f"{job['epochs_done']}/{job['epochs_total']}"),
        ("best test accuracy", percent(job.get("best_test_accuracy"))),
        ("final test accuracy", percent(job.get("final_test_accuracy"))),
        ("final train loss", decimal(job.get("final_train_loss"))),
        ("hyperparameters", ", ".join(f"{k}={v}" for k, v in hyperparameters.items()) or EMPTY),
        (
            "samples",
            f"train {spec.get('train_samples') or 'all'}, test {spec.get('test_samples') or 'all'}",
        ),
        ("attempt", f"{job.get('attempt')}/{job.get('max_attempts')}"),
        ("worker", job.get("worker") or EMPTY),
        ("created", timestamp(job.get("created_at"))),
        ("started", timestamp(job.get("started_at"))),
        ("finished", timestamp(job.get("finished_at"))),
    ]
    if job.get("experiment_id") is not None:
        fields.insert(1, ("experiment", str(job["experiment_id"])))
    if job.get("queue_reason"):
        status_line = next(i for i, (label, _) in enumerate(fields) if label == "status")
        fields[status_line + 1 : status_line + 1] = [
            ("priority", str(job.get("priority"))),
            ("queue", str(job["queue_reason"])),
        ]
    if job.get("error"):
        fields.append(("error", str(job["error"])))
    listed = ", ".join(
        f"{c['name']} (epoch {c['epoch']}, {c['size_bytes'] / 1e6:.1f} MB)" for c in checkpoints
    )
    fields.append(("checkpoints", listed or EMPTY))
    width = max(len(label) for label, _ in fields)
    return [Text.assemble((f"{label:<{width}}  ", "bold"), value) for label, value in fields]


def epochs_table(epochs: list[dict[str, Any]], *, width: int) -> Table:
    rows: list[list[Cell]] = [
        [
            str(row["epoch"]),
            decimal(row["train_loss"]),
            percent(row["train_accuracy"]),
            decimal(row["test_loss"]),
            percent(row["test_accuracy"]),
            f"{row['learning_rate']:.4g}",
            f"{row['seconds']:.1f}",
            f"{row['images_per_second']:.0f}",
        ]
        for row in epochs
    ]
    headers = [field.replace("_", " ") for field in EPOCH_FIELDS]
    return fitted_table(headers, rows, width=width, optional=("images per second", "seconds"))


EPOCH_LINE_HEADER = (
    f"{'epoch':>9}  {'train loss':>10}  {'train acc':>9}  {'test loss':>9}  {'test acc':>9}  "
    f"{'lr':>8}  {'seconds':>7}  {'images/s':>8}"
)


def epoch_line(row: dict[str, Any], epochs_total: int) -> str:
    """One epoch as a line under EPOCH_LINE_HEADER."""
    epoch = f"{row['epoch']}/{epochs_total}"
    return (
        f"{epoch:>9}  {decimal(row['train_loss']):>10}  {percent(row['train_accuracy']):>9}  "
        f"{decimal(row['test_loss']):>9}  {percent(row['test_accuracy']):>9}  "
        f"{row['learning_rate']:>8.4g}  {row['seconds']:>7.1f}  {row['images_per_second']:>8.0f}"
    )


def status_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{count} {status}" for status, count in counts.items() if count) or "no jobs"


def experiments_table(experiments: list[dict[str, Any]], more: bool, *, width: int) -> Table:
    with_owner = owned(experiments)
    rows: list[list[Cell]] = [
        [
            str(experiment["id"]),
            *([experiment.get("owner") or EMPTY] if with_owner else []),
            experiment["name"],
            experiment.get("preset") or EMPTY,
            styled_status(str(experiment["status"])),
            f"{experiment['job_count']} ({status_counts(experiment.get('status_counts') or {})})",
            timestamp(experiment.get("created_at")),
        ]
        for experiment in experiments
    ]
    return fitted_table(
        ["id", *(["owner"] if with_owner else []), "name", "preset", "status", "jobs", "created"],
        rows,
        width=width,
        left=("owner", "name", "preset", "status", "jobs", "created"),
        wrap=("name", "jobs"),
        optional=("created",),
        caption=page_caption(len(experiments), "experiment", more),
    )


def compact(value: Any) -> str:
    """A hyperparameter as a person writes it: 0.030000000000000002 -> "0.03"."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def objective_text(value: float | None, metric: str) -> str:
    """An objective value as the tables show its metric: accuracies in percent."""
    return percent(value) if metric.endswith("accuracy") else decimal(value)


def margin_text(value: float | None, metric: str) -> str:
    if value is None:
        return EMPTY
    return f"±{value * 100:.2f} pp" if metric.endswith("accuracy") else f"±{value:.4f}"


def varied_label(row: dict[str, Any]) -> str:
    """The job's block and the values that set it apart in its experiment: "plain lr=0.1"."""
    varied = {k: v for k, v in (row.get("varied") or {}).items() if k != "block"}
    return " ".join([str(row["block"]), *(f"{k}={compact(v)}" for k, v in varied.items())])


def experiment_header(experiment: dict[str, Any]) -> str:
    preset = f", preset {experiment['preset']}" if experiment.get("preset") else ""
    varying = ", ".join(experiment.get("varying") or []) or "nothing"
    owner = f", owned by {experiment['owner']}" if experiment.get("owner") else ""
    header = (
        f"experiment {experiment['id']} {experiment['name']!r}{owner}{preset}: "
        f"{experiment['status']}, "
        f"{experiment['job_count']} jobs ({status_counts(experiment.get('status_counts') or {})}); "
        f"varying: {varying}"
    )
    search = experiment.get("search")
    if search:
        best = search.get("best")
        metric = experiment["spec"]["search"]["objective"]["metric"]
        waiting = f", {search['paused']} waiting at a rung" if search.get("paused") else ""
        header += (
            f"; search: {search['trials_created']}/{search['max_trials']} trials, "
            f"{search['epochs_spent']}/{search['epochs_full']} epochs{waiting}"
            + (
                ""
                if best is None
                else f", best {objective_text(best['value'], metric)} (trial {best['trial']}, "
                f"job {best['job_id']})"
            )
        )
    return header


def search_parts(experiment: dict[str, Any], *, width: int) -> list[Any]:
    """A search's settings, its warnings and its rung table (nothing for a grid experiment)."""
    search = experiment.get("search")
    if not search:
        return []
    spec = experiment["spec"]["search"]
    metric = spec["objective"]["metric"]
    settings = search.get("settings") or {}
    pruner = settings.get("pruner") or spec["pruner"]
    sampler = [str(settings.get("sampler", spec["sampler"])), f"seed {spec['seed']}"]
    if settings.get("startup_trials") is not None:
        sampler.append(f"{settings['startup_trials']} random start-up trials")
    pruner_text = [str(pruner["type"])]
    if pruner["type"] != "none":
        pruner_text.append(f"from epoch {pruner.get('min_epochs', 1)}")
    if pruner["type"] in ("hyperband", "asha"):
        pruner_text.append(f"1 in {pruner.get('reduction_factor', 3)} goes on at a rung")
    lines = [
        f"sampler: {', '.join(sampler)}; pruner: {', '.join(pruner_text)}; objective: "
        f"{metric} ({spec['objective']['mode']}); {spec['max_concurrent']} trials at once",
    ]
    for bracket, item in enumerate(settings.get("brackets") or []):
        lines.append(
            f"  bracket {bracket}: {item['trials']} trials, first rung at "
            f"{item['first_rung_epochs']} epochs"
        )
    parts: list[Any] = ["\n".join(lines)]
    for warning in search.get("warnings") or []:
        parts.append(Text(f"warning: {warning['message']}", style="yellow"))
    rungs = search.get("rungs") or []
    if rungs:
        counters: dict[Any, int] = {}
        rows: list[list[Cell]] = []
        for rung in rungs:
            index = counters.get(rung.get("bracket"), 0)
            counters[rung.get("bracket")] = index + 1
            rows.append(
                [
                    EMPTY if rung.get("bracket") is None else str(rung["bracket"]),
                    str(index),
                    str(rung["epochs"]),
                    str(rung["reached"]),
                    str(rung["promoted"]),
                    str(rung.get("stopped", 0)),
                    str(rung.get("waiting", 0)),
                    objective_text(rung.get("cutoff"), metric),
                    margin_text(rung.get("margin"), metric),
                ]
            )
        parts.append(
            fitted_table(
                [
                    "bracket",
                    "rung",
                    "epochs",
                    "reached",
                    "went on",
                    "stopped",
                    "waiting",
                    "cutoff",
                    "noise margin",
                ],
                rows,
                width=width,
                caption="a trial stops only when worse than the cutoff by more than the "
                "noise margin",
            )  # fmt: skip
        )
    return parts


def experiment_jobs_table(experiment: dict[str, Any], *, width: int) -> Table:
    """The summary table: one row per job, with the report's figures for preset "report"."""
    jobs = experiment.get("jobs") or []
    varying = [name for name in experiment.get("varying") or [] if name != "block"]
    with_report = any(row.get("report") for row in jobs)
    is_search = experiment.get("search") is not None
    headers = [
        "job",
        "block",
        *varying,
        *(("trial", "rung") if is_search else ()),
        "status",
        "epochs",
        "params",
        "MACs",
        "best test acc",
        "final test acc",
        "final train loss",
        "s/epoch",
    ]
    if with_report:
        headers += ["report test acc", "report train loss"]
    rows: list[list[Cell]] = []
    for row in jobs:
        varied = row.get("varied") or {}
        cells: list[Cell] = [
            str(row["job_id"]),
            str(row["block"]),
            *(compact(varied.get(name, row.get(name, EMPTY))) for name in varying),
            *(
                (
                    EMPTY if row.get("trial") is None else str(row["trial"]),
                    EMPTY if row.get("rung") is None else str(row["rung"]),
                )
                if is_search
                else ()
            ),
            styled_status(str(row["status"])),
            f"{row['epochs_done']}/{row['epochs_total']}",
            millions(row.get("params")),
            gigas(row.get("macs")),
            percent(row.get("best_test_accuracy")),
            percent(row.get("final_test_accuracy")),
            decimal(row.get("final_train_loss")),
            decimal(row.get("seconds_per_epoch"), 1),
        ]
        if with_report:
            report = row.get("report") or {}
            cells.append(percent(report.get("final_test_accuracy")))
            cells.append(decimal(report.get("final_train_loss"), 3))
        rows.append(cells)
    return fitted_table(
        headers,
        rows,
        width=width,
        left=("block", "status", *varying),
        optional=("s/epoch", "MACs", "params", "final train loss", "report train loss"),
    )
