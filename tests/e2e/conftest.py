"""Servers for end-to-end tests: real ``firebox serve`` processes on loopback."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from firebox.store.database import normalize_url
from tests.conftest import OPERATOR_KEY, PG_URL
from tests.support.server import RunningServer, start_server


def pg_schema_url() -> tuple[str, str]:
    """A fresh, empty schema on the test PostgreSQL and a URL whose search_path is it."""
    assert PG_URL is not None
    schema = f"e2e_{uuid.uuid4().hex[:10]}"
    engine = create_engine(normalize_url(PG_URL), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    sep = "&" if "?" in PG_URL else "?"
    return schema, f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


def drop_schema(schema: str) -> None:
    assert PG_URL is not None
    engine = create_engine(normalize_url(PG_URL), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


E2E_BACKENDS = (
    ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)] if PG_URL else ["sqlite"]
)


@pytest.fixture(scope="module", params=E2E_BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """One server per test module and database backend."""
    data_dir: Path = tmp_path_factory.mktemp("firebox")
    env = {"FIREBOX_ADMIN_KEY": OPERATOR_KEY}
    schema = None
    if request.param == "postgresql":
        schema, env["FIREBOX_DATABASE_URL"] = pg_schema_url()
    running = start_server(data_dir, env=env)
    yield running
    running.stop()
    if schema:
        drop_schema(schema)


@dataclass
class KillTarget:
    """A server's data dir, environment and database, for tests that kill and restart it."""

    data_dir: Path
    env: dict[str, str]
    database_url: str


@contextmanager
def upstream_kill_target(
    backend: str, tmp_path: Path, upstream_url: str, upstream_model: str, env: dict[str, str]
) -> Iterator[KillTarget]:
    """One 8B model bound to the fake upstream, on ``backend``'s database (dropped after)."""
    data_dir = tmp_path / "data"
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(
        f"""\
[[models]]
id = "llama-8b"
kind = "HF_BASE_MODEL"
parameterCount = 8_000_000_000
contextLength = 8192
public = true
engine = {{ type = "upstream", urls = ["{upstream_url}"], upstreamModel = "{upstream_model}", \
timeoutS = 60 }}
"""
    )
    env = {
        "FIREBOX_ADMIN_KEY": OPERATOR_KEY,
        "FIREBOX_CATALOG_FILE": str(catalog),
        "FIREBOX_ACCESS_LOG": "false",
        **env,
    }
    if backend != "postgresql":
        yield KillTarget(data_dir, env, f"sqlite:///{data_dir / 'firebox.db'}")
        return
    schema, url = pg_schema_url()
    env["FIREBOX_DATABASE_URL"] = url
    try:
        yield KillTarget(data_dir, env, url)
    finally:
        drop_schema(schema)
