"""Queries of the account side of billing: money rows, grants, payment methods, usage.

Every function takes the caller's session, so the service decides what runs
in one transaction. ``lock_billing`` is the one lock of an account's money:
every writer (the ledger, purchases, grants, expiry, invoices) takes it
first, with ``SELECT … FOR UPDATE`` on PostgreSQL (SQLite serializes
writers by itself and ignores the clause).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, func, literal_column, select, update
from sqlalchemy.orm import Session

from firebox.accounts.models import AccountRow
from firebox.billing.models import (
    BillingAccountRow,
    CreditEntryRow,
    CreditGrantRow,
    PaymentMethodRow,
    PaymentRow,
    UsageRecordRow,
)

GroupBy = Literal["model", "day", "kind", "deployment"]


def get_account(session: Session, account_id: str) -> AccountRow | None:
    return session.get(AccountRow, account_id)


def get_billing(session: Session, account_id: str) -> BillingAccountRow | None:
    return session.get(BillingAccountRow, account_id)


def lock_billing(session: Session, account_id: str) -> BillingAccountRow | None:
    """The account's billing row, locked until the transaction ends, read fresh."""
    return session.scalar(
        select(BillingAccountRow)
        .where(BillingAccountRow.account_id == account_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def add_credit(session: Session, account_id: str, delta: int, now: datetime) -> None:
    """Move the cached credit balance by ``delta`` in one statement (``x = x + delta``)."""
    session.execute(
        update(BillingAccountRow)
        .where(BillingAccountRow.account_id == account_id)
        .values(
            credit_balance_micros=BillingAccountRow.credit_balance_micros + delta,
            update_time=now,
        )
    )


def grant_by_reference(session: Session, reference: str) -> CreditGrantRow | None:
    return session.scalar(select(CreditGrantRow).where(CreditGrantRow.reference == reference))


def lock_grant(session: Session, grant_id: str) -> CreditGrantRow | None:
    return session.scalar(
        select(CreditGrantRow)
        .where(CreditGrantRow.id == grant_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def list_grants(session: Session, account_id: str) -> Sequence[CreditGrantRow]:
    """The account's grants, newest first."""
    return session.scalars(
        select(CreditGrantRow)
        .where(CreditGrantRow.account_id == account_id)
        .order_by(CreditGrantRow.create_time.desc(), CreditGrantRow.id.desc())
    ).all()


def expired_grants(session: Session, now: datetime, limit: int) -> list[tuple[str, str]]:
    """(grant id, account id) of grants past their expiry that still hold credit."""
    rows = session.execute(
        select(CreditGrantRow.id, CreditGrantRow.account_id)
        .where(
            CreditGrantRow.expire_time.is_not(None),
            CreditGrantRow.expire_time <= now,
            CreditGrantRow.remaining_micros > 0,
        )
        .order_by(CreditGrantRow.account_id, CreditGrantRow.id)
        .limit(limit)
    ).all()
    return [(str(grant_id), str(account_id)) for grant_id, account_id in rows]


def credit_entry_sum(session: Session, account_id: str) -> int:
    """The sum of the account's credit entries: what its cached balance must equal."""
    total = session.scalar(
        select(func.coalesce(func.sum(CreditEntryRow.amount_micros), 0)).where(
            CreditEntryRow.account_id == account_id
        )
    )
    return int(total or 0)


def active_payment_methods(session: Session, account_id: str) -> Sequence[PaymentMethodRow]:
    """The account's payment methods on file, newest first (the first is the one charged)."""
    return session.scalars(
        select(PaymentMethodRow)
        .where(PaymentMethodRow.account_id == account_id, PaymentMethodRow.delete_time.is_(None))
        .order_by(PaymentMethodRow.create_time.desc(), PaymentMethodRow.id.desc())
    ).all()


def get_payment_method(
    session: Session, account_id: str, method_id: str
) -> PaymentMethodRow | None:
    """An active payment method of the account (deleted ones are gone for callers)."""
    return session.scalar(
        select(PaymentMethodRow).where(
            PaymentMethodRow.id == method_id,
            PaymentMethodRow.account_id == account_id,
            PaymentMethodRow.delete_time.is_(None),
        )
    )


def payment_by_key(session: Session, idempotency_key: str) -> PaymentRow | None:
    return session.scalar(select(PaymentRow).where(PaymentRow.idempotency_key == idempotency_key))


def _day(column: Any, dialect: str) -> ColumnElement[Any]:
    """The UTC calendar day ("YYYY-MM-DD") of a timestamp column."""
    if dialect == "sqlite":
        # UTCDateTime stores UTC as "YYYY-MM-DD HH:MM:SS.ffffff" on SQLite.
        return func.substr(column, 1, 10)
    # Constants as literals, not bound parameters: PostgreSQL must see the GROUP BY
    # expression as identical to the selected one.
    utc: ColumnElement[str] = literal_column("'UTC'")
    day: ColumnElement[str] = literal_column("'YYYY-MM-DD'")
    return func.to_char(func.timezone(utc, column), day)


def usage_groups(
    session: Session, account_id: str, start: datetime, end: datetime, group_by: GroupBy
) -> list[tuple[str, int, int, int, int, int, int, int]]:
    """Sums of usage records in [start, end) per group, ordered by group key.

    Each row: (key, requests, prompt_tokens, cached_prompt_tokens,
    completion_tokens, amount_micros, credit_applied_micros, gpu_milliseconds).
    By deployment, usage on no deployment (serverless) has the key "".
    """
    r = UsageRecordRow
    key: Any
    if group_by == "model":
        key = r.model
    elif group_by == "kind":
        key = r.kind
    elif group_by == "deployment":
        key = func.coalesce(r.deployment, literal_column("''"))
    else:
        key = _day(r.time, session.get_bind().dialect.name)
    labelled = key.label("key")
    query = (
        select(
            labelled,
            func.count(),
            func.coalesce(func.sum(r.prompt_tokens), 0),
            func.coalesce(func.sum(r.cached_prompt_tokens), 0),
            func.coalesce(func.sum(r.completion_tokens), 0),
            func.coalesce(func.sum(r.amount_micros), 0),
            func.coalesce(func.sum(r.credit_applied_micros), 0),
            func.coalesce(func.sum(r.gpu_milliseconds), 0),
        )
        .where(r.account_id == account_id, r.time >= start, r.time < end)
        .group_by(labelled)
        .order_by(labelled)
    )
    return [
        (
            str(row[0]),
            int(row[1]),
            int(row[2]),
            int(row[3]),
            int(row[4]),
            int(row[5]),
            int(row[6]),
            int(row[7]),
        )
        for row in session.execute(query).all()
    ]
