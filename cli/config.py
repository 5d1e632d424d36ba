"""The file `cifar-jobs login` writes: the server's URL and a token, readable by its owner only.

It lives at $XDG_CONFIG_HOME/cifar-jobs/config.toml (~/.config/cifar-jobs/config.toml without
XDG_CONFIG_HOME). The token in it is sent only to the URL stored beside it, so pointing the
command at another server with --url or CIFAR_JOBS_URL never hands that server the token."""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cli.errors import CliError

CONFIG_HOME_VARIABLE = "XDG_CONFIG_HOME"
FILE_MODE = 0o600
FOLDER_MODE = 0o700


@dataclass(frozen=True)
class StoredLogin:
    url: str
    token: str


def config_path() -> Path:
    home = os.environ.get(CONFIG_HOME_VARIABLE) or ""
    # The XDG rule: a relative path in the variable is ignored.
    base = Path(home) if os.path.isabs(home) else Path.home() / ".config"
    return base / "cifar-jobs" / "config.toml"


def load_login(path: Path | None = None) -> StoredLogin | None:
    """The stored URL and token; None when there is no file. A file that cannot be read or
    is not what login writes is an error naming it, rather than being silently skipped."""
    path = path or config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as error:
        raise CliError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise CliError(
            f"{path} is not valid TOML ({error}): fix it or run cifar-jobs logout"
        ) from None
    url, token = data.get("url"), data.get("token")
    if not isinstance(url, str) or not isinstance(token, str) or not url or not token:
        raise CliError(f"{path} needs url and token strings: run cifar-jobs login again")
    return StoredLogin(url.rstrip("/"), token)


def save_login(login: StoredLogin, path: Path | None = None) -> Path:
    """Write the file with mode 0600 (in a 0700 folder), replacing any earlier one at once: it
    is written beside it and renamed, so a reader never sees half a file."""
    path = path or config_path()
    # JSON's string escapes are valid in TOML's basic strings.
    text = f"url = {json.dumps(login.url)}\ntoken = {json.dumps(login.token)}\n"
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            os.fchmod(file.fileno(), FILE_MODE)  # whatever the umask or an older file made it
            file.write(text)
        os.replace(partial, path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise CliError(f"cannot write {path}: {error.strerror or error}") from None
    return path


def remove_login(path: Path | None = None) -> bool:
    """Remove the file; False when there was none."""
    path = path or config_path()
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as error:
        raise CliError(f"cannot remove {path}: {error.strerror or error}") from None
    return True
