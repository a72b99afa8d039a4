"""Queries of invoices, their lines and their payments; each takes the caller's session.

Row locks (``FOR UPDATE``) are taken on PostgreSQL; SQLite ignores the
clause, so a writing transaction there starts with ``begin_write`` (SQLite's
one write lock, taken up front as the ledger does: a deferred transaction
that read first could not write once another writer committed).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, exists, func, select, update
from sqlalchemy.orm import Session

from firebox.accounts.models import AccountRow
from firebox.billing.models import (
    BillingAccountRow,
    InvoiceLineRow,
    InvoiceRow,
    PaymentMethodRow,
    UsageRecordRow,
)

# The quantities an invoice line sums, in the order of ``InvoiceLineRow``'s columns.
LINE_SUMS = (
    "prompt_tokens",
    "cached_prompt_tokens",
    "completion_tokens",
    "images",
    "steps",
    "gpu_milliseconds",
    "training_tokens",
    "amount_micros",
    "credit_applied_micros",
)


def begin_write(session: Session) -> None:
    """Take SQLite's write lock now (``BEGIN IMMEDIATE``); nothing on PostgreSQL."""
    if session.get_bind().dialect.name == "sqlite":
        session.connection().exec_driver_sql("BEGIN IMMEDIATE")


def account_exists(session: Session, account_id: str) -> bool:
    return session.scalar(select(AccountRow.id).where(AccountRow.id == account_id)) is not None


def get_invoice(session: Session, account_id: str, invoice_id: str) -> InvoiceRow | None:
    return session.scalar(
        select(InvoiceRow).where(InvoiceRow.id == invoice_id, InvoiceRow.account_id == account_id)
    )


def lock_invoice(session: Session, invoice_id: str) -> InvoiceRow | None:
    """The invoice, row-locked until the transaction ends (one payer at a time)."""
    return session.scalar(
        select(InvoiceRow)
        .where(InvoiceRow.id == invoice_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def invoice_for_period(session: Session, account_id: str, period: str) -> InvoiceRow | None:
    return session.scalar(
        select(InvoiceRow).where(InvoiceRow.account_id == account_id, InvoiceRow.period == period)
    )


def list_invoices(
    session: Session, account_id: str, *, before: str | None, limit: int
) -> Sequence[InvoiceRow]:
    """Newest period first: ids embed the period, so id order is period order."""
    query = (
        select(InvoiceRow)
        .where(InvoiceRow.account_id == account_id)
        .order_by(InvoiceRow.id.desc())
        .limit(limit)
    )
    if before is not None:
        query = query.where(InvoiceRow.id < before)
    return session.scalars(query).all()


def count_invoices(session: Session, account_id: str) -> int:
    query = select(func.count()).select_from(InvoiceRow).where(InvoiceRow.account_id == account_id)
    return session.scalar(query) or 0


def lines_of(session: Session, invoice_ids: Sequence[str]) -> dict[str, list[InvoiceLineRow]]:
    """The lines of each invoice, in a stable order (model, kind)."""
    found: dict[str, list[InvoiceLineRow]] = {i: [] for i in invoice_ids}
    if not invoice_ids:
        return found
    query = (
        select(InvoiceLineRow)
        .where(InvoiceLineRow.invoice_id.in_(invoice_ids))
        .order_by(InvoiceLineRow.invoice_id, InvoiceLineRow.model, InvoiceLineRow.kind)
    )
    for line in session.scalars(query):
        found[line.invoice_id].append(line)
    return found


def usage_lines(session: Session, account_id: str, period: str) -> list[dict[str, Any]]:
    """The account's usage in ``period`` summed per (model, kind): one dict per line."""
    sums = [func.coalesce(func.sum(getattr(UsageRecordRow, c)), 0).label(c) for c in LINE_SUMS]
    query = (
        select(UsageRecordRow.model, UsageRecordRow.kind, func.count().label("requests"), *sums)
        .where(UsageRecordRow.account_id == account_id, UsageRecordRow.period == period)
        .group_by(UsageRecordRow.model, UsageRecordRow.kind)
        .order_by(UsageRecordRow.model, UsageRecordRow.kind)
    )
    # PostgreSQL sums BIGINTs as NUMERIC: bring every quantity back to int.
    return [
        {k: v if k in ("model", "kind") else int(v) for k, v in row._mapping.items()}
        for row in session.execute(query)
    ]


def record_counts(session: Session, period: str) -> dict[str, int]:
    """How many usage records each account has in ``period``."""
    query = (
        select(UsageRecordRow.account_id, func.count())
        .where(UsageRecordRow.period == period)
        .group_by(UsageRecordRow.account_id)
    )
    return {str(a): int(n) for a, n in session.execute(query)}


def invoiced_counts(session: Session, period: str) -> dict[str, int]:
    """How many usage records each account's invoice for ``period`` covers."""
    query = (
        select(InvoiceRow.account_id, func.coalesce(func.sum(InvoiceLineRow.requests), 0))
        .outerjoin(InvoiceLineRow, InvoiceLineRow.invoice_id == InvoiceRow.id)
        .where(InvoiceRow.period == period)
        .group_by(InvoiceRow.account_id)
    )
    return {str(a): int(n) for a, n in session.execute(query)}


def uninvoiced_periods(session: Session, before: str) -> list[str]:
    """Periods earlier than ``before`` where some account's usage has no invoice yet."""
    invoiced = exists().where(
        and_(
            InvoiceRow.account_id == UsageRecordRow.account_id,
            InvoiceRow.period == UsageRecordRow.period,
        )
    )
    query = (
        select(UsageRecordRow.period)
        .where(UsageRecordRow.period < before, ~invoiced)
        .distinct()
        .order_by(UsageRecordRow.period)
    )
    return [str(p) for p in session.scalars(query)]


def due_payment_ids(session: Session, now: datetime, limit: int) -> list[str]:
    """Open or failed invoices whose next automatic payment attempt is due, oldest first."""
    query = (
        select(InvoiceRow.id)
        .where(
            InvoiceRow.state.in_(("OPEN", "PAYMENT_FAILED")),
            InvoiceRow.next_attempt_time.is_not(None),
            InvoiceRow.next_attempt_time <= now,
        )
        .order_by(InvoiceRow.next_attempt_time, InvoiceRow.id)
        .limit(limit)
    )
    return [str(i) for i in session.scalars(query)]


def active_payment_method(session: Session, account_id: str) -> PaymentMethodRow | None:
    """The account's newest payment method that was not deleted."""
    return session.scalar(
        select(PaymentMethodRow)
        .where(PaymentMethodRow.account_id == account_id, PaymentMethodRow.delete_time.is_(None))
        .order_by(PaymentMethodRow.create_time.desc(), PaymentMethodRow.id.desc())
        .limit(1)
    )


def add_failed_invoices(session: Session, account_id: str, delta: int, now: datetime) -> None:
    """Move the account's count of failed invoices by ``delta`` (never below zero)."""
    count = BillingAccountRow.failed_invoices + delta
    session.execute(
        update(BillingAccountRow)
        .where(BillingAccountRow.account_id == account_id)
        .values(
            failed_invoices=case((count < 0, 0), else_=count),
            update_time=now,
        )
    )
