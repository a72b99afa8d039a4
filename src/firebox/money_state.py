"""The money vocabulary that billing and limits share without importing each other.

Billing produces ``SpendState`` (from its ledger); limits consumes it to
decide admission and suspension. Keeping it here, outside both slices, lets
the import-linter contract "billing and limits are independent" hold. The
two helpers both slices need (the billing month of an instant, and USD as
the wire writes it) live here too, so there is one of each.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

MICROS_PER_USD = 1_000_000


def period_of(when: datetime) -> str:
    """The billing month ("YYYY-MM", UTC) that ``when`` falls in (an aware datetime)."""
    utc = when.astimezone(UTC)
    return f"{utc.year:04d}-{utc.month:02d}"


def format_usd(micros: int) -> str:
    """A micro-USD amount as decimal USD with at least two decimals ("1.00", "-0.50")."""
    sign = "-" if micros < 0 else ""
    whole, fraction = divmod(abs(micros), MICROS_PER_USD)
    digits = f"{fraction:06d}".rstrip("0").ljust(2, "0")
    return f"{sign}{whole}.{digits}"


@dataclass(frozen=True, slots=True)
class SpendState:
    """One account's money position, read in one transaction from the ledger.

    ``spend_limit_micros`` is the effective monthly limit (the lowest of the
    tier's, the operator's custom one and the account's own; 0 while an
    invoice payment has failed); ``None`` means unlimited.
    """

    account_id: str
    period: str  # "YYYY-MM", UTC
    period_usage_micros: int  # usage written to the ledger this month, credits included
    spend_limit_micros: int | None
    credit_balance_micros: int
    has_payment_method: bool
    failed_payments: bool
