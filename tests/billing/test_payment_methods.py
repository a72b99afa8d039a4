"""Payment methods: attach through the provider, list, soft-delete; the newest is charged."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from firebox.billing.models import PaymentMethodRow
from firebox.billing.payments.provider import PaymentDeclined
from firebox.billing.payments.test_provider import TestPaymentProvider
from firebox.errors import FailedPrecondition, InvalidArgument, NotFound, PaymentRequired
from tests.billing.test_service import USD, Billing, billing, member

__all__ = ["billing"]


@pytest.mark.parametrize(
    ("card", "brand", "last4"),
    [
        ("pm_card_visa", "visa", "4242"),
        ("pm_card_mastercard", "mastercard", "4444"),
        ("pm_card_amex", "amex", "8431"),
        ("pm_card_chargeDeclined", "visa", "0341"),
        ("pm_card_insufficientFunds", "visa", "9995"),
    ],
)
def test_test_cards_attach(billing: Billing, card: str, brand: str, last4: str) -> None:
    added = billing.service.add_payment_method(member(), "acme", card)
    assert (added.provider, added.provider_ref, added.brand, added.last4) == (
        "test",
        card,
        brand,
        last4,
    )
    assert billing.service.list_payment_methods(member(), "acme") == [added]
    assert billing.listener.calls == ["acme"]
    assert billing.service.spend_state("acme").has_payment_method is True


def test_an_unknown_method_is_refused(billing: Billing) -> None:
    with pytest.raises(InvalidArgument) as caught:
        billing.service.add_payment_method(member(), "acme", "pm_card_bogus")
    assert caught.value.code == "invalid_payment_method"
    assert "pm_card_visa" in caught.value.message
    assert billing.service.list_payment_methods(member(), "acme") == []
    assert billing.listener.calls == []


def test_delete_is_soft_and_stops_purchases(billing: Billing) -> None:
    s = billing.service
    added = s.add_payment_method(member(), "acme", "pm_card_visa")
    s.delete_payment_method(member(), "acme", added.id)
    assert s.list_payment_methods(member(), "acme") == []
    with billing.db.transaction() as session:
        row = session.scalar(select(PaymentMethodRow))
        assert row is not None and row.delete_time == billing.clock.now()
    assert billing.listener.calls == ["acme", "acme"]
    assert s.spend_state("acme").has_payment_method is False
    with pytest.raises(NotFound) as caught:
        s.delete_payment_method(member(), "acme", added.id)
    assert caught.value.code == "payment_method_not_found"
    with pytest.raises(FailedPrecondition):
        s.purchase_credits(member(), "acme", 10 * USD, None)


def test_another_accounts_method_is_not_found(billing: Billing) -> None:
    theirs = billing.service.add_payment_method(member("other"), "other", "pm_card_visa")
    with pytest.raises(NotFound):
        billing.service.delete_payment_method(member(), "acme", theirs.id)
    assert len(billing.service.list_payment_methods(member("other"), "other")) == 1


def test_the_newest_method_is_charged(billing: Billing) -> None:
    s = billing.service
    s.add_payment_method(member(), "acme", "pm_card_chargeDeclined")
    billing.clock.advance(timedelta(seconds=1))
    visa = s.add_payment_method(member(), "acme", "pm_card_visa")
    assert s.list_payment_methods(member(), "acme")[0] == visa
    assert s.purchase_credits(member(), "acme", 10 * USD, None).payment_method_id == visa.id
    s.delete_payment_method(member(), "acme", visa.id)
    with pytest.raises(PaymentRequired):
        s.purchase_credits(member(), "acme", 10 * USD, None)


def test_provider_is_idempotent_per_key_and_refuses_unknown_cards() -> None:
    provider = TestPaymentProvider()
    first = provider.charge("acme", "pm_card_visa", 500, "x", "k1")
    assert provider.charge("acme", "pm_card_visa", 500, "x", "k1") == first
    assert first.succeeded and provider.charged_cents("acme") == 500
    declined = provider.charge("acme", "pm_card_chargeDeclined", 500, "x", "k2")
    assert (declined.succeeded, declined.failure_code) == (False, "card_declined")
    assert provider.charged_cents("acme") == 500
    with pytest.raises(PaymentDeclined) as caught:
        provider.attach("acme", "pm_card_nope")
    assert caught.value.code == "invalid_payment_method"
