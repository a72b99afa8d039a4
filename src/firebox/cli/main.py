"""The ``firebox`` command: verb-first commands in the style of Fireworks' firectl.

    firebox serve --port 8000
    firebox create account acme --plan BUSINESS
    firebox --account acme list users
    firebox get account acme -o json
    firebox list users --account acme --base-url http://gpu-box:8000

Global options (--base-url, --api-key, --account, -o) go before or after the
verb (firebox/cli/argv.py).

Errors are printed as one ``error: ...`` line on stderr, never as a
traceback, and the exit code tells a script what happened (0 ok, 1 API or
server error, 2 usage, 3 auth, 4 not found, 5 conflict, 6 unreachable; the
contract is ``errors.ExitCode`` and ``firebox --help`` prints it).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from firebox.cli.argv import hoist_global_options
from firebox.cli.commands import accounts, api_keys, billing, datasets, limits, server, users
from firebox.cli.context import DEFAULT_BASE_URL, GlobalOptions
from firebox.cli.errors import EXIT_CODES_HELP, CliError
from firebox.cli.output import OutputFormat
from firebox.cli.verbs import Verbs

NOUNS = (accounts, users, api_keys, billing, limits, datasets)


def root_options(
    ctx: typer.Context,
    base_url: Annotated[
        str, typer.Option(envvar="FIREBOX_BASE_URL", help="URL of the Firebox server.")
    ] = DEFAULT_BASE_URL,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="FIREBOX_API_KEY",
            help="API key; default: the operator key in $FIREBOX_DATA_DIR/credentials.json "
            "(./.firebox when unset).",
            show_default=False,
        ),
    ] = None,
    account: Annotated[
        str | None,
        typer.Option(envvar="FIREBOX_ACCOUNT", help="Account to act on.", show_default=False),
    ] = None,
    output: Annotated[
        OutputFormat,
        typer.Option("--output", "-o", help="Output format.", case_sensitive=False),
    ] = OutputFormat.TABLE,
) -> None:
    """Firebox: self-hostable LLM inference, with the control plane around it."""
    ctx.obj = GlobalOptions(base_url=base_url, api_key=api_key, account=account, output=output)


def build_app() -> typer.Typer:
    """The whole command tree: root options, ``serve``/``db``, and the verb groups."""
    app = typer.Typer(
        name="firebox",
        no_args_is_help=True,
        epilog=EXIT_CODES_HELP,
        context_settings={"help_option_names": ["-h", "--help"]},
        pretty_exceptions_enable=False,
    )
    app.callback()(root_options)
    server.register(app)
    billing.register_root(app)
    verbs = Verbs.build()
    for noun in NOUNS:
        noun.register(verbs)
    verbs.attach(app)
    return app


def main() -> None:
    """Entry point of the ``firebox`` script: run, and map failures to exit codes."""
    command = typer.main.get_command(build_app())
    try:
        command(args=hoist_global_options(command, sys.argv[1:]), prog_name="firebox")
    except CliError as exc:
        message = Text("error: ", style="bold red") + Text(exc.describe())
        Console(stderr=True).print(message, highlight=False, soft_wrap=True)
        sys.exit(int(exc.exit_code))


if __name__ == "__main__":
    main()
