"""The payment provider seam.

Billing charges money only through a ``PaymentProvider``. The built-in
``test`` provider (``payments/test_provider.py``) behaves like Stripe's test
cards so operators can try the whole money cycle; ``payments/stripe_provider.py``
talks to Stripe through the ``stripe`` package. Amounts are integer micro-USD
here and converted to the provider's unit (cents) at the edge; a charge whose
amount is not a whole number of cents is rounded up to the next cent by the
caller before charging (invoices and purchases are always whole cents).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class AttachedMethod:
    """A payment method the provider accepted for a customer."""

    provider_ref: str  # the provider's id of the method (pm_…)
    brand: str
    last4: str


@dataclass(frozen=True, slots=True)
class ChargeResult:
    """The outcome of one charge: succeeded, or declined with the provider's reason."""

    succeeded: bool
    provider_ref: str  # the provider's id of the charge (pi_…), also when declined
    failure_code: str = ""  # e.g. "card_declined"
    failure_message: str = ""


class PaymentDeclined(Exception):
    """The provider refused to attach a payment method (invalid or unknown)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class PaymentProvider(Protocol):
    """Attaches payment methods and charges them, idempotently."""

    name: str

    def attach(self, account_id: str, payment_method: str) -> AttachedMethod:
        """Validate and attach ``payment_method`` (e.g. ``pm_card_visa``) to the account.

        Raises ``PaymentDeclined`` when the provider refuses it.
        """
        ...

    def detach(self, account_id: str, provider_ref: str) -> None: ...

    def charge(
        self,
        account_id: str,
        provider_ref: str,
        amount_cents: int,
        description: str,
        idempotency_key: str,
    ) -> ChargeResult:
        """Charge ``amount_cents`` USD; the same ``idempotency_key`` never charges twice."""
        ...
