"""Fixtures shared by the whole suite.

Store-touching tests run on SQLite always and, when FIREBOX_TEST_DATABASE_URL
is set (CI), on PostgreSQL too: each test gets its own freshly migrated
schema there. A variable that is set but whose server does not answer fails
the run at start, so CI cannot go green by skipping.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from firebox.app import create_app
from firebox.clock import FakeClock
from firebox.server import initialize
from firebox.services import Services, build_services
from firebox.settings import Settings
from firebox.store import migrate
from firebox.store.database import Database, normalize_url

OPERATOR_KEY = "fb_test_operator_key_0123456789abcdef"
PG_URL = os.environ.get("FIREBOX_TEST_DATABASE_URL") or None
REDIS_URL = os.environ.get("FIREBOX_TEST_REDIS_URL") or None


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to run at all if a configured service is unreachable."""
    if PG_URL:
        try:
            engine = create_engine(normalize_url(PG_URL))
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            engine.dispose()
        except Exception as exc:
            raise pytest.UsageError(
                f"FIREBOX_TEST_DATABASE_URL is set but PostgreSQL is unreachable: {exc}"
            ) from exc
    if REDIS_URL:
        try:
            redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
        except Exception as exc:
            raise pytest.UsageError(
                f"FIREBOX_TEST_REDIS_URL is set but Redis is unreachable: {exc}"
            ) from exc


BACKENDS = (
    ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)] if PG_URL else ["sqlite"]
)


def make_database(backend: str, tmp_path: Path) -> tuple[Database, Callable[[], None]]:
    """A migrated, empty database of ``backend`` and a function that drops it."""
    if backend == "sqlite":
        db = Database(f"sqlite:///{tmp_path / f'firebox-{uuid.uuid4().hex[:6]}.db'}")
        migrate.upgrade(db)
        return db, db.dispose

    assert PG_URL is not None
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalize_url(PG_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    db = Database(PG_URL, connect_args={"options": f"-csearch_path={schema}"})
    migrate.upgrade(db)

    def drop() -> None:
        db.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    return db, drop


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database(backend: str, tmp_path: Path) -> Iterator[Database]:
    db, drop = make_database(backend, tmp_path)
    yield db
    drop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        admin_key=OPERATOR_KEY,
        access_log=False,
        bootstrap_demo=True,
        warm_local_engines=False,  # tests that need a local engine load it on first use
    )


@pytest.fixture
def services(settings: Settings, database: Database, clock: FakeClock) -> Iterator[Services]:
    built = build_services(settings, db=database, clock=clock)
    initialize(built)
    yield built
    built.revocations.close()


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def operator_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {OPERATOR_KEY}"}
