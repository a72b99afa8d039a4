"""The global options, and how a command resolves them into a client and a printer.

The root callback stores ``GlobalOptions`` on the Click context; each command
builds a ``Call`` from it plus its own ``--account`` / ``-o`` (so that both
``firebox -o json get account`` and ``firebox get account -o json`` work, as
with firectl). The API key falls back to the operator key saved at first
start, which makes a local ``firebox serve`` usable with no setup.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from firebox.cli.client import ApiClient
from firebox.cli.errors import CliError, UsageError
from firebox.cli.output import OutputFormat, Printer

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_DATA_DIR = ".firebox"

AccountOption = Annotated[
    str | None,
    typer.Option(
        "--account",
        help="Account id (overrides the global --account / FIREBOX_ACCOUNT).",
        show_default=False,
    ),
]
OutputOption = Annotated[
    OutputFormat | None,
    typer.Option(
        "--output",
        "-o",
        help="Output format (overrides the global -o).",
        case_sensitive=False,
        show_default=False,
    ),
]


@dataclass(frozen=True)
class GlobalOptions:
    """What the root callback parsed: flags, or their ``FIREBOX_*`` variables."""

    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = None
    account: str | None = None
    output: OutputFormat = OutputFormat.TABLE


def data_dir_from_env() -> Path:
    """The data dir a local server uses: ``FIREBOX_DATA_DIR`` or ``./.firebox``."""
    return Path(os.environ.get("FIREBOX_DATA_DIR") or DEFAULT_DATA_DIR).expanduser()


def saved_operator_key(data_dir: Path) -> str | None:
    """The operator key from ``credentials.json``, if a local first start saved one."""
    from firebox.accounts.credentials import load_credentials

    try:
        return load_credentials(data_dir).get("operatorKey") or None
    except (OSError, ValueError) as exc:
        raise CliError(
            f"Cannot read {data_dir / 'credentials.json'}: {exc}. Pass --api-key or set "
            "FIREBOX_API_KEY."
        ) from None


@dataclass(frozen=True)
class Call:
    """One command's view of the options: the global ones with its own overrides."""

    options: GlobalOptions
    account_override: str | None = None
    output_override: OutputFormat | None = None

    @classmethod
    def of(
        cls,
        ctx: typer.Context,
        *,
        account: str | None = None,
        output: OutputFormat | None = None,
    ) -> Call:
        options = ctx.find_object(GlobalOptions) or GlobalOptions()
        return cls(options=options, account_override=account, output_override=output)

    @property
    def output(self) -> OutputFormat:
        return self.output_override or self.options.output

    def account(self, explicit: str | None = None) -> str:
        """The account to act on: ``explicit``, then ``--account``, then FIREBOX_ACCOUNT."""
        account = explicit or self.account_override or self.options.account
        if not account:
            raise UsageError("No account given: pass --account ID or set FIREBOX_ACCOUNT.")
        return account

    def client(self) -> ApiClient:
        """A client for the base URL, authenticated with the resolved API key."""
        api_key = self.options.api_key or saved_operator_key(data_dir_from_env())
        return ApiClient(self.options.base_url, api_key)

    def printer(self) -> Printer:
        return Printer(self.output)
