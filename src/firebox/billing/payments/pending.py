"""A charge the provider accepted but has not finished: neither paid nor declined.

``ChargeResult`` (``provider.py``) has no third state, so a provider reports
such a charge (Stripe's ``processing`` PaymentIntent) as not succeeded with
``failure_code = PROCESSING``. Callers must not store it as a decline: a
credit purchase stays PENDING for ``Purchases.reconcile_pending`` and an
invoice attempt is not recorded, so the next try asks again with the same
idempotency key and learns the final outcome.
"""

from __future__ import annotations

from firebox.billing.payments.provider import ChargeResult

PROCESSING = "payment_processing"


def is_pending(result: ChargeResult) -> bool:
    """True when the charge is still in flight at the provider (not a final outcome)."""
    return not result.succeeded and result.failure_code == PROCESSING
