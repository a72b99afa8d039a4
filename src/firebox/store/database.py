"""The database handle: one engine and session factory per process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from firebox.errors import Aborted, InvalidArgument, ServiceUnavailable
from firebox.private_files import private_file


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


def _private_sqlite_file(url: str) -> None:
    """Create the SQLite file 0600 before SQLite does (it would make it 0644).

    SQLite gives the ``-wal`` and ``-shm`` files the database file's mode; ones
    an older version left readable are tightened here too.
    """
    parsed = make_url(url)
    name = parsed.database
    if not name or name == ":memory:" or name.startswith("file:") or parsed.query.get("uri"):
        return
    path = Path(name)
    if not path.parent.is_dir():
        return  # SQLite reports the missing folder itself
    private_file(path)
    for suffix in ("-wal", "-shm", "-journal"):
        sidecar = path.with_name(path.name + suffix)
        if sidecar.exists():
            private_file(sidecar)


# SQLSTATE classes that mean "no connection to be had", not "this statement failed":
# 08 connection exception, 53300 too_many_connections, 57P01-03 server shutting down.
_UNREACHABLE_STATES = ("08", "53300", "57P01", "57P02", "57P03")


def unreachable(exc: OperationalError) -> bool:
    """Whether ``exc`` says the database cannot be reached (versus a statement's failure).

    A serialization failure or a lock timeout is an ``OperationalError`` too,
    and callers retry those; only a connection that cannot be had or was lost
    is the service being unavailable.
    """
    state = getattr(exc.orig, "sqlstate", None)
    if isinstance(state, str):
        return state.startswith(_UNREACHABLE_STATES)
    return bool(exc.connection_invalidated) or "connection" in str(exc.orig).lower()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class Database:
    """Owns the engine; hands out sessions and transactions."""

    def __init__(
        self,
        url: str,
        *,
        connect_args: dict[str, Any] | None = None,
        pool_size: int = 10,
        max_overflow: int = 20,
        pool_timeout_s: float = 30.0,
    ) -> None:
        self.url = normalize_url(url)
        args: dict[str, Any] = dict(connect_args or {})
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite:
            _private_sqlite_file(self.url)
            args.setdefault("check_same_thread", False)
            args.setdefault("timeout", 10)
        else:
            # Each replica may hold pool_size + max_overflow connections: the sum over
            # replicas must stay under PostgreSQL's max_connections (docs/operations.md).
            kwargs.update(
                pool_size=pool_size, max_overflow=max_overflow, pool_timeout=pool_timeout_s
            )
        self.engine: Engine = create_engine(self.url, connect_args=args, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session inside one transaction: committed on success, rolled back on error.

        A value the driver refuses (``DataError``: a NUL in PostgreSQL text, a
        number out of range) is the request's fault, so it becomes a 400 here,
        for every query, rather than a 500 from whichever one met it first.

        A write that finds its row changed or gone under it (another request
        deleted it first: ``StaleDataError``) is a 409 the caller can retry,
        never a 500. Services avoid it by locking what they change
        (``firebox.store.locking``); this is the net under every route.

        A database that cannot be reached, or a pool with no connection free
        within its timeout, is a 503 ``database_unavailable`` with
        ``Retry-After``: the request did not run and can be sent again.
        """
        try:
            with self._sessions() as session, session.begin():
                yield session
        except DataError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else ""
            raise InvalidArgument(
                "A value in the request cannot be stored"
                + (f" ({reason})" if reason else "")
                + "; check the characters, lengths and numbers you sent.",
                code="invalid_value",
            ) from exc
        except PoolTimeout as exc:
            raise _unavailable("every database connection is busy") from exc
        except OperationalError as exc:
            if not unreachable(exc):
                raise
            raise _unavailable("the database cannot be reached") from exc
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


def _unavailable(why: str) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"The request was not run: {why}. Retry in a moment.",
        code="database_unavailable",
        headers={"Retry-After": "1"},
    )
