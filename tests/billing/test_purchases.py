"""Buying credits: amounts, the card on file, declines, idempotent replays, tiers."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from firebox.billing.models import CreditGrantRow, PaymentRow
from firebox.billing.purchases import CreditPurchase
from firebox.errors import FailedPrecondition, InvalidArgument, PaymentRequired
from tests.billing.test_credits import balance
from tests.billing.test_service import USD, Billing, billing, member

__all__ = ["billing"]


def payments(b: Billing) -> list[tuple[str, int, str, str]]:
    with b.db.transaction() as session:
        rows = session.scalars(select(PaymentRow).order_by(PaymentRow.create_time))
        return [(p.purpose, p.amount_micros, p.state, p.failure_code) for p in rows]


def purchase_grants(b: Billing) -> int:
    with b.db.transaction() as session:
        query = select(func.count()).where(CreditGrantRow.source == "PURCHASE")
        return int(session.scalar(query) or 0)


def with_card(b: Billing, card: str = "pm_card_visa") -> Billing:
    b.service.add_payment_method(member(), "acme", card)
    b.listener.calls.clear()
    return b


def test_buying_100_dollars_raises_credit_spend_and_tier_at_once(billing: Billing) -> None:
    with_card(billing)
    bought = billing.service.purchase_credits(member(), "acme", 100 * USD, "order-1")
    assert (bought.amount_micros, bought.state, bought.idempotency_key) == (
        100 * USD,
        "SUCCEEDED",
        "order-1",
    )
    view = billing.service.overview(member(), "acme")
    assert view.credit_balance_micros == 101 * USD
    assert view.historical_spend_micros == 100 * USD
    assert (view.tier, view.spend_limit_micros) == (2, 500 * USD)
    assert balance(billing) == 101 * USD
    assert payments(billing) == [("CREDIT_PURCHASE", 100 * USD, "SUCCEEDED", "")]
    assert purchase_grants(billing) == 1
    assert billing.provider.charged_cents("acme") == 10_000
    assert billing.listener.calls == ["acme"]
    assert billing.service.spend_state("acme").spend_limit_micros == 500 * USD


def test_buying_1000_dollars_jumps_to_tier_3(billing: Billing) -> None:
    with_card(billing, "pm_card_amex")
    billing.service.purchase_credits(member(), "acme", 1000 * USD, None)
    view = billing.service.overview(member(), "acme")
    assert (view.tier, view.spend_limit_micros) == (3, 5000 * USD)


@pytest.mark.parametrize(
    ("card", "reason"),
    [
        ("pm_card_chargeDeclined", "card_declined"),
        ("pm_card_insufficientFunds", "insufficient_funds"),
    ],
)
def test_a_declined_card_changes_nothing_but_a_failed_payment(
    billing: Billing, card: str, reason: str
) -> None:
    with_card(billing, card)
    with pytest.raises(PaymentRequired) as caught:
        billing.service.purchase_credits(member(), "acme", 100 * USD, "order-1")
    assert caught.value.code == "payment_declined"
    assert reason in caught.value.message
    assert "POST /v1/accounts/acme/paymentMethods" in caught.value.message
    view = billing.service.overview(member(), "acme")
    assert (view.credit_balance_micros, view.historical_spend_micros, view.tier) == (USD, 0, 1)
    assert payments(billing) == [("CREDIT_PURCHASE", 100 * USD, "FAILED", reason)]
    assert purchase_grants(billing) == 0
    assert billing.listener.calls == []
    # Replaying the declined key answers the same decline and writes nothing.
    with pytest.raises(PaymentRequired):
        billing.service.purchase_credits(member(), "acme", 100 * USD, "order-1")
    assert len(payments(billing)) == 1


def test_replaying_a_key_returns_the_same_purchase(billing: Billing) -> None:
    with_card(billing)
    first = billing.service.purchase_credits(member(), "acme", 100 * USD, "order-1")
    again = billing.service.purchase_credits(member(), "acme", 100 * USD, "order-1")
    assert again == first
    assert balance(billing) == 101 * USD
    assert billing.provider.charge_count() == 1
    assert len(payments(billing)) == 1
    with pytest.raises(InvalidArgument) as caught:
        billing.service.purchase_credits(member(), "acme", 50 * USD, "order-1")
    assert caught.value.code == "idempotency_key_reused"
    # Without a key every call is a new purchase.
    billing.service.purchase_credits(member(), "acme", 5 * USD, None)
    billing.service.purchase_credits(member(), "acme", 5 * USD, None)
    assert balance(billing) == 111 * USD
    assert billing.service.overview(member(), "acme").historical_spend_micros == 110 * USD


def test_concurrent_replays_make_one_purchase(billing: Billing) -> None:
    with_card(billing)
    results: list[CreditPurchase] = []
    errors: list[BaseException] = []

    def buy() -> None:
        try:
            results.append(billing.service.purchase_credits(member(), "acme", 20 * USD, "k"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=buy) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({r.id for r in results}) == 1
    assert balance(billing) == 21 * USD
    assert len(payments(billing)) == 1


def test_purchase_needs_a_payment_method(billing: Billing) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        billing.service.purchase_credits(member(), "acme", 10 * USD, None)
    assert caught.value.code == "payment_method_required"
    assert "POST /v1/accounts/acme/paymentMethods" in caught.value.message
    assert payments(billing) == []


@pytest.mark.parametrize(
    "micros", [0, USD - 10_000, USD + 1, 100_000 * USD + 10_000, -5 * USD, 12_345_678]
)
def test_amounts_outside_1_to_100000_dollars_or_not_whole_cents(
    billing: Billing, micros: int
) -> None:
    with_card(billing)
    with pytest.raises(InvalidArgument) as caught:
        billing.service.purchase_credits(member(), "acme", micros, None)
    assert caught.value.code == "invalid_amount"
    assert payments(billing) == []


def test_the_bounds_themselves_are_accepted(billing: Billing) -> None:
    with_card(billing)
    billing.service.purchase_credits(member(), "acme", USD, None)
    billing.service.purchase_credits(member(), "acme", 100_000 * USD, None)
    view = billing.service.overview(member(), "acme")
    assert (view.credit_balance_micros, view.tier) == (100_002 * USD, 4)


def test_a_malformed_idempotency_key_is_refused(billing: Billing) -> None:
    with_card(billing)
    with pytest.raises(InvalidArgument) as caught:
        billing.service.purchase_credits(member(), "acme", USD, "has spaces")
    assert caught.value.code == "invalid_idempotency_key"
