"""Invoice payments: a processing charge is not a decline; tiers follow the operator's book."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from firebox.billing.overrides import NoOverrides
from firebox.billing.payments.pending import PROCESSING
from firebox.billing.payments.provider import ChargeResult
from firebox.billing.payments.test_provider import TestPaymentProvider
from firebox.billing.price_book import PriceBook
from firebox.billing.pricing import Pricer
from firebox.billing.service import BillingService
from firebox.errors import ServiceUnavailable
from firebox.store.database import Database
from tests.billing.test_invoices import (
    FEB,
    add_account,
    add_usage,
    billing_row,
    make_kit,
    member,
    only_invoice,
    payments,
    set_card,
)


class ProcessingFirst(TestPaymentProvider):
    """Answers "processing" to the first ``n`` charges, then what the test provider says."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.left = n
        self.keys: list[str] = []

    def charge(self, *args: Any, **kwargs: Any) -> ChargeResult:
        result = super().charge(*args, **kwargs)
        self.keys.append(args[4] if len(args) > 4 else kwargs["idempotency_key"])
        if self.left > 0:
            self.left -= 1
            return ChargeResult(False, result.provider_ref, PROCESSING, "processing")
        return result


def test_a_processing_invoice_charge_is_retried_with_the_same_key(database: Database) -> None:
    provider = ProcessingFirst(1)
    kit = make_kit(database, provider)
    add_account(database, "acme", card="pm_card_visa")
    add_usage(database, "acme", "r1", 2_000_000)
    kit.clock.set(FEB)
    report = kit.closer.close_period("2026-01")  # charges at close: still processing
    assert (report.paid, report.payment_failed) == (0, 0)
    invoice = only_invoice(database, "acme")
    assert (invoice.state, invoice.attempt_count) == ("OPEN", 0)  # not PAYMENT_FAILED
    assert payments(database, "acme") == []
    assert billing_row(database, "acme").failed_invoices == 0

    assert len(kit.invoices.retry_failed_payments()) == 1
    invoice = only_invoice(database, "acme")
    assert (invoice.state, invoice.attempt_count) == ("PAID", 1)
    assert provider.keys == [f"invoice:{invoice.id}:attempt:1"] * 2
    assert provider.charged_cents("acme") == 200  # once


def test_manual_payment_of_a_processing_charge_says_so(database: Database) -> None:
    provider = ProcessingFirst(5)
    kit = make_kit(database, provider)
    add_account(database, "acme")
    add_usage(database, "acme", "r1", 2_000_000)
    kit.clock.set(FEB)
    kit.closer.close_period("2026-01")  # no card yet: OPEN, waiting
    set_card(database, "acme", "pm_card_visa")
    invoice_id = only_invoice(database, "acme").id
    with pytest.raises(ServiceUnavailable) as caught:
        kit.invoices.pay_invoice(member("acme"), "acme", invoice_id)
    assert caught.value.code == "payment_processing"
    invoice = only_invoice(database, "acme")
    assert (invoice.state, invoice.attempt_count) == ("OPEN", 0)
    assert payments(database, "acme") == []


def test_invoice_payments_raise_the_tier_by_the_operators_book(database: Database) -> None:
    packaged = PriceBook.load()
    # The operator's book: tier 2 from $1 of historical spend (the packaged one: $100).
    tiers = [
        replace(t, qualifies_at_micros=1_000_000) if t.tier == 2 else t for t in packaged.tiers
    ]
    book = PriceBook(list(packaged.versions), tiers)
    kit = make_kit(database)
    pricer = Pricer(book, NoOverrides(), clock=kit.clock)
    service = BillingService(database, kit.clock, pricer, kit.provider, kit.listener)
    add_account(database, "acme", card="pm_card_visa")
    add_usage(database, "acme", "r1", 2_000_000)
    kit.clock.set(FEB)
    assert service.close_period("2026-01").paid == 1
    row = billing_row(database, "acme")
    assert (row.historical_spend_micros, row.tier) == (2_000_000, 2)
