"""Row locks and first-write upserts that behave the same on PostgreSQL and SQLite.

Every read-check-write in a service (count the users, then add one; find
the deployed model, then delete it and release its quota) must hold a lock
from the read to the commit, or two concurrent requests both pass the check
(docs/invariants.md). The two stores lock differently:

* PostgreSQL locks rows: ``SELECT … FOR NO KEY UPDATE`` makes a second transaction
  wait at the same statement, and then read what the first one committed
  (a deleted row is simply gone).
* SQLite has one writer for the whole file, and pysqlite opens a transaction
  only at the first write, so reads before it see no lock at all. A no-op
  ``UPDATE`` of the same rows takes the writer lock right there (waiting on
  ``busy_timeout``), and every read after it sees the latest commit.

``lock_rows`` is that one statement for both; call it *before* reading the
rows it protects. ``insert_missing`` is ``INSERT … ON CONFLICT DO NOTHING``,
so the first write of a row that many requests create at once never fails
with a duplicate key.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import ColumnElement, Table, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from firebox.store.base import Base


def lock_rows(session: Session, entity: type[Base], *criteria: ColumnElement[bool]) -> None:
    """Lock the rows of ``entity``'s table matching ``criteria`` until the transaction ends.

    Rows that do not exist are not locked (on SQLite the whole database is),
    so lock a parent row that always exists (the account) to guard a count.
    """
    table = _table(entity)
    key = next(iter(table.primary_key.columns))
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(table).where(*criteria).values({key.name: key}))
    else:
        # NO KEY UPDATE: lockers queue on each other, while inserts of rows that
        # merely reference these (they take KEY SHARE) go on unblocked.
        session.execute(select(key).where(*criteria).with_for_update(key_share=True))


def insert_missing(session: Session, entity: type[Base], values: dict[str, Any]) -> None:
    """Insert the row unless one with its key exists; never a duplicate-key error."""
    table = _table(entity)
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(pg_insert(table).values(values).on_conflict_do_nothing())
    elif dialect == "sqlite":
        session.execute(sqlite_insert(table).values(values).on_conflict_do_nothing())
    else:  # pragma: no cover - the two supported stores are handled above
        keys = [c for c in table.primary_key.columns]
        found = session.execute(select(keys[0]).where(*(c == values[c.name] for c in keys))).first()
        if found is None:
            session.execute(insert(table).values(values))


def _table(entity: type[Base]) -> Table:
    return cast(Table, entity.__table__)
