"""The one error type the commands raise: a one-line message and the exit status it means."""

from __future__ import annotations

# Exit statuses: 0 success, 1 anything that went wrong (the API, the network, a failed job), 2 a
# request that is wrong (bad flags, a spec the API refuses), 130 interrupted with Ctrl-C.
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """Printed as `cifar-jobs: <message>` on stderr, never with a traceback."""

    def __init__(self, message: str, *, exit_status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_status = exit_status


class UsageError(CliError):
    """The command line or a spec file is wrong: exit status 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_status=EXIT_USAGE)
