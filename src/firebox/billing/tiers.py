"""Usage tiers: historical spend raises the tier, at once and for good (SPEC §3).

Historical spend is what the account paid: SUCCEEDED credit purchases plus
SUCCEEDED invoice payments. Whoever records such a payment calls
``record_spend`` in the same transaction as the payment row, so the tier
(and with it the monthly spend limit) rises in the very commit that took
the money. The tier never falls on its own: it is ``max(stored tier,
tier_for(historical spend))``. The tier table (limits and thresholds) is
the price book's (``price_book.toml``, ``[[tiers]]``).
"""

from __future__ import annotations

from sqlalchemy import case, update
from sqlalchemy.orm import Session

from firebox.billing.models import BillingAccountRow
from firebox.billing.price_book import PriceBook


def record_spend(
    session: Session, account_id: str, micros: int, book: PriceBook | None = None
) -> int:
    """Add ``micros`` of paid money to the account's historical spend; return its new tier.

    Both updates are single SQL statements on the row (``x = x + n``,
    ``tier = max(tier, n)``), so concurrent payments never lose one another.
    ``book`` defaults to the packaged price book; pass the one in use when an
    operator configured another.
    """
    if micros < 0:
        raise ValueError("historical spend only grows")
    tiers = book or PriceBook.load()
    historical = session.execute(
        update(BillingAccountRow)
        .where(BillingAccountRow.account_id == account_id)
        .values(historical_spend_micros=BillingAccountRow.historical_spend_micros + micros)
        .returning(BillingAccountRow.historical_spend_micros)
    ).scalar_one()
    qualified = tiers.tier_for(int(historical))
    return int(
        session.execute(
            update(BillingAccountRow)
            .where(BillingAccountRow.account_id == account_id)
            .values(
                tier=case(
                    (BillingAccountRow.tier < qualified, qualified),
                    else_=BillingAccountRow.tier,
                )
            )
            .returning(BillingAccountRow.tier)
        ).scalar_one()
    )
