"""Purchases are PENDING before the charge: a crash or a processing card never loses money."""

from __future__ import annotations

from datetime import timedelta

import pytest

from firebox.billing.payments.pending import PROCESSING
from firebox.billing.payments.provider import AttachedMethod, ChargeResult
from firebox.billing.payments.test_provider import TestPaymentProvider
from firebox.billing.service import BillingService
from firebox.errors import PaymentRequired, ServiceUnavailable
from tests.billing.test_credits import balance
from tests.billing.test_purchases import payments, purchase_grants
from tests.billing.test_service import USD, Billing, billing, member

__all__ = ["billing"]


class Died(BaseException):
    """The process dying between the provider's answer and the commit."""


class Flaky:
    """The test provider, with scripted behaviour for the next charges."""

    name = "flaky"

    def __init__(self, inner: TestPaymentProvider) -> None:
        self.inner = inner
        self.script: list[str] = []  # "die-after", "down", "processing", per charge call
        self.calls = 0

    def attach(self, account_id: str, payment_method: str) -> AttachedMethod:
        return self.inner.attach(account_id, payment_method)

    def detach(self, account_id: str, provider_ref: str) -> None:
        self.inner.detach(account_id, provider_ref)

    def charge(
        self, account_id: str, provider_ref: str, amount_cents: int, description: str, key: str
    ) -> ChargeResult:
        self.calls += 1
        step = self.script.pop(0) if self.script else ""
        if step == "down":
            raise ServiceUnavailable("Stripe timed out", code="payment_provider_unavailable")
        result = self.inner.charge(account_id, provider_ref, amount_cents, description, key)
        if step == "die-after":
            raise Died
        if step == "processing":
            return ChargeResult(False, result.provider_ref, PROCESSING, "processing")
        return result


def flaky_service(b: Billing, card: str = "pm_card_visa") -> tuple[BillingService, Flaky]:
    flaky = Flaky(b.provider)
    service = BillingService(b.db, b.clock, b.pricer, flaky, b.listener)
    service.add_payment_method(member(), "acme", card)
    b.listener.calls.clear()
    return service, flaky


def test_a_crash_after_the_charge_leaves_a_pending_row_that_reconcile_completes(
    billing: Billing,
) -> None:
    service, flaky = flaky_service(billing)
    flaky.script = ["die-after"]
    with pytest.raises(Died):
        service.purchase_credits(member(), "acme", 40 * USD, None)  # no caller key
    assert billing.provider.charged_cents("acme") == 4_000  # the card was charged...
    assert payments(billing) == [("CREDIT_PURCHASE", 40 * USD, "PENDING", "")]  # ...and noted
    assert balance(billing) == 1 * USD

    assert service.reconcile_pending(timedelta(minutes=1)) == 0  # too young: may be in flight
    billing.clock.advance(timedelta(seconds=61))
    assert service.reconcile_pending(timedelta(minutes=1)) == 1
    assert payments(billing) == [("CREDIT_PURCHASE", 40 * USD, "SUCCEEDED", "")]
    assert balance(billing) == 41 * USD
    assert purchase_grants(billing) == 1
    assert billing.provider.charged_cents("acme") == 4_000  # charged once, not twice
    assert billing.provider.charge_count() == 1
    assert service.overview(member(), "acme").historical_spend_micros == 40 * USD
    assert billing.listener.calls == ["acme"]
    assert service.reconcile_pending(timedelta(minutes=1)) == 0  # nothing left


def test_replaying_a_pending_key_completes_it_without_a_second_charge(billing: Billing) -> None:
    service, flaky = flaky_service(billing)
    flaky.script = ["die-after"]
    with pytest.raises(Died):
        service.purchase_credits(member(), "acme", 25 * USD, "order-9")
    again = service.purchase_credits(member(), "acme", 25 * USD, "order-9")
    third = service.purchase_credits(member(), "acme", 25 * USD, "order-9")
    assert (again.state, again.amount_micros) == ("SUCCEEDED", 25 * USD)
    assert third == again
    assert again.grant_id != ""
    assert billing.provider.charged_cents("acme") == 2_500
    assert balance(billing) == 26 * USD
    assert payments(billing) == [("CREDIT_PURCHASE", 25 * USD, "SUCCEEDED", "")]


def test_provider_down_keeps_the_purchase_pending_and_names_the_key(billing: Billing) -> None:
    service, flaky = flaky_service(billing)
    flaky.script = ["down"]
    with pytest.raises(ServiceUnavailable) as caught:
        service.purchase_credits(member(), "acme", 10 * USD, None)
    assert caught.value.code == "payment_provider_unavailable"
    assert "pending" in caught.value.message and "idempotencyKey" in caught.value.message
    assert payments(billing) == [("CREDIT_PURCHASE", 10 * USD, "PENDING", "")]
    billing.clock.advance(timedelta(minutes=2))
    service.housekeeping()  # what the period job runs: expiry and reconcile
    assert payments(billing) == [("CREDIT_PURCHASE", 10 * USD, "SUCCEEDED", "")]
    assert balance(billing) == 11 * USD


def test_a_processing_charge_is_pending_not_declined(billing: Billing) -> None:
    service, flaky = flaky_service(billing)
    flaky.script = ["processing", "processing"]
    first = service.purchase_credits(member(), "acme", 30 * USD, "order-p")
    assert (first.state, first.grant_id) == ("PENDING", "")
    replay = service.purchase_credits(member(), "acme", 30 * USD, "order-p")
    assert replay.state == "PENDING"  # still processing: still no credit, no decline
    assert payments(billing) == [("CREDIT_PURCHASE", 30 * USD, "PENDING", "")]
    assert balance(billing) == 1 * USD
    billing.clock.advance(timedelta(minutes=5))
    assert service.reconcile_pending() == 1  # the provider now says it succeeded
    assert payments(billing) == [("CREDIT_PURCHASE", 30 * USD, "SUCCEEDED", "")]
    assert balance(billing) == 31 * USD
    assert billing.provider.charge_count() == 1


def test_a_pending_decline_is_completed_as_failed(billing: Billing) -> None:
    service, flaky = flaky_service(billing, "pm_card_chargeDeclined")
    flaky.script = ["down"]
    with pytest.raises(ServiceUnavailable):
        service.purchase_credits(member(), "acme", 10 * USD, "k-d")
    billing.clock.advance(timedelta(minutes=2))
    assert service.reconcile_pending() == 1
    assert payments(billing) == [("CREDIT_PURCHASE", 10 * USD, "FAILED", "card_declined")]
    with pytest.raises(PaymentRequired):
        service.purchase_credits(member(), "acme", 10 * USD, "k-d")
    assert balance(billing) == 1 * USD
