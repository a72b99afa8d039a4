"""Global options after the verb (firebox/cli/argv.py), on the real command tree."""

from __future__ import annotations

import pytest
import typer

from firebox.cli.argv import GLOBAL_OPTIONS, hoist_global_options
from firebox.cli.errors import UsageError
from firebox.cli.main import build_app

ROOT = typer.main.get_command(build_app())


def hoist(*args: str) -> list[str]:
    return hoist_global_options(ROOT, args)


def test_the_global_options_are_the_roots() -> None:
    root_opts = {opt for param in ROOT.params for opt in param.opts}
    assert root_opts >= GLOBAL_OPTIONS


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        # After the noun, in every spelling Click accepts.
        (
            ["list", "quotas", "--base-url", "http://h:1", "--api-key", "K"],
            ["--base-url", "http://h:1", "--api-key", "K", "list", "quotas"],
        ),
        (
            ["get", "usage", "--by", "model", "--base-url=http://h:1", "-ojson"],
            ["--base-url=http://h:1", "-ojson", "get", "usage", "--by", "model"],
        ),
        # Between the verb and the noun.
        (["list", "--account", "acme", "users"], ["--account", "acme", "list", "users"]),
        # After the ones given first: the last one given still wins.
        (
            ["--account", "a", "list", "users", "--account", "b"],
            ["--account", "a", "--account", "b", "list", "users"],
        ),
        # A command's own option value that looks like a global flag stays its value.
        (
            ["create", "account", "x", "--display-name", "-o", "-o", "json"],
            ["-o", "json", "create", "account", "x", "--display-name", "-o"],
        ),
        # `--` ends the options.
        (["get", "account", "--", "--account"], ["get", "account", "--", "--account"]),
        # Nothing to move.
        (["-o", "json", "list", "accounts"], ["-o", "json", "list", "accounts"]),
        (["serve", "--port", "8001"], ["serve", "--port", "8001"]),
        ([], []),
    ],
)
def test_hoists_global_options_before_the_verb(given: list[str], expected: list[str]) -> None:
    assert hoist(*given) == expected


def test_a_global_option_without_its_value_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="'--api-key' requires a value"):
        hoist("list", "quotas", "--api-key")
