"""The data dir is 0700 and every file in it 0600, new or left by an older version."""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from firebox.accounts.credentials import save_credentials
from firebox.billing.spool import Spool
from firebox.private_files import tighten_tree
from firebox.store.database import Database


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """The common 022 umask, under which a plain create is world-readable (0644)."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_new_sqlite_database_and_its_wal_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "firebox.db"
    db = Database(f"sqlite:///{path}")
    try:
        with db.transaction() as session:
            session.execute(text("CREATE TABLE t (x INTEGER)"))
            session.execute(text("INSERT INTO t VALUES (1)"))
        wal, shm = tmp_path / "firebox.db-wal", tmp_path / "firebox.db-shm"
        assert wal.exists() and shm.exists()  # WAL mode, connection still open
        assert (mode(path), mode(wal), mode(shm)) == (0o600, 0o600, 0o600)
    finally:
        db.dispose()


def test_an_old_world_readable_database_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "firebox.db"
    first = Database(f"sqlite:///{path}")
    with first.transaction() as session:
        session.execute(text("CREATE TABLE t (x INTEGER)"))
    first.dispose()
    os.chmod(path, 0o644)
    second = Database(f"sqlite:///{path}")
    second.dispose()
    assert mode(path) == 0o600


def test_start_tightens_a_tree_an_older_version_left_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    (data / "spool").mkdir(parents=True, mode=0o755)
    os.chmod(data, 0o755)
    os.chmod(data / "spool", 0o755)
    for name in ("firebox.db", "credentials.json", "spool/usage-1.spool"):
        (data / name).write_text("x")
        os.chmod(data / name, 0o644)
    with caplog.at_level(logging.WARNING, logger="firebox.files"):
        tighten_tree(data)
    assert mode(data) == mode(data / "spool") == 0o700
    assert {mode(data / n) for n in ("firebox.db", "credentials.json", "spool/usage-1.spool")} == {
        0o600
    }
    assert "tightened" in caplog.text and "credentials.json" in caplog.text


def test_a_new_data_dir_is_0700(tmp_path: Path) -> None:
    tighten_tree(tmp_path / "new" / "data")
    assert mode(tmp_path / "new" / "data") == 0o700


def test_credentials_stay_0600_when_the_file_existed(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    path.write_text(json.dumps({"demoKey": "x"}))
    os.chmod(path, 0o644)

    class Created:
        operator_key = "fb_secret"
        demo_key = None

    save_credentials(tmp_path, Created())
    assert mode(path) == 0o600
    assert json.loads(path.read_text())["operatorKey"] == "fb_secret"


def test_the_spool_dir_is_0700(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    segment = spool.append(b"{}\n")
    assert mode(tmp_path / "spool") == 0o700
    assert mode(segment.path) == 0o600
    spool.release_all()
