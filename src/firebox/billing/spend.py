"""An account's money position (``SpendState``) and its effective spend limit.

SPEC §3: the monthly spend limit is the usage tier's (or the operator's
custom one), lowered by the account's own limit; an operator's "unlimited"
removes it; while an invoice payment has failed it is $0. Usage counts
against it credits included. The tier is the stored one or the one that
historical spend qualifies for, whichever is higher (tiers never fall).

The ledger uses ``effective_limit_micros`` to notice a batch crossing the
limit, and the limits slice reads ``SpendReader.spend_state`` (through the
billing service) to admit requests.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import exists, select

from firebox.billing.models import BillingAccountRow, PaymentMethodRow
from firebox.billing.price_book import PriceBook
from firebox.billing.pricing import period_of
from firebox.clock import Clock
from firebox.money_state import SpendState
from firebox.store.database import Database


def effective_tier(book: PriceBook, row: BillingAccountRow) -> int:
    """The stored tier, or the one historical spend qualifies for if higher."""
    return max(int(row.tier or 1), book.tier_for(int(row.historical_spend_micros or 0)))


def effective_limit_micros(book: PriceBook, row: BillingAccountRow) -> int | None:
    """The monthly spend limit in force for ``row``'s account; ``None`` = unlimited."""
    if row.unlimited:
        return None
    if (row.failed_invoices or 0) > 0:
        return 0
    limit = row.custom_spend_limit_micros
    if limit is None:
        limit = book.tier_limit_micros(effective_tier(book, row))
    own = row.account_spend_limit_micros
    return limit if own is None else min(limit, own)


def usage_in(row: BillingAccountRow, period: str) -> int:
    """The account's usage in ``period`` (0 when the row holds an older month)."""
    return int(row.period_usage_micros or 0) if row.period == period else 0


class SpendReader:
    """Reads ``SpendState`` from billing_accounts and payment_methods in one transaction."""

    def __init__(self, db: Database, clock: Clock, book: PriceBook | None = None) -> None:
        self._db = db
        self._clock = clock
        self._book = book or PriceBook.load()

    def spend_state(self, account_id: str, at: datetime | None = None) -> SpendState:
        """The money position now (or at ``at``); an account without a billing row has
        nothing: tier-1 limit, no usage, no credit."""
        period = period_of(at or self._clock.now())
        has_method = (
            exists()
            .where(PaymentMethodRow.account_id == account_id)
            .where(PaymentMethodRow.delete_time.is_(None))
        )
        with self._db.transaction() as session:
            found = session.execute(
                select(BillingAccountRow, has_method.label("has_method")).where(
                    BillingAccountRow.account_id == account_id
                )
            ).first()
            method_only = (
                bool(session.scalar(select(has_method))) if found is None else bool(found[1])
            )
        if found is None:
            return SpendState(
                account_id=account_id,
                period=period,
                period_usage_micros=0,
                spend_limit_micros=self._book.tier_limit_micros(1),
                credit_balance_micros=0,
                has_payment_method=method_only,
                failed_payments=False,
            )
        row: BillingAccountRow = found[0]
        return SpendState(
            account_id=account_id,
            period=period,
            period_usage_micros=usage_in(row, period),
            spend_limit_micros=effective_limit_micros(self._book, row),
            credit_balance_micros=int(row.credit_balance_micros or 0),
            has_payment_method=method_only,
            failed_payments=(row.failed_invoices or 0) > 0,
        )
