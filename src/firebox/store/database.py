"""The database handle: one engine and session factory per process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from firebox.errors import Aborted


def normalize_url(url: str) -> str:
    """Map the PostgreSQL spellings we accept onto the psycopg 3 driver.

    The gateway uses a synchronous engine (control-plane handlers run in a
    thread pool; the inference hot path never waits on SQL), so an
    ``asyncpg`` URL is served by psycopg, which speaks the same protocol.
    """
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres", "postgresql+asyncpg", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class Database:
    """Owns the engine; hands out sessions and transactions."""

    def __init__(self, url: str, *, connect_args: dict[str, Any] | None = None) -> None:
        self.url = normalize_url(url)
        args: dict[str, Any] = dict(connect_args or {})
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite:
            args.setdefault("check_same_thread", False)
            args.setdefault("timeout", 10)
        else:
            kwargs.update(pool_size=10, max_overflow=20)
        self.engine: Engine = create_engine(self.url, connect_args=args, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session inside one transaction: committed on success, rolled back on error.

        A write that finds its row changed or gone under it (another request
        deleted it first: ``StaleDataError``) is a 409 the caller can retry,
        never a 500. Services avoid it by locking what they change
        (``firebox.store.locking``); this is the net under every route.
        """
        try:
            with self._sessions() as session, session.begin():
                yield session
        except StaleDataError:
            raise Aborted(
                "Another request changed or deleted this resource at the same time; "
                "read it again and retry.",
            ) from None

    def ping(self) -> None:
        """Raise if the database cannot answer a trivial query."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
