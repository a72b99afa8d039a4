"""A real ``firebox serve``: its data dir is private, and a weak operator key stops it."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cli.runner import clean_env
from tests.conftest import OPERATOR_KEY
from tests.support.api import bearer, create_account
from tests.support.server import FIREBOX, start_server

pytestmark = pytest.mark.slow


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The common 022 umask (inherited by the server), under which plain creates are 0644."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_the_data_dir_is_0700_and_its_files_0600(tmp_path: Path, usual_umask: None) -> None:
    data = tmp_path / "data"
    server = start_server(data, env={"FIREBOX_ADMIN_KEY": OPERATOR_KEY})
    try:
        with httpx.Client(base_url=server.url) as api:
            create_account(api, bearer(OPERATOR_KEY), "modes")  # a write: the WAL exists
        assert mode(data) == 0o700
        files = [p for p in data.rglob("*") if p.is_file()]
        names = {p.name for p in files}
        assert {"firebox.db", "firebox.db-wal", "firebox.db-shm", "credentials.json"} <= names
        # The server's log, created 0644 by the test harness before the start, was tightened.
        assert {str(p.relative_to(data)): mode(p) for p in files} == {
            str(p.relative_to(data)): 0o600 for p in files
        }
        assert all(mode(p) == 0o700 for p in data.rglob("*") if p.is_dir())
        assert "tightened" in server.log()
    finally:
        server.stop()


def test_a_weak_operator_key_is_a_clear_startup_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(FIREBOX), "serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(tmp_path)],
        env=clean_env(FIREBOX_ADMIN_KEY="a"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "FIREBOX_ADMIN_KEY is too weak" in proc.stderr, proc.stderr
    assert "secrets.token_urlsafe(32)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "firebox.db").exists()  # refused before anything was written


def test_the_development_flag_starts_on_loopback_only(tmp_path: Path) -> None:
    weak = {"FIREBOX_ADMIN_KEY": "a", "FIREBOX_ALLOW_WEAK_ADMIN_KEY": "1"}
    server = start_server(tmp_path / "loopback", env=weak)
    try:
        with httpx.Client(base_url=server.url) as api:
            assert api.get("/v1/accounts", headers=bearer("a")).status_code == 200
    finally:
        server.stop()
    proc = subprocess.run(
        [str(FIREBOX), "serve", "--host", "0.0.0.0", "--port", "0", "--data-dir", str(tmp_path)],
        env=clean_env(**weak),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "the host is not loopback" in proc.stderr, proc.stderr
