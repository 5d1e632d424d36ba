"""Accounts from the command line: login, logout and whoami for everyone; users, their tokens
and the audit trail for admins."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from cli.arguments import ROLES, limit_or_none, positive_id, user_name
from cli.client import TOKEN_VARIABLE, ApiClient, Connection
from cli.config import StoredLogin, config_path, remove_login, save_login
from cli.errors import CliError, UsageError
from cli.render import EMPTY, fitted_table, page_caption, print_json, timestamp


def me(api: ApiClient) -> dict[str, Any]:
    """GET /me: {"name", "role", "accounts"}."""
    answer: dict[str, Any] = api.get_json("/me")
    return answer


def my_name(api: ApiClient) -> str:
    """The signed-in user's name, for --mine."""
    who = me(api)
    if not who.get("accounts") or not who.get("name"):
        raise CliError(
            f"the API at {api.connection.url} has no accounts (no API_KEY is set), so nothing "
            "is anyone's: leave out --mine"
        )
    return str(who["name"])


def _print_rows(
    args: argparse.Namespace,
    console: Console,
    answer: dict[str, Any],
    table: Callable[..., Table],
) -> int:
    """A list route's answer ({"items": [...]}) as JSON (--json) or as a table."""
    if args.json:
        print_json(answer)
    else:
        console.print(table(answer["items"], width=console.width))
    return 0


# --- login, logout, whoami ------------------------------------------------------------------


def _token_to_store(args: argparse.Namespace) -> tuple[str, str]:
    """(token, where it came from): --token, CIFAR_JOBS_TOKEN, else asked for (without echo on
    a terminal; a line of stdin otherwise, so `login < file` works)."""
    if args.token:
        return args.token, "--token"
    if os.environ.get(TOKEN_VARIABLE):
        return os.environ[TOKEN_VARIABLE], TOKEN_VARIABLE
    token = getpass.getpass("Token: ") if sys.stdin.isatty() else sys.stdin.readline()
    token = token.strip()
    if not token:
        raise UsageError(f"no token given: pass --token, set {TOKEN_VARIABLE} or type it")
    return token, "the token typed"


def login(args: argparse.Namespace, api: ApiClient, console: Console) -> int:
    """Check the token against the server (GET /me), then store both for later commands."""
    token, source = _token_to_store(args)
    url = api.connection.url
    connection = Connection(url, token, api.connection.timeout_seconds, source)
    with ApiClient(connection) as checked:
        who = me(checked)
    if not who.get("accounts"):
        raise CliError(
            f"the API at {url} has no accounts (no API_KEY is set): there is nothing to log in "
            "to, and nothing was stored"
        )
    path = save_login(StoredLogin(url, token))
    console.print(f"logged in to {url} as {who['name']} ({who['role']}); saved in {path}")
    return 0


def logout(args: argparse.Namespace, console: Console) -> int:
    path = config_path()
    if remove_login(path):
        console.print(f"logged out: removed {path}")
    else:
        console.print(f"not logged in: there is no {path}")
    return 0


def whoami(args: argparse.Namespace, api: ApiClient, console: Console) -> int:
    who = me(api)
    if args.json:
        print_json(who)
        return 0
    url = api.connection.url
    if not who.get("accounts"):
        console.print(f"no accounts at {url} (no API_KEY is set): anyone may do anything")
        return 0
    console.print(
        f"{who['name']} ({who['role']}) at {url}; token from {api.connection.token_source}"
    )
    return 0


# --- users ----------------------------------------------------------------------------------


def _limit(value: Any) -> str:
    return "default" if value is None else str(value)


def users_table(users: list[dict[str, Any]], *, width: int) -> Table:
    rows: list[list[str | Text]] = [
        [
            str(user["name"]),
            str(user["role"]),
            "disabled" if user.get("disabled") else "active",
            _limit(user.get("max_queued_jobs")),
            _limit(user.get("max_running_jobs")),
            timestamp(user.get("created_at")),
        ]
        for user in users
    ]
    count = len(users)
    return fitted_table(
        ["name", "role", "state", "max queued", "max running", "created"],
        rows,
        width=width,
        left=("name", "role", "state", "created"),
        optional=("created",),
        caption=f"{count} user{'' if count == 1 else 's'}",
    )


def user_lines(user: dict[str, Any]) -> list[Text]:
    fields = [
        ("user", str(user["name"])),
        ("role", str(user["role"])),
        ("state", "disabled" if user.get("disabled") else "active"),
        ("max queued jobs", _limit(user.get("max_queued_jobs"))),
        ("max running jobs", _limit(user.get("max_running_jobs"))),
        ("created", timestamp(user.get("created_at"))),
    ]
    if user.get("disabled_at"):
        fields.append(("disabled", timestamp(user["disabled_at"])))
    width = max(len(label) for label, _ in fields)
    return [Text.assemble((f"{label:<{width}}  ", "bold"), value) for label, value in fields]


def _print_new_token(console: Console, made: dict[str, Any], intro: str) -> None:
    """The token alone on the last line (`| tail -1` takes it): the API shows it only once."""
    console.print(f"{intro}; the token, shown only this once (store it now):")
    sys.stdout.flush()
    print(made["token"]["token"])


def users_list(args: argparse.Namespace, api: ApiClient, console: Console) -> int:
    return _print_rows(args, console, api.get_json("/users"), users_table)


def users_add(args: argparse.Namespace, api: ApiClient, console: Console) -> int:
    body: dict[str, Any] = {"name": args.name, "role": args.role}
    if args.max_queued is not None:
        body["max_queued_jobs"] = args.max_queued
    if args.max_running is not None:
        body["max_running_jobs"] = args.max_running
    made = api.post_json("/users", body)
    if args.json:
        print_json(made)
        return 0
    user = made["user"]
    _print_new_token(console, made, f"user {user['name']} added ({user['role']})")
    return 0


def users_show(args: argparse.Namespace, api: ApiClient, console: Console) -> int:
    user = api.get_json(f"/users/{args.name}")
    if args.json:
        print_json(user)
        return 0
    for line in user_lines(user):
        console.print(line, soft_wrap=True)
    return 0


def _patch_user(api: ApiClient, name: str, change: dict[str, Any]) -> dict[str, Any]:
    user: dict[str, Any] = api.patch_json(f"/users/{name}", change)
    return user


def users_disable(args: argparse.Namespace, api: ApiClient, console: Console) -> int:
    _patch_user(api, args.name, {"disabled": True})
    console.print(f"user {args.name} disabled: their tokens are refused until enabled again")
    return 0


def users_enable(args: argparse.Namespace, api: ApiClient, console: Console) -> int:
    _patch_user(api, args.name, {"disabled": False})
    console.print(f"user {args.name} enabled")
    return 0


def users_set_limits(args: argparse.Namespace, api: ApiClient, console: Console) -> int:
    change: dict[str, Any] = {}
    if args.max_queued is not ...:
        change["max_queued_jobs"] = args.max_queued
    if args.max_running is not ...:
        change["max_running_jobs"] = args.max_running
    if not change:
        raise UsageError("give --max-queued N and/or --max-running N ('none': the default)")
    user = _patch_user(api, args.name, change)
    console.print(
        f"user {user['name']}: at most {_limit(user.get('max_queued_jobs'))} queued and "
        f"{_limit(user.get('max_running_jobs'))} running jobs"
    )
    return 0


# --- tokens ---------------------------------------------------------------------------------


def tokens_table(tokens: list[dict[str, Any]], *, width: int) -> Table:
    rows: list[list[str | Text]] = [
        [
            str(token["id"]),
            token.get("label") or EMPTY,
            "revoked" if token.get("revoked_at") else "active",
            timestamp(token.get("created_at")),
            timestamp(token.get("last_used_at")),
        ]
        for token in tokens
    ]
    count = len(tokens)
    return fitted_table(
        ["id", "label", "state", "created", "last used"],
        rows,
        width=width,
        left=("label", "state", "created", "last used"),
        wrap=("label",),
        caption=f"{count} token{'' if count == 1 else 's'}",
    )


def tokens_list(args: argparse.Namespace, api: ApiClient, console: Console) -> int:
    tokens = api.get_json(f"/users/{args.name}/tokens")
    return _print_rows(args, console, tokens, tokens_table)


def tokens_add(args: argparse.Namespace, api: ApiClient, console: Console) -> int:
    body = {"label": args.label} if args.label else {}
    made = api.post_json(f"/users/{args.name}/tokens", body)
    if args.json:
        print_json(made)
        return 0
    _print_new_token(console, {"token": made}, f"token {made['id']} added for {args.name}")
    return 0


def tokens_revoke(args: argparse.Namespace, api: ApiClient, console: Console) -> int:
    if args.all == (args.token_id is not None):
        raise UsageError("give a token's ID or --all (not both)")
    if args.all:
        answer = api.request("DELETE", f"/users/{args.name}/tokens").json()
        count = len(answer["revoked"])
        console.print(
            f"every token of {args.name} revoked ({count} {'was' if count == 1 else 'were'} "
            "still active)"
        )
        return 0
    answer = api.request("DELETE", f"/users/{args.name}/tokens/{args.token_id}").json()
    done = "revoked" if answer["revoked"] else "was already revoked"
    console.print(f"token {args.token_id} of {args.name} {done}")
    return 0


# --- audit ----------------------------------------------------------------------------------


def _detail(detail: Any) -> str:
    if not detail:
        return EMPTY
    if isinstance(detail, dict):
        return ", ".join(f"{key}={value}" for key, value in detail.items())
    return str(detail)


def audit_table(events: list[dict[str, Any]], more: bool, *, width: int) -> Table:
    rows: list[list[str | Text]] = [
        [
            timestamp(event.get("at")),
            str(event.get("actor") or EMPTY),
            str(event["action"]),
            str(event.get("job_id") or EMPTY),
            str(event.get("experiment_id") or EMPTY),
            _detail(event.get("detail")),
        ]
        for event in events
    ]
    return fitted_table(
        ["at", "actor", "action", "job", "experiment", "detail"],
        rows,
        width=width,
        left=("at", "actor", "action", "detail"),
        wrap=("detail",),
        caption=page_caption(len(events), "event", more),
    )


def add_account_commands(commands: Any, command: Any) -> None:
    """login, logout, whoami, users, tokens; `audit` is added with the list commands (it reads
    pages the same way)."""
    command(commands, "login", login, "check a token and store it with the URL")
    sub = commands.add_parser(
        "logout",
        help=f"remove the stored URL and token ({config_path()})",
        description="remove the file that cifar-jobs login wrote",
    )
    sub.set_defaults(local_handler=logout)
    sub = command(commands, "whoami", whoami, "who the token belongs to, and their role")
    sub.add_argument("--json", action="store_true", help="print GET /me's answer")

    users = commands.add_parser("users", help="admin: users, their roles and limits")
    user_commands = users.add_subparsers(dest="users_command", metavar="COMMAND", required=True)
    sub = command(user_commands, "list", users_list, "every user")
    sub.add_argument("--json", action="store_true", help="print the API's JSON answer")
    sub = command(user_commands, "add", users_add, "add a user and print their first token")
    sub.add_argument("name", type=user_name, metavar="NAME")
    sub.add_argument("--role", choices=ROLES, default="member", help="default member")
    sub.add_argument("--max-queued", type=limit_or_none, metavar="N", help="their queued jobs")
    sub.add_argument("--max-running", type=limit_or_none, metavar="N", help="their running jobs")
    sub.add_argument("--json", action="store_true", help="print the API's JSON answer")
    sub = command(user_commands, "show", users_show, "one user")
    sub.add_argument("name", type=user_name, metavar="NAME")
    sub.add_argument("--json", action="store_true", help="print the API's JSON answer")
    sub = command(user_commands, "disable", users_disable, "refuse a user's tokens")
    sub.add_argument("name", type=user_name, metavar="NAME")
    sub = command(user_commands, "enable", users_enable, "accept a disabled user's tokens again")
    sub.add_argument("name", type=user_name, metavar="NAME")
    sub = command(
        user_commands, "set-limits", users_set_limits, "a user's own job limits ('none': default)"
    )
    sub.add_argument("name", type=user_name, metavar="NAME")
    sub.add_argument("--max-queued", type=limit_or_none, default=..., metavar="N|none")
    sub.add_argument("--max-running", type=limit_or_none, default=..., metavar="N|none")

    tokens = commands.add_parser("tokens", help="admin: a user's tokens")
    token_commands = tokens.add_subparsers(dest="tokens_command", metavar="COMMAND", required=True)
    sub = command(token_commands, "list", tokens_list, "a user's tokens (never their secrets)")
    sub.add_argument("name", type=user_name, metavar="NAME")
    sub.add_argument("--json", action="store_true", help="print the API's JSON answer")
    sub = command(token_commands, "add", tokens_add, "another token for a user, printed once")
    sub.add_argument("name", type=user_name, metavar="NAME")
    sub.add_argument("--label", help="what it is for, e.g. laptop")
    sub.add_argument("--json", action="store_true", help="print the API's JSON answer")
    sub = command(token_commands, "revoke", tokens_revoke, "revoke one token, or all of them")
    sub.add_argument("name", type=user_name, metavar="NAME")
    sub.add_argument("token_id", nargs="?", type=positive_id, metavar="ID")
    sub.add_argument("--all", action="store_true", help="every token of the user")
