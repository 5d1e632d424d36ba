"""The types of the command line's arguments: each refuses a wrong value with a sentence that
argparse prints as a one-line usage error."""

from __future__ import annotations

import argparse
import re


def positive_id(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"an id is a positive integer, not {text!r}")
    return int(text)


def positive_count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a count is a positive integer, not {text!r}")
    return int(text)


def positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, not {text!r}")
    return seconds


# The API's rule for a user's name (and so an owner's).
USER_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
ROLES = ("member", "admin")


def user_name(text: str) -> str:
    if not USER_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"a user name is 1 to 64 of a-z, 0-9, '.', '_' and '-', starting with a letter or "
            f"digit, not {text!r}"
        )
    return text


def limit_or_none(text: str) -> int | None:
    """A per-user job limit: a count from 0, or `none` for the server's default."""
    if text == "none":
        return None
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"a limit is a whole number or 'none', not {text!r}")
    return int(text)
