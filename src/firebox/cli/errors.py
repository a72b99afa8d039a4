"""What can go wrong on the command line, and the exit code each failure gets.

Exit codes are a contract with scripts, so they live in one enum:

    0  ok
    1  other API error, or a server error
    2  usage error (bad or missing option, as Typer reports it)
    3  authentication (401) or permission (403) refused
    4  not found (404)
    5  conflict: the resource already exists (409)
    6  cannot connect to the server
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """The process exit status of ``firebox``; see the module docstring."""

    OK = 0
    API_ERROR = 1
    USAGE = 2
    AUTH = 3
    NOT_FOUND = 4
    CONFLICT = 5
    UNREACHABLE = 6


EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 other API or server error; 2 usage error; "
    "3 authentication (401) or permission (403); 4 not found (404); "
    "5 conflict / already exists (409); 6 cannot connect to the server."
)


def exit_code_for(status: int) -> ExitCode:
    """The exit code of an HTTP error status."""
    if status in (401, 403):
        return ExitCode.AUTH
    if status == 404:
        return ExitCode.NOT_FOUND
    if status == 409:
        return ExitCode.CONFLICT
    return ExitCode.API_ERROR


class CliError(Exception):
    """A failure to report as one line on stderr, never as a traceback."""

    exit_code: ExitCode = ExitCode.API_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def describe(self) -> str:
        """The line printed after ``error:``."""
        return self.message


class UsageError(CliError):
    """The command line is incomplete in a way Typer cannot check (e.g. no account)."""

    exit_code = ExitCode.USAGE


class ServerUnreachable(CliError):
    """No connection could be made to the server at the base URL."""

    exit_code = ExitCode.UNREACHABLE


class ApiError(CliError):
    """The server answered with an error body; its status decides the exit code."""

    def __init__(self, status: int, message: str, *, code: str = "", error_type: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.error_type = error_type
        self.exit_code = exit_code_for(status)

    def describe(self) -> str:
        return f"{self.message} ({self.code})" if self.code else self.message
