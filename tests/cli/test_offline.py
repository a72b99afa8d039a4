"""Command-line behaviour that needs no running server: usage errors, exit 6, help, db."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.cli.runner import ADMIN_KEY, clean_env, run_cli


def closed_port_url() -> str:
    """A loopback URL that refuses connections (a port bound but never listened on)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    return clean_env(FIREBOX_API_KEY=ADMIN_KEY, FIREBOX_DATA_DIR=str(tmp_path), **extra)


def test_server_down_exits_6(tmp_path: Path) -> None:
    url = closed_port_url()
    result = run_cli("list", "accounts", env=env_for(tmp_path, FIREBOX_BASE_URL=url), cwd=tmp_path)
    assert result.returncode == 6
    assert result.stderr.startswith("error: Cannot connect")
    assert url in result.stderr
    assert "Traceback" not in result.stderr


def test_command_needing_an_account_without_one_exits_2(tmp_path: Path) -> None:
    result = run_cli("list", "users", env=env_for(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert "--account" in result.stderr and "FIREBOX_ACCOUNT" in result.stderr


def test_typer_usage_errors_exit_2(tmp_path: Path) -> None:
    env = env_for(tmp_path, FIREBOX_ACCOUNT="acme")
    assert run_cli("create", "user", "bob", env=env, cwd=tmp_path).returncode == 2  # no --role
    bad_time = run_cli(
        "create", "api-key", "--user", "bob", "--expire-time", "tomorrow", env=env, cwd=tmp_path
    )
    assert bad_time.returncode == 2
    assert "RFC 3339" in bad_time.stderr
    assert run_cli("update", "account", env=env, cwd=tmp_path).returncode == 2  # nothing to set


def test_help_documents_exit_codes(tmp_path: Path) -> None:
    result = run_cli("--help", env=env_for(tmp_path), cwd=tmp_path)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for phrase in ("4 not found", "5 conflict", "6 cannot connect", "3 authentication"):
        assert phrase in text
    for verb in ("serve", "create", "get", "list", "update", "delete"):
        assert verb in result.stdout


def test_db_upgrade_creates_a_migrated_sqlite_database(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result = run_cli(
        "db", "upgrade", "--data-dir", str(data_dir), env=env_for(tmp_path), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "revision" in result.stdout
    assert (data_dir / "firebox.db").exists()
    again = run_cli(
        "db", "upgrade", "--data-dir", str(data_dir), env=env_for(tmp_path), cwd=tmp_path
    )
    assert again.returncode == 0
    assert again.stdout == result.stdout
