"""Checking checkpoint files against their recorded sha256, without torch (the API uses this)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, hex."""
    with Path(path).open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def verify_checkpoint(path: Path, sha256: str, size_bytes: int) -> bool:
    """Whether ``path`` exists with exactly this size and sha256 (the size is checked first)."""
    path = Path(path)
    try:
        if path.stat().st_size != size_bytes:
            return False
        return file_sha256(path) == sha256
    except FileNotFoundError:
        return False
