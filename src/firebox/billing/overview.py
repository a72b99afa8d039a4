"""The billing overview of one account: tier, limits, usage, credit, cards, suspension.

It is what ``GET /v1/accounts/{a}/billing`` and ``firebox get billing``
show. The spend limit is the *effective* one (SPEC §3): the tier's, or the
operator's custom one, lowered by the account's own limit; ``None`` when the
operator made the account unlimited; $0 while an invoice payment has
failed. The account's own limit may be set above the tier's: it then has no
effect until the tier rises past it.

Month-to-date usage is the billing row's period usage only while that row
holds the current UTC month; a row last written in an older month means
nothing was used yet this month (the ledger rolls the period on the next
record).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from firebox.accounts.models import AccountRow
from firebox.billing.models import BillingAccountRow
from firebox.billing.payment_methods import PaymentMethod
from firebox.billing.price_book import PriceBook
from firebox.billing.pricing import period_of
from firebox.billing.spend import effective_limit_micros, effective_tier, usage_in


@dataclass(frozen=True, slots=True)
class BillingOverview:
    """An account's money position and settings, as of ``period``."""

    account_id: str
    tier: int | Literal["custom"]  # "custom" when the operator set a limit or unlimited
    usage_tier: int  # the 1-4 tier historical spend reached, custom or not
    spend_limit_micros: int | None  # effective monthly limit; None = unlimited
    tier_spend_limit_micros: int  # the usage tier's monthly limit
    custom_spend_limit_micros: int | None  # operator-set
    unlimited: bool  # operator-set
    account_spend_limit_micros: int | None  # the account's own
    month_to_date_usage_micros: int
    credit_balance_micros: int
    historical_spend_micros: int
    failed_invoices: int
    payment_methods: list[PaymentMethod]
    suspend_state: str  # UNSUSPENDED | SUSPENDED (accounts.suspend_state)
    period: str  # "YYYY-MM"
    period_start: datetime
    period_end: datetime  # exclusive: the first instant of the next month


def month_bounds(now: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar month containing ``now``: [first instant, first of next month)."""
    utc = now.astimezone(UTC)
    start = datetime(utc.year, utc.month, 1, tzinfo=UTC)
    end = datetime(utc.year + (utc.month == 12), utc.month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def build_overview(
    book: PriceBook,
    row: BillingAccountRow,
    account: AccountRow,
    methods: list[PaymentMethod],
    now: datetime,
) -> BillingOverview:
    period = period_of(now)
    start, end = month_bounds(now)
    usage_tier = effective_tier(book, row)
    custom = row.custom_spend_limit_micros is not None or bool(row.unlimited)
    return BillingOverview(
        account_id=row.account_id,
        tier="custom" if custom else usage_tier,
        usage_tier=usage_tier,
        spend_limit_micros=effective_limit_micros(book, row),
        tier_spend_limit_micros=book.tier_limit_micros(usage_tier),
        custom_spend_limit_micros=row.custom_spend_limit_micros,
        unlimited=bool(row.unlimited),
        account_spend_limit_micros=row.account_spend_limit_micros,
        month_to_date_usage_micros=usage_in(row, period),
        credit_balance_micros=int(row.credit_balance_micros),
        historical_spend_micros=int(row.historical_spend_micros),
        failed_invoices=int(row.failed_invoices or 0),
        payment_methods=methods,
        suspend_state=account.suspend_state,
        period=period,
        period_start=start,
        period_end=end,
    )
