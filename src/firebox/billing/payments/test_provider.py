"""The built-in ``test`` payment provider: Stripe's test cards, in memory.

It lets an operator (and the test suite) run the whole money cycle — add a
card, buy credits, pay invoices, see a decline — without a payment account.
The card names are Stripe's test payment methods, so a script written
against this provider works unchanged against Stripe in test mode:

- ``pm_card_visa``, ``pm_card_mastercard``, ``pm_card_amex`` attach and every
  charge succeeds;
- ``pm_card_chargeDeclined`` attaches (as in Stripe) but every charge is
  declined with ``card_declined``;
- ``pm_card_insufficientFunds`` attaches; charges are declined with
  ``insufficient_funds``;
- anything else is refused at attach with ``invalid_payment_method``.

Charges are idempotent per key, as Stripe's are: the same key returns the
same ``ChargeResult`` and charges nothing again. All state lives on the
instance under a lock (no module-level state), so each process or test gets
its own. Attachments are not remembered: a card on file in the database
keeps working after a restart, whatever this instance saw.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass

from firebox.billing.payments.provider import AttachedMethod, ChargeResult, PaymentDeclined


@dataclass(frozen=True, slots=True)
class _TestCard:
    brand: str
    last4: str
    decline_code: str = ""  # empty: charges succeed
    decline_message: str = ""


_DECLINED = "Your card was declined."
_INSUFFICIENT = "Your card has insufficient funds."


def _cards() -> dict[str, _TestCard]:
    """The test cards, built per instance so nothing mutable lives at module level."""
    return {
        "pm_card_visa": _TestCard("visa", "4242"),
        "pm_card_mastercard": _TestCard("mastercard", "4444"),
        "pm_card_amex": _TestCard("amex", "8431"),
        "pm_card_chargeDeclined": _TestCard("visa", "0341", "card_declined", _DECLINED),
        "pm_card_insufficientFunds": _TestCard("visa", "9995", "insufficient_funds", _INSUFFICIENT),
    }


class TestPaymentProvider:
    """A ``PaymentProvider`` that behaves like Stripe's test cards."""

    __test__ = False  # not a pytest test class, despite its name

    name = "test"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cards = _cards()
        self._charges: dict[str, ChargeResult] = {}
        self._charged_cents: dict[str, int] = {}

    def attach(self, account_id: str, payment_method: str) -> AttachedMethod:
        card = self._cards.get(payment_method)
        if card is None:
            raise PaymentDeclined(
                "invalid_payment_method",
                f"No such payment method {payment_method!r}. The test provider accepts "
                "pm_card_visa, pm_card_mastercard, pm_card_amex, pm_card_chargeDeclined "
                "and pm_card_insufficientFunds.",
            )
        return AttachedMethod(provider_ref=payment_method, brand=card.brand, last4=card.last4)

    def detach(self, account_id: str, provider_ref: str) -> None:
        return None

    def charge(
        self,
        account_id: str,
        provider_ref: str,
        amount_cents: int,
        description: str,
        idempotency_key: str,
    ) -> ChargeResult:
        with self._lock:
            earlier = self._charges.get(idempotency_key)
            if earlier is not None:
                return earlier
            charge_id = f"pi_test_{secrets.token_hex(8)}"
            result = self._decide(provider_ref, amount_cents, charge_id)
            self._charges[idempotency_key] = result
            if result.succeeded:
                self._charged_cents[account_id] = (
                    self._charged_cents.get(account_id, 0) + amount_cents
                )
            return result

    def charged_cents(self, account_id: str) -> int:
        """What succeeded charges took from ``account_id`` so far (for tests)."""
        with self._lock:
            return self._charged_cents.get(account_id, 0)

    def charge_count(self) -> int:
        """How many distinct charges (by idempotency key) were attempted (for tests)."""
        with self._lock:
            return len(self._charges)

    def _decide(self, provider_ref: str, amount_cents: int, charge_id: str) -> ChargeResult:
        card = self._cards.get(provider_ref)
        if card is None:
            return ChargeResult(
                succeeded=False,
                provider_ref=charge_id,
                failure_code="invalid_payment_method",
                failure_message=f"No such payment method {provider_ref!r}.",
            )
        if amount_cents <= 0:
            return ChargeResult(
                succeeded=False,
                provider_ref=charge_id,
                failure_code="amount_too_small",
                failure_message="The amount must be at least 1 cent.",
            )
        if card.decline_code:
            return ChargeResult(
                succeeded=False,
                provider_ref=charge_id,
                failure_code=card.decline_code,
                failure_message=card.decline_message,
            )
        return ChargeResult(succeeded=True, provider_ref=charge_id)
