"""Which process owns a local staging folder, so that another process on the same machine can
tell a dead attempt's folder from a live one's without asking the database.

An attempt writes a marker into its folder naming its machine (the host name: a container's
own), pid and the process's start time (a pid alone is reused). A folder whose owner is on this
machine and no longer running is a killed worker's: its files will never be uploaded (the
attempt resumes from the store, here or elsewhere) and can go at once. A container restarted
after a kill starts a new PID namespace under the same host name; the old pid is then free or
taken by a process started at another time, so the folder is still known dead. A folder owned
elsewhere, or one without a marker, is left to the age-based sweep.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

MARKER_NAME = ".owner"


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    started: str | None  # the process's start time, in clock ticks since boot; None: no /proc


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat; None when there is no such process (or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from the last ")".
    return stat.rsplit(")", 1)[1].split()[19]


def this_process() -> Owner:
    return Owner(socket.gethostname(), os.getpid(), _start_time(os.getpid()))


def write_marker(folder: Path) -> None:
    """Mark `folder` as this process's (atomically: a reader never sees half a marker)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f"{MARKER_NAME}-", dir=folder)
    with os.fdopen(fd, "w") as file:
        json.dump(asdict(this_process()), file)
    os.replace(temp_name, folder / MARKER_NAME)


def read_marker(folder: Path) -> Owner | None:
    """The owner `folder` was marked with; None without a readable marker."""
    try:
        fields = json.loads((folder / MARKER_NAME).read_text())
        return Owner(**fields)
    except (OSError, ValueError, TypeError):
        return None


def known_dead(owner: Owner) -> bool:
    """Whether the owner is certainly not running: on this machine, with no process of that
    pid, or one started at another time."""
    if owner.host != socket.gethostname():
        return False
    if owner.started is not None:
        return _start_time(owner.pid) != owner.started
    try:  # without /proc: only whether the pid is taken
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def owned_by_the_dead(folder: Path) -> bool:
    """`folder` has a marker whose owner is known dead."""
    owner = read_marker(folder)
    return owner is not None and known_dead(owner)


def owned_by_the_living(folder: Path) -> bool:
    """`folder` has a marker whose owner is a process of this machine still running."""
    owner = read_marker(folder)
    return owner is not None and owner.host == socket.gethostname() and not known_dead(owner)
