"""The `cifar-jobs` command with accounts, as a separate process against a real API process
whose API_KEY is set: where the token comes from (flag, environment, the file `login` writes),
whoami, the owner filters and columns, the admin commands, and 401, 403 and 429 as one line."""

from __future__ import annotations

import json
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import CLI_API_KEY, service_environment
from tests.support import assert_one_line_error, free_port, run_cli, start_api, submitted_id

pytestmark = pytest.mark.slow

TOKEN = re.compile(r"cj_[A-Za-z0-9_-]{43}")
TINY_JOB = ["--block", "mobile", "--epochs", "1", "--train-samples", "64", "--test-samples", "32"]


def as_admin(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, url=url, token=CLI_API_KEY)


def as_user(url: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, url=url, token=token)


def added_token(result: subprocess.CompletedProcess[str]) -> str:
    """The token `users add` or `tokens add` printed, alone on its last line."""
    assert result.returncode == 0, (result.stdout, result.stderr)
    last = result.stdout.strip().splitlines()[-1]
    assert TOKEN.fullmatch(last), result.stdout
    return last


@pytest.fixture(scope="module")
def people(cli_accounts_api: str) -> dict[str, str]:
    """Two members, alice and bob: {name: token}."""
    return {
        name: added_token(as_admin(cli_accounts_api, "users", "add", name))
        for name in ("alice", "bob")
    }


def submit(url: str, token: str, name: str) -> int:
    result = as_user(url, token, "submit", *TINY_JOB, "--name", name)
    return submitted_id(result)


def test_users_add_prints_the_token_once_and_lists_never_show_it(
    cli_accounts_api: str,
) -> None:
    url = cli_accounts_api
    added = as_admin(url, "users", "add", "carol", "--max-queued", "4", "--max-running", "1")
    token = added_token(added)
    assert added.stdout.count(token) == 1
    assert added.stdout.startswith("user carol added (member); the token, shown only this once")

    listed = as_admin(url, "users", "list")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("carol"))
    assert row.split()[:5] == ["carol", "member", "active", "4", "1"]
    for command in (["users", "list", "--json"], ["users", "show", "carol", "--json"]):
        shown = as_admin(url, *command)
        assert shown.returncode == 0 and "cj_" not in shown.stdout, shown.stdout
    tokens = as_admin(url, "tokens", "list", "carol", "--json")
    assert tokens.returncode == 0 and "cj_" not in tokens.stdout
    assert len(json.loads(tokens.stdout)["items"]) == 1

    who = as_user(url, token, "whoami")
    assert who.stdout.strip() == f"carol (member) at {url}; token from CIFAR_JOBS_TOKEN"

    again = as_admin(url, "users", "add", "carol")
    assert "carol" in assert_one_line_error(again, 1)
    bad = as_admin(url, "users", "add", "Carol!")
    assert "a user name is 1 to 64 of a-z" in assert_one_line_error(bad, 2)
    role = as_admin(url, "users", "add", "dave", "--role", "boss")
    assert "argument --role: invalid choice: 'boss'" in assert_one_line_error(role, 2)


def test_the_token_from_the_flag_the_environment_or_the_login_file(
    cli_accounts_api: str, people: dict[str, str], tmp_path: Path
) -> None:
    url, home = cli_accounts_api, tmp_path / "config"
    config = home / "cifar-jobs" / "config.toml"

    refused = run_cli("login", url=url, config_home=home, stdin="cj_" + "x" * 43 + "\n")
    assert "the API refused the token from the token typed" in assert_one_line_error(refused, 1)
    assert not config.exists()

    # The token typed (here: a line of stdin), checked, then stored with the URL.
    logged_in = run_cli("login", url=url, config_home=home, stdin=people["alice"] + "\n")
    assert logged_in.returncode == 0, logged_in.stderr
    assert logged_in.stdout.strip() == f"logged in to {url} as alice (member); saved in {config}"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    assert people["alice"] in config.read_text()

    # The file alone: its URL and its token.
    from_file = run_cli("whoami", url=None, config_home=home)
    assert from_file.stdout.strip() == f"alice (member) at {url}; token from {config}"
    # The environment over the file, the flag over both.
    from_env = run_cli("whoami", url=None, config_home=home, token=people["bob"])
    assert from_env.stdout.strip() == f"bob (member) at {url}; token from CIFAR_JOBS_TOKEN"
    from_old_env = run_cli("whoami", url=None, config_home=home, api_key=CLI_API_KEY)
    assert from_old_env.stdout.startswith("admin (admin)"), from_old_env.stdout
    from_flag = run_cli(
        "whoami", "--token", CLI_API_KEY, url=None, config_home=home, token=people["bob"]
    )
    assert from_flag.stdout.strip() == f"admin (admin) at {url}; token from --token"

    # The stored token goes to the stored URL only: another spelling of the server gets none.
    other = url.replace("127.0.0.1", "localhost")
    elsewhere = run_cli("whoami", url=other, config_home=home)
    assert assert_one_line_error(elsewhere, 1) == (
        "the API needs a token: pass --token, set CIFAR_JOBS_TOKEN or run cifar-jobs login"
    )

    # A login again replaces the file, still 0600.
    config.chmod(0o644)
    again = run_cli("login", "--token", people["bob"], url=url, config_home=home)
    assert again.returncode == 0, again.stderr
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert people["bob"] in config.read_text() and people["alice"] not in config.read_text()

    out = run_cli("logout", url=None, config_home=home)
    assert out.stdout.strip() == f"logged out: removed {config}"
    assert not config.exists()
    assert run_cli("logout", url=None, config_home=home).stdout.strip() == (
        f"not logged in: there is no {config}"
    )
    gone = run_cli("whoami", url=url, config_home=home)
    assert "the API needs a token" in assert_one_line_error(gone, 1)

    config.write_text("url = 'http://127.0.0.1:1'\n")
    broken = run_cli("list", url=None, config_home=home)
    assert assert_one_line_error(broken, 1) == (
        f"{config} needs url and token strings: run cifar-jobs login again"
    )


def test_owners_in_lists_and_shows_and_the_mine_and_owner_filters(
    cli_accounts_api: str, people: dict[str, str]
) -> None:
    url = cli_accounts_api
    alices = submit(url, people["alice"], "alice's")
    bobs = submit(url, people["bob"], "bob's")

    def listed(*args: str, token: str = CLI_API_KEY) -> list[dict[str, Any]]:
        result = as_user(url, token, "list", "--json", *args)
        assert result.returncode == 0, result.stderr
        items: list[dict[str, Any]] = json.loads(result.stdout)["items"]
        return items

    mine = listed("--mine", token=people["alice"])
    assert mine and {job["owner"] for job in mine} == {"alice"}
    assert alices in [job["id"] for job in mine] and bobs not in [job["id"] for job in mine]
    assert {job["owner"] for job in listed("--owner", "bob")} == {"bob"}

    table = as_admin(url, "list")
    assert table.stdout.splitlines()[0].split()[:3] == ["id", "owner", "name"], table.stdout
    rows = [line.split() for line in table.stdout.splitlines()[2:-1]]  # not the caption
    owners = {row[0]: row[1] for row in rows if row and row[0] in (str(alices), str(bobs))}
    assert owners == {str(alices): "alice", str(bobs): "bob"}, table.stdout
    shown = as_admin(url, "show", str(alices))
    assert re.search(r"^owner\s+alice$", shown.stdout, re.MULTILINE), shown.stdout

    experiment = as_user(
        url, people["bob"], "experiment", "submit", "--name", "bob's grid", "--block", "plain",
        "--seeds", "0,1", *TINY_JOB[2:],
    )  # fmt: skip
    experiment_id = submitted_id(experiment, "experiment")
    header = as_admin(url, "experiment", "show", str(experiment_id)).stdout.splitlines()[0]
    assert header.startswith(f'experiment {experiment_id} "bob\'s grid", owned by bob: ')
    theirs = as_user(url, people["bob"], "experiment", "list", "--mine", "--json")
    assert [item["id"] for item in json.loads(theirs.stdout)["items"]] == [experiment_id]
    none = as_user(url, people["alice"], "experiment", "list", "--mine", "--json")
    assert json.loads(none.stdout)["items"] == []
    experiments = as_admin(url, "experiment", "list")
    assert experiments.stdout.splitlines()[0].split()[:3] == ["id", "owner", "name"]

    both = as_admin(url, "list", "--mine", "--owner", "bob")
    assert "not allowed with argument" in assert_one_line_error(both, 2)
    wrong = as_admin(url, "list", "--owner", "Not A Name")
    assert "a user name is" in assert_one_line_error(wrong, 2)


def test_a_member_may_not_change_another_members_job(
    cli_accounts_api: str, people: dict[str, str]
) -> None:
    url = cli_accounts_api
    alices = submit(url, people["alice"], "not bob's")
    refused = as_user(url, people["bob"], "cancel", str(alices))
    message = assert_one_line_error(refused, 1)
    assert message.startswith("not allowed: "), message
    assert "alice" in message and "bob" in message
    job = httpx.get(f"{url}/jobs/{alices}", headers={"X-API-Key": CLI_API_KEY}).json()
    assert job["status"] == "queued" and not job["cancel_requested"]

    own = as_user(url, people["alice"], "cancel", str(alices))
    assert own.returncode == 0 and own.stdout.strip() == f"job {alices} cancelled"

    # Admin commands are an admin's; a member's own tokens are theirs to manage.
    for command in (
        ["users", "list"],
        ["audit"],
        ["users", "add", "mallory"],
        ["tokens", "list", "alice"],
        ["tokens", "add", "alice"],
    ):
        denied = as_user(url, people["bob"], *command)
        assert assert_one_line_error(denied, 1).startswith("not allowed: "), command
    own_tokens = as_user(url, people["bob"], "tokens", "list", "bob")
    assert own_tokens.returncode == 0 and "1 token" in own_tokens.stdout, own_tokens.stderr

    # The audit trail names who did it.
    trail = as_admin(url, "audit", "--job", str(alices), "--json")
    assert trail.returncode == 0, trail.stderr
    events = json.loads(trail.stdout)["items"]
    assert any(event["actor"] == "alice" and "cancel" in event["action"] for event in events)
    by_alice = as_admin(url, "audit", "--actor", "alice")
    assert by_alice.returncode == 0 and "alice" in by_alice.stdout


def test_tokens_revoked_users_disabled_and_a_quota(
    cli_accounts_api: str, people: dict[str, str]
) -> None:
    url = cli_accounts_api
    first = added_token(as_admin(url, "users", "add", "erin", "--max-queued", "1"))
    second = added_token(as_admin(url, "tokens", "add", "erin", "--label", "laptop"))
    listed = json.loads(as_admin(url, "tokens", "list", "erin", "--json").stdout)["items"]
    assert len(listed) == 2 and "laptop" in [token["label"] for token in listed]
    laptop = next(token["id"] for token in listed if token["label"] == "laptop")

    # A quota: one queued job, then a 429 in one line.
    submit(url, first, "within the quota")
    over = as_user(url, first, "submit", *TINY_JOB)
    message = assert_one_line_error(over, 1)
    assert message.startswith("over your quota"), message

    revoked = as_admin(url, "tokens", "revoke", "erin", str(laptop))
    assert revoked.stdout.strip() == f"token {laptop} of erin revoked"
    again = as_admin(url, "tokens", "revoke", "erin", str(laptop))
    assert again.stdout.strip() == f"token {laptop} of erin was already revoked"
    missing = as_admin(url, "tokens", "revoke", "erin", "999")
    assert assert_one_line_error(missing, 1) == "User erin has no token 999."
    nobody = as_admin(url, "users", "show", "zed")
    assert assert_one_line_error(nobody, 1) == "No user named 'zed'."
    refused = as_user(url, second, "whoami")
    assert assert_one_line_error(refused, 1).startswith(
        "the API refused the token from CIFAR_JOBS_TOKEN: "
    )
    assert as_user(url, first, "whoami").returncode == 0

    assert as_admin(url, "users", "disable", "erin").returncode == 0
    assert "disabled" in assert_one_line_error(as_user(url, first, "whoami"), 1)
    assert as_admin(url, "users", "enable", "erin").returncode == 0
    assert as_user(url, first, "whoami").returncode == 0

    limits = as_admin(url, "users", "set-limits", "erin", "--max-queued", "none")
    assert limits.stdout.strip() == "user erin: at most default queued and default running jobs"
    nothing = as_admin(url, "users", "set-limits", "erin")
    assert "give --max-queued" in assert_one_line_error(nothing, 2)

    every = as_admin(url, "tokens", "revoke", "erin", "--all")
    assert every.stdout.strip() == "every token of erin revoked (1 was still active)"
    assert as_user(url, first, "whoami").returncode == 1
    neither = as_admin(url, "tokens", "revoke", "erin")
    assert assert_one_line_error(neither, 2) == "give a token's ID or --all (not both)"


def test_without_accounts_whoami_says_so_and_login_and_mine_refuse(
    tmp_path: Path, dataset_root: Path
) -> None:
    from jobs.migrations import upgrade

    database_url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    upgrade(database_url)
    port = free_port()
    api = start_api(service_environment(tmp_path, database_url, dataset_root), tmp_path, port)
    url = f"http://127.0.0.1:{port}"
    try:
        who = run_cli("whoami", url=url)
        assert who.stdout.strip() == (
            f"no accounts at {url} (no API_KEY is set): anyone may do anything"
        )
        home = tmp_path / "config"
        login = run_cli("login", "--token", "cj_" + "a" * 43, url=url, config_home=home)
        assert "has no accounts" in assert_one_line_error(login, 1)
        assert not (home / "cifar-jobs" / "config.toml").exists()
        mine = run_cli("list", "--mine", url=url)
        assert "leave out --mine" in assert_one_line_error(mine, 1)
        listed = run_cli("list", url=url)
        assert listed.returncode == 0 and "owner" not in listed.stdout
    finally:
        api.stop()
