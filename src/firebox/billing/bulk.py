"""Bulk reads and writes of the ledger, the fastest way each database offers.

The ledger writes thousands of rows per transaction. On PostgreSQL a
multi-row ``INSERT … VALUES`` of that size spends most of its time in the
driver rewriting the query text, so rows go in with a binary ``COPY`` (one
stream, no per-row SQL, no text parsing on the server), id lookups bind one
array (``= ANY(:ids)``) instead of thousands of parameters, and the balance
updates are one ``UPDATE … FROM unnest(arrays)`` per table instead of one
statement per row. SQLite takes plain ``executemany``.

These writes carry no ``ON CONFLICT`` clause on purpose: the ledger has
already dropped every known request id under the accounts' locks, so a
conflict here means a concurrent writer under another account used the same
id. It fails the whole transaction (``ledger_conflict``, retryable: the retry
finds the id and skips it) rather than leave an allocation that assumed the
row was written.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Integer,
    String,
    Table,
    TypeDecorator,
    any_,
    bindparam,
    select,
    text,
    update,
)
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


def _pg_type(column: Column[Any]) -> str:
    """The PostgreSQL type name of ``column`` for a binary ``COPY``."""
    kind = column.type
    if isinstance(kind, TypeDecorator):
        kind = kind.impl_instance
    if isinstance(kind, BigInteger):
        return "int8"
    if isinstance(kind, Integer):
        return "int4"
    if isinstance(kind, DateTime):
        return "timestamptz" if kind.timezone else "timestamp"
    if isinstance(kind, Boolean):
        return "bool"
    if isinstance(kind, String):
        return "text"
    raise TypeError(f"no binary COPY type for {column}")


def insert_all(
    session: Session,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    sqlite: bool,
) -> None:
    """Insert ``rows`` (tuples of ``columns``' values, in that order) into ``table``.

    Rows are plain tuples, not dicts: at thousands of rows per batch the
    per-row dict building and key lookups were a visible share of the batch.
    """
    if not rows:
        return
    try:
        if sqlite:
            session.execute(table.insert(), [dict(zip(columns, row, strict=True)) for row in rows])
            return
        raw = session.connection().connection.driver_connection
        assert raw is not None
        statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            copy.set_types([_pg_type(table.c[name]) for name in columns])
            write = copy.write_row
            for row in rows:
                write(row)
    except (IntegrityError, psycopg.errors.UniqueViolation) as exc:
        raise conflict() from exc


_GRANTS_PG = text(
    "UPDATE credit_grants AS g SET remaining_micros = g.remaining_micros - v.used "
    "FROM unnest(CAST(:ids AS text[]), CAST(:used AS bigint[])) AS v(id, used) "
    "WHERE g.id = v.id"
)
_BILLING_PG = text(
    "UPDATE billing_accounts AS b SET period = v.period, period_usage_micros = v.usage, "
    "credit_balance_micros = b.credit_balance_micros - v.applied, update_time = :now "
    "FROM unnest(CAST(:ids AS text[]), CAST(:periods AS text[]), CAST(:usages AS bigint[]), "
    "CAST(:applied AS bigint[])) AS v(id, period, usage, applied) "
    "WHERE b.account_id = v.id"
)


def draw_grants(
    session: Session, grants: Table, used: Sequence[tuple[str, int]], *, sqlite: bool
) -> None:
    """``remaining_micros -= n`` for each ``(grant id, n)``: relative, like every writer."""
    if not used:
        return
    if not sqlite:
        ids, amounts = zip(*used, strict=True)
        session.execute(_GRANTS_PG, {"ids": list(ids), "used": list(amounts)})
        return
    c = grants.c
    session.execute(
        update(grants)
        .where(c.id == bindparam("grant_key"))
        .values(remaining_micros=c.remaining_micros - bindparam("used")),
        [{"grant_key": g, "used": n} for g, n in used],
    )


def move_accounts(
    session: Session,
    billing: Table,
    changes: Sequence[tuple[str, str, int, int]],
    now: datetime,
    *,
    sqlite: bool,
) -> None:
    """Per ``(account, period, period usage, credit applied)``: set the period and its
    usage, and ``credit_balance_micros -= applied`` (relative, like every balance writer)."""
    if not changes:
        return
    if not sqlite:
        ids, periods, usages, applied = zip(*changes, strict=True)
        values = {"periods": list(periods), "usages": list(usages), "applied": list(applied)}
        session.execute(_BILLING_PG, {"ids": list(ids), **values, "now": now})
        return
    c = billing.c
    session.execute(
        update(billing)
        .where(c.account_id == bindparam("account_key"))
        .values(
            period=bindparam("new_period"),
            period_usage_micros=bindparam("new_usage"),
            credit_balance_micros=c.credit_balance_micros - bindparam("applied"),
            update_time=bindparam("now"),
        ),
        [
            {"account_key": a, "new_period": p, "new_usage": u, "applied": n, "now": now}
            for a, p, u, n in changes
        ],
    )
