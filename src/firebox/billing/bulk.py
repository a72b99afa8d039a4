"""Bulk reads and writes of the ledger, the fastest way each database offers.

The ledger writes thousands of rows per transaction. On PostgreSQL a
multi-row ``INSERT … VALUES`` of that size spends most of its time in the
driver rewriting the query text, so rows go in with ``COPY`` (one stream,
no per-row SQL) and id lookups bind one array (``= ANY(:ids)``) instead of
thousands of parameters. SQLite takes plain ``executemany``.

These writes carry no ``ON CONFLICT`` clause on purpose: the ledger has
already dropped every known request id under the accounts' locks, so a
conflict here means a concurrent writer under another account used the same
id. It fails the whole transaction (``ledger_conflict``, retryable: the retry
finds the id and skips it) rather than leave an allocation that assumed the
row was written.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from sqlalchemy import Column, String, Table, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from firebox.errors import ServiceUnavailable

CHUNK = 900  # ids per IN (...) on SQLite


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def existing(
    session: Session, column: Column[str], ids: Sequence[str], *, sqlite: bool
) -> set[str]:
    """Which of ``ids`` are present in ``column``."""
    if not ids:
        return set()
    if not sqlite:
        query = select(column).where(column == any_(bindparam("ids", type_=ARRAY(String))))
        return set(session.scalars(query, {"ids": list(ids)}))
    found: set[str] = set()
    for chunk in _chunks(ids):
        found.update(session.scalars(select(column).where(column.in_(chunk))))
    return found


def conflict() -> ServiceUnavailable:
    return ServiceUnavailable(
        "A usage record was written concurrently by another writer; the batch was rolled "
        "back and can be retried.",
        code="ledger_conflict",
    )


def insert_all(session: Session, table: Table, rows: list[dict[str, Any]], *, sqlite: bool) -> None:
    """Insert ``rows`` (dicts with the same keys) into ``table`` in this transaction."""
    if not rows:
        return
    try:
        if sqlite:
            session.execute(table.insert(), rows)
            return
        names = list(rows[0])
        raw = session.connection().connection.driver_connection
        assert raw is not None
        statement = f"COPY {table.name} ({', '.join(names)}) FROM STDIN"
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row([row[name] for name in names])
    except (IntegrityError, psycopg.errors.UniqueViolation) as exc:
        raise conflict() from exc
