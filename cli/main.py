"""`cifar-jobs`: submit, list, inspect, follow, plot, download and cancel training jobs and
experiments over the API's HTTP interface."""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.table import Table

from cli.accounts import add_account_commands, audit_table, my_name
from cli.arguments import positive_count, positive_id, positive_seconds, user_name
from cli.client import (
    API_KEY_VARIABLE,
    DEFAULT_TIMEOUT_SECONDS,
    DEFAULT_URL,
    TOKEN_VARIABLE,
    URL_VARIABLE,
    ApiClient,
    Connection,
)
from cli.config import load_login
from cli.download import download_checkpoint
from cli.errors import EXIT_INTERRUPTED, CliError, UsageError
from cli.follow import EXPERIMENT_ROWS, POLL_SECONDS, follow_experiment, follow_job
from cli.render import (
    EPOCH_FIELDS,
    experiment_header,
    experiment_jobs_table,
    experiments_table,
    job_details,
    job_status,
    jobs_table,
    make_console,
    print_json,
    search_parts,
    status_counts,
)
from cli.specs import (
    add_data_flags,
    add_hyperparameter_flags,
    experiment_body,
    job_body,
    search_body,
)

PROG = "cifar-jobs"
CHECKPOINT_NAMES = ("latest", "best", "final")
JOB_PLOTS = {"loss": "loss.png", "accuracy": "accuracy.png"}
EXPERIMENT_PLOTS = {
    "train_loss": "train_loss.png",
    "train_accuracy": "train_accuracy.png",
    "test_loss": "test_loss.png",
    "test_accuracy": "test_accuracy.png",
    "accuracy-vs-macs": "accuracy-vs-macs.png",
    "accuracy-vs-params": "accuracy-vs-params.png",
}
EXPERIMENT_SORT_COLUMNS = (
    "job_id",
    "block",
    "status",
    "best_test_accuracy",
    "final_test_accuracy",
    "final_train_loss",
    "seconds_per_epoch",
    "params",
    "macs",
)
Handler = Callable[[argparse.Namespace, ApiClient, Console], int]


class Parser(argparse.ArgumentParser):
    """Usage errors as one line (exit status 2) instead of argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _add_connection_flags(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The connection flags go before or after the command; given after it, they win."""
    default = None if defaults else argparse.SUPPRESS
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--url",
        default=default,
        help=f"the API's base URL (env {URL_VARIABLE}; else the one `{PROG} login` stored; "
        f"default {DEFAULT_URL})",
    )
    group.add_argument(
        "--token",
        "--api-key",
        dest="token",
        default=default,
        help=f"a user's token, or the server's API_KEY (env {TOKEN_VARIABLE}, or the older "
        f"{API_KEY_VARIABLE}; else the one `{PROG} login` stored)",
    )
    group.add_argument(
        "--timeout",
        type=positive_seconds,
        default=default,
        metavar="SECONDS",
        help=f"per-request timeout (default {DEFAULT_TIMEOUT_SECONDS:g})",
    )


# The most rows the API sends per page.
API_PAGE_LIMIT = 200


def _read_pages(
    api: ApiClient, path: str, args: argparse.Namespace, **params: Any
) -> dict[str, Any]:
    """`--limit` rows of a list route (all with `--all`), following its cursors page by page:
    {"items": [...], "next": the URL of the rest or None}."""
    wanted = None if args.all else args.limit
    items: list[Any] = []
    page = api.get_json(path, **params, limit=min(wanted or API_PAGE_LIMIT, API_PAGE_LIMIT))
    while True:
        items += page["items"]
        following = page["next"]
        if following is None or (wanted is not None and len(items) >= wanted):
            break
        page = api.get_json(following)
    if wanted is not None and len(items) > wanted:
        items = items[:wanted]
    return {"items": items, "next": following}


def _print_page(
    page: dict[str, Any], args: argparse.Namespace, console: Console, table: Callable[..., Table]
) -> int:
    """Rows of a list route as JSON or as a table."""
    if args.json:
        print_json(page)
    else:
        console.print(table(page["items"], page["next"] is not None, width=console.width))
    return 0


def _write_file(path: Path, content: bytes) -> None:
    try:
        path.write_bytes(content)
    except OSError as error:
        raise CliError(f"cannot write {path}: {error.strerror or error}") from None


def _follow_interval(args: argparse.Namespace) -> float:
    return float(getattr(args, "interval", POLL_SECONDS))


# --- jobs ----------------------------------------------------------------------------------


def submit(args: argparse.Namespace, api: ApiClient, console: Console) -> int:
    body = job_body(args)
    if args.dry_run:
        print_json(body)
        return 0
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    response = api.request("POST", "/jobs", json_body=body, headers=headers)
    job = response.json()
    if args.json:
        print_json(job)
    else:
        replayed = (
            " (already submitted with this Idempotency-Key)"
            if response.headers.get("Idempotent-Replayed")
            else ""
        )
        console.print(
            f"job {job['id']} submitted{replayed}: {job['block']}, {job['epochs_total']} epochs, "
            f"{job_status(job)}"
        )
    if args.follow:
        return follow_job(api, job["id"], console, interval_seconds=_follow_interval(args))
    return 0


def _owner(args: argparse.Namespace, api: ApiClient) -> str | None:
    """--owner NAME, or --mine: the name GET /me answers for this token."""
    return my_name(api) if args.mine else args.owner


def list_jobs(args: argparse.Namespace, api: ApiClient, console: Console) -> int:
    page = _read_pages(
        api,
        "/jobs",
        args,
        owner=_owner(args, api),
        status=args.status,
        block=args.block,
        experiment_id=args.experiment,
        tag=args.tag,
        sort=args.sort,
    )
    return _print_page(page, args, console, jobs_table)


def show_job(args: argparse.Namespace, api: ApiClient, console: Console) -> int:
    subject = f"job {args.job_id}"
    job = api.get_json(f"/jobs/{args.job_id}", subject=subject)
    if args.json:
        print_json(job)
        return 0
    checkpoints = api.get_json(f"/jobs/{args.job_id}/checkpoints", subject=subject)
    for line in job_details(job, checkpoints):
        console.print(line, soft_wrap=True)
    return 0


def show_metrics(args: argparse.Namespace, api: ApiClient, console: Console) -> int:
    metrics = api.get_json(
        f"/jobs/{args.job_id}/metrics", subject=f"job {args.job_id}", since_epoch=args.since_epoch
    )
    if args.format == "json":
        print_json(metrics)
    elif args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(EPOCH_FIELDS)
        for row in metrics["metrics"]:
            writer.writerow(row[field] for field in EPOCH_FIELDS)
    else:
        from cli.render import epochs_table

        console.print(
            f"job {metrics['job_id']}: {metrics['status']}, "
            f"{metrics['epochs_done']}/{metrics['epochs_total']} epochs"
        )
        console.print(epochs_table(metrics["metrics"], width=console.width))
    return 0


def plot_job(args: argparse.Namespace, api: ApiClient, console: Console) -> int:
    image = api.get_bytes(
        f"/jobs/{args.job_id}/plots/{JOB_PLOTS[args.metric]}", subject=f"job {args.job_id}"
    )
    output = args.output or Path(f"job-{args.job_id}-{args.metric}.png")
    _write_file(output, image)
    console.print(f"saved {output}: job {args.job_id}'s {args.metric} per epoch")
    return 0


def download(args: argparse.Namespace, api: ApiClient, console: Console) -> int:
    download_checkpoint(api, args.job_id, args.name, args.output, console)
    return 0


def cancel_job(args: argparse.Namespace, api: ApiClient, console: Console) -> int:
    job = api.post_json(f"/jobs/{args.job_id}/cancel", subject=f"job {args.job_id}")
    if job["status"] == "cancelled":
        console.print(f"job {job['id']} cancelled")
    else:
        console.print(
            f"job {job['id']}: cancel requested; it stops at the next batch and keeps its last "
            "checkpoint"
        )
    return 0


def follow(args: argparse.Namespace, api: ApiClient, console: Console) -> int:
    return follow_job(api, args.job_id, console, interval_seconds=_follow_interval(args))


# --- experiments ---------------------------------------------------------------------------


def submit_experiment(args: argparse.Namespace, api: ApiClient, console: Console) -> int:
    body = experiment_body(args)
    if args.dry_run:
        print_json(body)
        return 0
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    experiment = api.post_json("/experiments", body, headers=headers)
    if args.json:
        print_json(experiment)
    else:
        console.print(f"experiment {experiment['id']} submitted: {experiment['job_count']} jobs")
        if not args.follow:  # following starts with the same line
            console.print(experiment_header(experiment))
    if args.follow:
        return follow_experiment(
            api, experiment["id"], console, interval_seconds=_follow_interval(args)
        )
    return 0


def submit_search(args: argparse.Namespace, api: ApiClient, console: Console) -> int:
    """A search from flags: the experiment's body with its `search` section."""
    args.preset, args.grid, args.seeds = None, None, None
    body = search_body(args)
    if args.dry_run:
        print_json(body)
        return 0
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    experiment = api.post_json("/experiments", body, headers=headers)
    if args.json:
        print_json(experiment)
    else:
        search = experiment["search"]
        console.print(
            f"search {experiment['id']} submitted: {search['trials_created']} of "
            f"{search['max_trials']} trials made"
        )
        if not args.follow:
            console.print(experiment_header(experiment))
    if args.follow:
        return follow_experiment(
            api, experiment["id"], console, interval_seconds=_follow_interval(args)
        )
    return 0


def extend_search(args: argparse.Namespace, api: ApiClient, console: Console) -> int:
    experiment = api.patch_json(
        f"/experiments/{args.experiment_id}",
        {"max_trials": args.max_trials},
        subject=f"experiment {args.experiment_id}",
    )
    search = experiment.get("search") or {}
    console.print(
        f"search {experiment['id']}: {search.get('trials_created')} of "
        f"{search.get('max_trials')} trials made; {experiment['status']}"
    )
    return 0


def resume_search(args: argparse.Namespace, api: ApiClient, console: Console) -> int:
    experiment = api.post_json(
        f"/experiments/{args.experiment_id}/resume", subject=f"experiment {args.experiment_id}"
    )
    console.print(f"search {experiment['id']} resumed: {experiment['status']}")
    return 0


def list_experiments(args: argparse.Namespace, api: ApiClient, console: Console) -> int:
    page = _read_pages(api, "/experiments", args, owner=_owner(args, api))
    return _print_page(page, args, console, experiments_table)


def audit(args: argparse.Namespace, api: ApiClient, console: Console) -> int:
    page = _read_pages(
        api,
        "/audit",
        args,
        job_id=args.job,
        experiment_id=args.experiment,
        actor=args.actor,
    )
    return _print_page(page, args, console, audit_table)


def show_experiment(args: argparse.Namespace, api: ApiClient, console: Console) -> int:
    subject = f"experiment {args.experiment_id}"
    path = f"/experiments/{args.experiment_id}"
    if args.csv == "-":
        sys.stdout.buffer.write(api.get_bytes(f"{path}/summary.csv", subject=subject))
        return 0
    experiment = api.get_json(
        path, subject=subject, sort=args.sort, order=args.order, limit=EXPERIMENT_ROWS
    )
    if args.json:
        print_json(experiment)
    else:
        console.print(experiment_header(experiment))
        for part in search_parts(experiment, width=console.width):
            console.print(part)
        console.print(experiment_jobs_table(experiment, width=console.width))
    if args.csv:
        output = Path(args.csv)
        _write_file(output, api.get_bytes(f"{path}/summary.csv", subject=subject))
        print(f"saved {output}: the summary of experiment {args.experiment_id}", file=sys.stderr)
    return 0


def plot_experiment(args: argparse.Namespace, api: ApiClient, console: Console) -> int:
    image = api.get_bytes(
        f"/experiments/{args.experiment_id}/plots/{EXPERIMENT_PLOTS[args.metric]}",
        subject=f"experiment {args.experiment_id}",
    )
    output = args.output or Path(f"experiment-{args.experiment_id}-{args.metric}.png")
    _write_file(output, image)
    console.print(f"saved {output}: experiment {args.experiment_id}'s {args.metric}")
    return 0


def cancel_experiment(args: argparse.Namespace, api: ApiClient, console: Console) -> int:
    experiment = api.post_json(
        f"/experiments/{args.experiment_id}/cancel", subject=f"experiment {args.experiment_id}"
    )
    counts = status_counts(experiment.get("status_counts") or {})
    stopping = sum(1 for row in experiment.get("jobs") or [] if row["status"] == "running")
    note = f"; {stopping} running jobs stop at their next batch" if stopping else ""
    console.print(f"experiment {experiment['id']} cancelled: {counts}{note}")
    return 0


def follow_experiment_command(args: argparse.Namespace, api: ApiClient, console: Console) -> int:
    return follow_experiment(
        api, args.experiment_id, console, interval_seconds=_follow_interval(args)
    )


# --- the parser ----------------------------------------------------------------------------


def _add_follow_flags(parser: argparse.ArgumentParser, *, flag: bool) -> None:
    if flag:
        parser.add_argument(
            "--follow",
            action="store_true",
            help="then follow it until it ends (exit 0 if it "
            "succeeded, 1 if it failed or was cancelled)",
        )
    parser.add_argument(
        "--interval",
        type=positive_seconds,
        default=POLL_SECONDS,
        metavar="SECONDS",
        help=f"how often to poll while following (default {POLL_SECONDS:g})",
    )


def _add_submit_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-f",
        "--file",
        metavar="SPEC",
        help="the request body as a JSON or YAML file ('-' for stdin); flags override it",
    )
    parser.add_argument(
        "--priority",
        type=int,
        metavar="N",
        help="-100 to 100, higher starts first (default 0); an experiment's goes to each job",
    )
    parser.add_argument(
        "--idempotency-key", metavar="KEY", help="makes the submission safe to retry"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the request body instead of sending it"
    )
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer")


def build_parser() -> Parser:
    connection = Parser(add_help=False)
    _add_connection_flags(connection, defaults=False)
    parents = [connection]

    parser = Parser(
        prog=PROG,
        description="Command-line client of the CIFAR training-job API.",
        epilog="Exit status: 0 success, 1 failure (or a followed job that failed or was "
        "cancelled), 2 invalid command line or request, 130 interrupted.",
    )
    _add_connection_flags(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        subparsers: Any, name: str, handler: Handler, help_text: str
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = subparsers.add_parser(
            name, help=help_text, description=help_text, parents=parents
        )
        sub.set_defaults(handler=handler)
        return sub

    sub = command(commands, "submit", submit, "submit a training job")
    sub.add_argument("--block", help="plain, residual or mobile")
    sub.add_argument("--name", help="a name for the job")
    add_data_flags(sub)
    add_hyperparameter_flags(sub)
    _add_submit_flags(sub)
    _add_follow_flags(sub, flag=True)

    sub = command(commands, "list", list_jobs, "list jobs, newest first")
    sub.add_argument("--status", help="queued, running, succeeded, failed or cancelled")
    sub.add_argument("--block", help="plain, residual or mobile")
    sub.add_argument("--experiment", type=positive_id, metavar="ID", help="one experiment's jobs")
    sub.add_argument("--tag", help="only the jobs with this tag")
    sub.add_argument(
        "--sort",
        choices=("created", "best_test_accuracy"),
        help="created (newest first, the default) or best_test_accuracy (highest first)",
    )
    _add_owner_flags(sub, "jobs")
    _add_page_flags(sub, "jobs")

    sub = command(commands, "show", show_job, "one job's status, results and checkpoints")
    sub.add_argument("job_id", type=positive_id, metavar="ID")
    sub.add_argument("--json", action="store_true", help="print the API's JSON answer")

    sub = command(commands, "metrics", show_metrics, "a job's per-epoch loss and accuracy")
    sub.add_argument("job_id", type=positive_id, metavar="ID")
    sub.add_argument("--format", choices=("table", "csv", "json"), default="table")
    sub.add_argument("--since-epoch", type=int, default=0, metavar="N", help="only epochs after N")

    sub = command(commands, "plot", plot_job, "save a job's loss or accuracy plot (PNG)")
    sub.add_argument("job_id", type=positive_id, metavar="ID")
    sub.add_argument("--metric", choices=tuple(JOB_PLOTS), default="loss")
    sub.add_argument("-o", "--output", type=Path, help="default job-ID-METRIC.png")

    sub = command(
        commands, "download", download, "download a checkpoint, resumable, sha256-verified"
    )
    sub.add_argument("job_id", type=positive_id, metavar="ID")
    sub.add_argument("name", nargs="?", choices=CHECKPOINT_NAMES, default="final")
    sub.add_argument("-o", "--output", type=Path, help="a file or folder (default job-ID-NAME.pt)")

    sub = command(commands, "cancel", cancel_job, "cancel a queued or running job")
    sub.add_argument("job_id", type=positive_id, metavar="ID")

    sub = command(commands, "follow", follow, "follow a job until it ends")
    sub.add_argument("job_id", type=positive_id, metavar="ID")
    _add_follow_flags(sub, flag=False)

    experiment = commands.add_parser(
        "experiment", help="experiments: blocks x grid x seeds as one group of jobs"
    )
    experiments = experiment.add_subparsers(
        dest="experiment_command", metavar="COMMAND", required=True
    )

    sub = command(experiments, "submit", submit_experiment, "submit an experiment")
    sub.add_argument("--name", help="the experiment's name (required)")
    sub.add_argument("--preset", help="report: the course report's comparison and settings")
    sub.add_argument(
        "--block", action="append", dest="blocks", metavar="BLOCK", help="a block (repeatable)"
    )
    sub.add_argument(
        "--grid",
        action="append",
        metavar="NAME=V1,V2",
        help="a hyperparameter's values to try (repeatable; jobs = blocks x grid x seeds)",
    )
    sub.add_argument("--seeds", metavar="S1,S2", help="one job per seed, e.g. 0,1,2")
    add_data_flags(sub)
    add_hyperparameter_flags(sub)
    _add_submit_flags(sub)
    _add_follow_flags(sub, flag=True)

    sub = command(experiments, "list", list_experiments, "list experiments, newest first")
    _add_owner_flags(sub, "experiments")
    _add_page_flags(sub, "experiments")

    sub = command(experiments, "show", show_experiment, "an experiment and its summary table")
    sub.add_argument("experiment_id", type=positive_id, metavar="ID")
    sub.add_argument("--sort", choices=EXPERIMENT_SORT_COLUMNS, help="order the jobs by")
    sub.add_argument("--order", choices=("asc", "desc"), help="asc (default) or desc")
    sub.add_argument("--csv", metavar="PATH", help="also write the summary CSV ('-': only it)")
    sub.add_argument("--json", action="store_true", help="print the API's JSON answer")

    sub = command(experiments, "plot", plot_experiment, "save an experiment's plot (PNG)")
    sub.add_argument("experiment_id", type=positive_id, metavar="ID")
    sub.add_argument("--metric", choices=tuple(EXPERIMENT_PLOTS), default="train_loss")
    sub.add_argument("-o", "--output", type=Path, help="default experiment-ID-METRIC.png")

    sub = command(experiments, "cancel", cancel_experiment, "cancel every job not ended")
    sub.add_argument("experiment_id", type=positive_id, metavar="ID")

    sub = command(experiments, "follow", follow_experiment_command, "follow an experiment")
    sub.add_argument("experiment_id", type=positive_id, metavar="ID")
    _add_follow_flags(sub, flag=False)

    sub = command(experiments, "extend", extend_search, "give a search more trials")
    sub.add_argument("experiment_id", type=positive_id, metavar="ID")
    sub.add_argument(
        "--max-trials", type=positive_count, required=True, metavar="N", help="trials in all"
    )

    sub = command(experiments, "resume", resume_search, "resume a cancelled search")
    sub.add_argument("experiment_id", type=positive_id, metavar="ID")

    _add_search_command(commands, command)
    add_account_commands(commands, command)
    sub = command(commands, "audit", audit, "admin: who did what, newest first")
    sub.add_argument("--job", type=positive_id, metavar="ID", help="one job's events")
    sub.add_argument("--experiment", type=positive_id, metavar="ID", help="one experiment's")
    sub.add_argument("--actor", type=user_name, metavar="NAME", help="one user's doings")
    _add_page_flags(sub, "events")
    return parser


def _add_owner_flags(sub: argparse.ArgumentParser, noun: str) -> None:
    owner = sub.add_mutually_exclusive_group()
    owner.add_argument("--owner", type=user_name, metavar="NAME", help=f"only NAME's {noun}")
    owner.add_argument("--mine", action="store_true", help=f"only your {noun}")


def _add_search_command(commands: Any, command: Any) -> None:
    sub = command(
        commands,
        "search",
        submit_search,
        "submit a hyperparameter search (an experiment whose trials a sampler proposes and a "
        "pruner stops early)",
    )
    sub.add_argument("--name", help="the search's name (required)")
    sub.add_argument(
        "--block", action="append", dest="blocks", metavar="BLOCK", help="a block (repeatable)"
    )
    sub.add_argument(
        "--param",
        action="append",
        dest="params",
        metavar="NAME=KIND:ARGS",
        help="a dimension of the space (repeatable): uniform:LOW:HIGH, loguniform:LOW:HIGH, "
        "int:LOW:HIGH or choice:V1,V2 (e.g. learning_rate=loguniform:0.001:0.3)",
    )
    sub.add_argument("--sampler", dest="search_sampler", choices=("tpe", "random", "grid"))
    sub.add_argument("--max-trials", dest="search_max_trials", type=positive_count, metavar="N")
    sub.add_argument(
        "--max-concurrent", dest="search_max_concurrent", type=positive_count, metavar="N"
    )
    sub.add_argument(
        "--search-seed", dest="search_seed", type=int, metavar="N", help="seeds the sampler"
    )
    sub.add_argument(
        "--startup-trials",
        dest="search_startup_trials",
        type=int,
        metavar="N",
        help="tpe: random trials before it models the results (default 10)",
    )
    sub.add_argument("--pruner", choices=("hyperband", "asha", "median", "none"))
    sub.add_argument("--min-epochs", type=positive_count, metavar="N")
    sub.add_argument("--reduction-factor", type=positive_count, metavar="N")
    sub.add_argument(
        "--median-startup-trials",
        type=int,
        metavar="N",
        help="median: trials that end before any is stopped",
    )
    sub.add_argument(
        "--objective",
        metavar="METRIC[:MODE]",
        help="test_accuracy (default), test_loss or train_loss; mode max or min",
    )
    add_data_flags(sub)
    add_hyperparameter_flags(sub)
    _add_submit_flags(sub)
    _add_follow_flags(sub, flag=True)


def _add_page_flags(sub: argparse.ArgumentParser, noun: str) -> None:
    sub.add_argument(
        "--limit", type=positive_count, default=50, help=f"show this many {noun} (default 50)"
    )
    sub.add_argument(
        "--all", action="store_true", help=f"every {noun[:-1]}, reading page after page"
    )
    sub.add_argument(
        "--json", action="store_true", help='print {"items": [...], "next": URL of the rest}'
    )


def main(argv: list[str] | None = None) -> int:
    console = make_console()
    try:
        args = build_parser().parse_args(argv)
        if hasattr(args, "local_handler"):  # logout: no request, and no file read
            return int(args.local_handler(args, console))
        stored = None
        if args.token is None or args.url is None:
            stored = load_login()
        connection = Connection.from_options(args.url, args.token, args.timeout, stored)
        with ApiClient(connection) as api:
            handler: Handler = args.handler
            return handler(args, api, console)
    except CliError as error:
        sys.stdout.flush()
        print(f"{PROG}: {error.message}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader (head, less) went away: stop quietly, without a second error at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
