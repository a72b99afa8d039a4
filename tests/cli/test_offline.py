"""Command-line behaviour that needs no running server: usage errors, exit 6, help, db.

Most run ``main()`` in-process (cheap); the unreachable-server case runs the
real script once, to see a whole process exit with 6 and no traceback.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from firebox.cli.main import main
from tests.cli.runner import ADMIN_KEY, CliResult, clean_env, run_cli

RunMain = Callable[..., CliResult]


@pytest.fixture
def run_main(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> RunMain:
    """Call ``main()`` with argv, in an environment without FIREBOX_* settings."""

    def run(*args: str, **env: str) -> CliResult:
        for name in [n for n in os.environ if n.startswith("FIREBOX_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("COLUMNS", "200")
        monkeypatch.setenv("FIREBOX_DATA_DIR", str(tmp_path))
        monkeypatch.setenv("FIREBOX_API_KEY", ADMIN_KEY)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(sys, "argv", ["firebox", *args])
        with pytest.raises(SystemExit) as exited:
            main()
        captured = capsys.readouterr()
        code = exited.value.code
        return CliResult(code if isinstance(code, int) else 1, captured.out, captured.err)

    return run


def closed_port_url() -> str:
    """A loopback URL that refuses connections (a port bound but never listened on)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


def test_server_down_exits_6(tmp_path: Path) -> None:
    url = closed_port_url()
    env = clean_env(FIREBOX_BASE_URL=url, FIREBOX_API_KEY=ADMIN_KEY, FIREBOX_DATA_DIR=str(tmp_path))
    result = run_cli("list", "accounts", env=env, cwd=tmp_path)
    assert result.returncode == 6
    assert result.stderr.startswith("error: Cannot connect")
    assert url in result.stderr
    assert "Traceback" not in result.stderr


def test_global_options_after_the_verb_are_used(run_main: RunMain) -> None:
    """``--base-url`` after the noun is read (exit 6: that URL is down), not refused (exit 2)."""
    url = closed_port_url()
    result = run_main(
        "list", "quotas", "--base-url", url, "--api-key", ADMIN_KEY, "--account", "a", "-o", "json"
    )
    assert result.returncode == 6, result.stderr
    assert url in result.stderr
    missing = run_main("list", "quotas", "--account", "a", "--base-url")
    assert missing.returncode == 2
    assert "'--base-url' requires a value" in missing.stderr


def test_command_needing_an_account_without_one_exits_2(run_main: RunMain) -> None:
    result = run_main("list", "users")
    assert result.returncode == 2
    assert result.stderr.startswith("error: No account given")
    assert "--account" in result.stderr and "FIREBOX_ACCOUNT" in result.stderr


def test_typer_usage_errors_exit_2(run_main: RunMain) -> None:
    assert run_main("create", "user", "bob", FIREBOX_ACCOUNT="acme").returncode == 2  # no --role
    bad_time = run_main(
        "create", "api-key", "--user", "bob", "--expire-time", "tomorrow", FIREBOX_ACCOUNT="acme"
    )
    assert bad_time.returncode == 2
    assert "RFC 3339" in bad_time.stderr
    naive = run_main("create", "api-key", "--user", "bob", "--expire-time", "2030-01-01T00:00:00")
    assert naive.returncode == 2
    assert "time zone" in naive.stderr
    nothing = run_main("update", "account", "acme")
    assert nothing.returncode == 2
    assert "Nothing to update" in nothing.stderr


def test_help_documents_exit_codes(run_main: RunMain) -> None:
    result = run_main("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for phrase in ("4 not found", "5 conflict", "6 cannot connect", "3 authentication"):
        assert phrase in text
    for verb in ("serve", "create", "get", "list", "update", "delete"):
        assert verb in result.stdout


def test_db_upgrade_creates_a_migrated_sqlite_database(run_main: RunMain, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result = run_main("db", "upgrade", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr
    assert "revision" in result.stdout
    assert (data_dir / "firebox.db").exists()
    again = run_main("db", "upgrade", "--data-dir", str(data_dir))
    assert (again.returncode, again.stdout) == (0, result.stdout)
