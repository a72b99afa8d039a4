"""Fixtures of the billing tests: a migrated database per backend, and account rows.

Other billing test modules reuse these: ``billing_db`` (a ``Database`` at the
head migration, SQLite and — when FIREBOX_TEST_DATABASE_URL is set —
PostgreSQL), ``make_account`` (an account row plus its billing row, written
directly), ``add_grant`` (a credit grant with its GRANT entry) and ``usage``
(a ``UsageRecord`` with defaults).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from firebox.accounts.models import AccountRow
from firebox.billing.models import BillingAccountRow, CreditEntryRow, CreditGrantRow
from firebox.inference.metering import UsageRecord
from firebox.store.database import Database

T0 = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)

MakeAccount = Callable[..., str]
AddGrant = Callable[..., str]


@pytest.fixture
def billing_db(database: Database) -> Database:
    """A database migrated to head (one per backend, see tests/conftest.py)."""
    return database


def create_account(
    db: Database,
    account_id: str,
    *,
    billing: bool = True,
    period: str = "2026-01",
    when: datetime = T0,
    **billing_fields: Any,
) -> str:
    """Write an account row and (unless ``billing=False``) its billing row."""
    with db.transaction() as session:
        session.add(
            AccountRow(
                id=account_id,
                display_name=account_id,
                email="",
                plan="DEVELOPER",
                state="READY",
                suspend_state="UNSUSPENDED",
                create_time=when,
                update_time=when,
            )
        )
        if billing:
            session.flush()
            values: dict[str, Any] = {
                "period_usage_micros": 0,
                "credit_balance_micros": 0,
                "historical_spend_micros": 0,
                "tier": 1,
                "unlimited": False,
                "deployment_discount_bps": 0,
                "failed_invoices": 0,
            }
            values.update(billing_fields)
            session.add(
                BillingAccountRow(
                    account_id=account_id,
                    period=period,
                    create_time=when,
                    update_time=when,
                    **values,
                )
            )
    return account_id


def add_credit_grant(
    db: Database,
    account_id: str,
    grant_id: str,
    micros: int,
    *,
    expire_time: datetime | None = None,
    create_time: datetime = T0,
    source: str = "OPERATOR",
) -> str:
    """A grant of ``micros`` with its GRANT entry, raising the account's balance."""
    with db.transaction() as session:
        session.add(
            CreditGrantRow(
                id=grant_id,
                account_id=account_id,
                source=source,
                amount_micros=micros,
                remaining_micros=micros,
                reason="test",
                reference=f"test:{grant_id}",
                expire_time=expire_time,
                create_time=create_time,
            )
        )
        session.flush()
        session.add(
            CreditEntryRow(
                account_id=account_id,
                grant_id=grant_id,
                kind="GRANT",
                amount_micros=micros,
                reference=f"grant:{grant_id}",
                time=create_time,
            )
        )
        row = session.get(BillingAccountRow, account_id)
        assert row is not None
        row.credit_balance_micros += micros
    return grant_id


@pytest.fixture
def make_account(billing_db: Database) -> MakeAccount:
    def make(account_id: str = "acme", **kwargs: Any) -> str:
        return create_account(billing_db, account_id, **kwargs)

    return make


@pytest.fixture
def add_grant(billing_db: Database) -> AddGrant:
    def add(account_id: str, grant_id: str, micros: int, **kwargs: Any) -> str:
        return add_credit_grant(billing_db, account_id, grant_id, micros, **kwargs)

    return add


_ids = itertools.count()


def usage(**fields: Any) -> UsageRecord:
    """A chat usage record on a small dense model; any field can be overridden."""
    values: dict[str, Any] = {
        "request_id": f"req-{next(_ids)}",
        "account_id": "acme",
        "model": "accounts/fireworks/models/small",
        "base_model": "accounts/fireworks/models/small",
        "kind": "chat",
        "time": T0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "price_class": "TEXT_DENSE_UP_TO_16B",
    }
    values.update(fields)
    return UsageRecord(**values)
