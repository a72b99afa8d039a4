"""A database that cannot be reached, or a pool with nothing free, is a 503 to retry.

Before, both surfaced as a 500 (psycopg's "too many clients already" under a
burst on four replicas), which told the client nothing and closed its
connection.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from firebox.errors import ServiceUnavailable
from firebox.store.database import Database, unreachable
from tests.conftest import PG_URL


def test_an_unreachable_database_is_a_503_with_retry_after() -> None:
    db = Database("postgresql://postgres@127.0.0.1:1/test", pool_timeout_s=5)
    try:
        with pytest.raises(ServiceUnavailable) as caught, db.transaction() as session:
            session.execute(text("SELECT 1"))
    finally:
        db.dispose()
    assert caught.value.code == "database_unavailable"
    assert caught.value.http_status == 503
    assert caught.value.headers == {"Retry-After": "1"}


@pytest.mark.postgres
@pytest.mark.skipif(not PG_URL, reason="FIREBOX_TEST_DATABASE_URL is not set")
def test_a_pool_with_no_free_connection_is_a_503() -> None:
    assert PG_URL is not None
    db = Database(PG_URL, pool_size=1, max_overflow=0, pool_timeout_s=0.2)
    holding = threading.Event()
    release = threading.Event()

    def hold_the_only_connection() -> None:
        with db.transaction() as session:
            session.execute(text("SELECT 1"))
            holding.set()
            release.wait(60)

    holder = threading.Thread(target=hold_the_only_connection)
    holder.start()
    try:
        assert holding.wait(60)
        with pytest.raises(ServiceUnavailable) as caught, db.transaction() as session:
            session.execute(text("SELECT 1"))
        assert caught.value.code == "database_unavailable"
    finally:
        release.set()
        holder.join(60)
    with db.transaction() as session:  # the connection came back: served again
        assert session.execute(text("SELECT 1")).scalar() == 1
    db.dispose()


class _Orig(Exception):
    def __init__(self, message: str, sqlstate: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "expected"),
    [
        ("08006", True),  # connection failure
        ("53300", True),  # too_many_connections
        ("57P01", True),  # admin shutdown
        ("40001", False),  # serialization failure: the caller retries the statement
        ("55P03", False),  # lock not available
    ],
)
def test_only_connection_failures_count_as_unreachable(sqlstate: str, expected: bool) -> None:
    exc = OperationalError("SELECT 1", {}, _Orig("boom", sqlstate))
    assert unreachable(exc) is expected


def test_a_locked_sqlite_database_is_not_unreachable() -> None:
    exc = OperationalError("UPDATE x", {}, _Orig("database is locked", None))
    assert unreachable(exc) is False
