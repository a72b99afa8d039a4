"""Queries of the limits slice's own tables: ``quotas``, ``account_limits``, ``audit_log``.

Every function runs inside the caller's session (its transaction), so a
quota claim commits or rolls back with the resource it pays for.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from firebox.accounts.models import AccountRow
from firebox.limits.models import AccountLimitsRow, AuditLogRow, QuotaRow
from firebox.store.locking import insert_missing


def get_plan(session: Session, account_id: str) -> str | None:
    """The account's plan name, or ``None`` when there is no such account."""
    return session.scalar(select(AccountRow.plan).where(AccountRow.id == account_id))


def get_limits(session: Session, account_id: str) -> AccountLimitsRow | None:
    return session.get(AccountLimitsRow, account_id)


def limits_for_update(session: Session, account_id: str, now: datetime) -> AccountLimitsRow:
    """The account's limits row, locked; created empty (every limit the plan's) when missing.

    Upserted like ``quota_for_update``: many requests writing an account's
    limits for the first time at once all succeed, one after the other.
    """
    insert_missing(session, AccountLimitsRow, {"account_id": account_id, "update_time": now})
    row = session.get(AccountLimitsRow, account_id, with_for_update=True, populate_existing=True)
    assert row is not None  # inserted above, and an account's rows go only with it
    return row


def list_quotas(session: Session, account_id: str) -> Sequence[QuotaRow]:
    return session.scalars(select(QuotaRow).where(QuotaRow.account_id == account_id)).all()


def get_quota(session: Session, account_id: str, quota_id: str) -> QuotaRow | None:
    return session.get(QuotaRow, (account_id, quota_id))


def quota_for_update(session: Session, account_id: str, quota_id: str, now: datetime) -> QuotaRow:
    """The quota row, locked for this transaction; created (value NULL, usage 0) if missing.

    ``INSERT … ON CONFLICT DO NOTHING`` then ``SELECT … FOR UPDATE``: two
    transactions creating the row at once both succeed, and then queue on
    its lock. (SQLite ignores ``FOR UPDATE``; its single writer serializes.)
    """
    values = {"account_id": account_id, "quota_id": quota_id, "usage": 0, "update_time": now}
    insert_missing(session, QuotaRow, values)
    query = (
        select(QuotaRow)
        .where(QuotaRow.account_id == account_id, QuotaRow.quota_id == quota_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return session.scalars(query).one()


def add_audit(
    session: Session, account_id: str, now: datetime, actor: str, action: str, detail: str
) -> None:
    session.add(
        AuditLogRow(account_id=account_id, time=now, actor=actor, action=action, detail=detail)
    )
