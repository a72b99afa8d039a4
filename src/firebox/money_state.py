"""The money vocabulary that billing and limits share without importing each other.

Billing produces ``SpendState`` (from its ledger); limits consumes it to
decide admission and suspension. Keeping it here, outside both slices, lets
the import-linter contract "billing and limits are independent" hold.
"""

from __future__ import annotations

from dataclasses import dataclass


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
