"""Invoices: reading, paying by hand, automatic payment retries and their backoff.

Usage rows are written directly here (not through the ledger), so these tests
pin the invoice rules alone; tests/billing/test_invariants.py runs them
together with the ledger and credits.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from firebox.accounts.models import AccountRow
from firebox.accounts.principal import Principal
from firebox.accounts.roles import Role
from firebox.billing.invoices import InvoiceService
from firebox.billing.models import (
    BillingAccountRow,
    InvoiceRow,
    PaymentMethodRow,
    PaymentRow,
    UsageRecordRow,
)
from firebox.billing.payments.provider import ChargeResult
from firebox.billing.payments.test_provider import TestPaymentProvider
from firebox.billing.period import PeriodCloser
from firebox.clock import FakeClock
from firebox.errors import FailedPrecondition, NotFound, PaymentRequired, PermissionDenied
from firebox.store.database import Database

JAN = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
FEB = datetime(2026, 2, 1, 0, 0, 1, tzinfo=UTC)


@dataclass
class RecordingListener:
    calls: list[str] = field(default_factory=list)

    def money_changed(self, account_id: str) -> None:
        self.calls.append(account_id)


class ExplodingProvider(TestPaymentProvider):
    """Fails like a network error until ``healed``."""

    __test__ = False

    def __init__(self) -> None:
        super().__init__()
        self.healed = False
        self.keys: list[str] = []

    def charge(
        self,
        account_id: str,
        provider_ref: str,
        amount_cents: int,
        description: str,
        idempotency_key: str,
    ) -> ChargeResult:
        self.keys.append(idempotency_key)
        if not self.healed:
            raise ConnectionError("provider unreachable")
        return super().charge(account_id, provider_ref, amount_cents, description, idempotency_key)


def member(account_id: str, role: Role = Role.ADMIN) -> Principal:
    return Principal(account_id, "u", 1, role, "key_1", "hash")


def add_account(db: Database, account_id: str, card: str | None = None) -> None:
    with db.transaction() as s:
        s.add(AccountRow(id=account_id, create_time=JAN, update_time=JAN))
        s.flush()
        s.add(
            BillingAccountRow(
                account_id=account_id,
                period="2026-01",
                period_usage_micros=0,
                credit_balance_micros=0,
                historical_spend_micros=0,
                tier=1,
                unlimited=False,
                deployment_discount_bps=0,
                failed_invoices=0,
                create_time=JAN,
                update_time=JAN,
            )
        )
    if card is not None:
        set_card(db, account_id, card)


def set_card(db: Database, account_id: str, card: str, when: datetime = JAN) -> None:
    """Replace the account's payment method by ``card``."""
    with db.transaction() as s:
        for old in s.scalars(
            select(PaymentMethodRow).where(PaymentMethodRow.account_id == account_id)
        ):
            old.delete_time = old.delete_time or when
        n = s.scalar(select(func.count()).select_from(PaymentMethodRow)) or 0
        s.add(
            PaymentMethodRow(
                id=f"pm_{n}", account_id=account_id, provider="test", provider_ref=card,
                brand="visa", last4="4242", create_time=when,
            )
        )  # fmt: skip


def add_usage(
    db: Database,
    account_id: str,
    request_id: str,
    amount: int,
    *,
    credit: int = 0,
    model: str = "accounts/fireworks/models/m",
    kind: str = "chat",
    when: datetime = JAN,
    prompt: int = 10,
    completion: int = 5,
) -> None:
    with db.transaction() as s:
        s.add(
            UsageRecordRow(
                request_id=request_id, account_id=account_id, time=when,
                period=f"{when.year:04d}-{when.month:02d}", kind=kind, model=model,
                base_model=model, prompt_tokens=prompt, cached_prompt_tokens=0,
                completion_tokens=completion, images=0, steps=0, gpu_milliseconds=0,
                training_tokens=0, price_version="test", unit_price_micros=0,
                cached_unit_price_micros=0, amount_micros=amount,
                credit_applied_micros=credit, outcome="completed",
            )
        )  # fmt: skip


def billing_row(db: Database, account_id: str) -> BillingAccountRow:
    with db.transaction() as s:
        row = s.get(BillingAccountRow, account_id)
        assert row is not None
        return row


def payments(db: Database, account_id: str) -> list[PaymentRow]:
    with db.transaction() as s:
        query = select(PaymentRow).where(PaymentRow.account_id == account_id)
        return list(s.scalars(query.order_by(PaymentRow.create_time, PaymentRow.id)))


def only_invoice(db: Database, account_id: str) -> InvoiceRow:
    with db.transaction() as s:
        rows = list(s.scalars(select(InvoiceRow).where(InvoiceRow.account_id == account_id)))
    assert len(rows) == 1
    return rows[0]


@dataclass
class Kit:
    db: Database
    clock: FakeClock
    provider: TestPaymentProvider
    listener: RecordingListener
    invoices: InvoiceService
    closer: PeriodCloser


def make_kit(db: Database, provider: TestPaymentProvider | None = None) -> Kit:
    clock = FakeClock(JAN)
    provider = provider or TestPaymentProvider()
    listener = RecordingListener()
    invoices = InvoiceService(db, clock, provider, listener)
    closer = PeriodCloser(db, clock, invoices, listener, rescan_s=0)
    return Kit(db, clock, provider, listener, invoices, closer)


@pytest.fixture
def kit(database: Database) -> Iterator[Kit]:
    yield make_kit(database)


def close_january(kit: Kit) -> None:
    kit.clock.set(FEB)
    kit.closer.close_period("2026-01")


def test_paid_at_close_with_a_card_charges_cents_rounded_up(kit: Kit) -> None:
    add_account(kit.db, "acme", card="pm_card_visa")
    add_usage(kit.db, "acme", "r1", 1_234_567, credit=200_000)
    add_usage(kit.db, "acme", "r2", 10_001)
    close_january(kit)

    invoice = only_invoice(kit.db, "acme")
    assert (invoice.state, invoice.usage_micros, invoice.credits_applied_micros) == (
        "PAID",
        1_244_568,
        200_000,
    )
    assert invoice.total_micros == 1_044_568
    assert invoice.paid_time == FEB and invoice.attempt_count == 1
    (payment,) = payments(kit.db, "acme")
    assert (payment.state, payment.amount_micros, payment.purpose) == (
        "SUCCEEDED",
        1_050_000,
        "INVOICE",
    )
    assert payment.idempotency_key == f"invoice:{invoice.id}:attempt:1"
    assert kit.provider.charged_cents("acme") == 105
    assert billing_row(kit.db, "acme").historical_spend_micros == 1_050_000
    assert "acme" in kit.listener.calls


def test_declined_card_fails_then_retries_on_backoff(kit: Kit) -> None:
    add_account(kit.db, "acme", card="pm_card_chargeDeclined")
    add_usage(kit.db, "acme", "r1", 5_000_000)
    close_january(kit)

    invoice = only_invoice(kit.db, "acme")
    assert invoice.state == "PAYMENT_FAILED"
    assert invoice.last_failure.startswith("card_declined")
    assert invoice.next_attempt_time == FEB + timedelta(days=1)
    assert billing_row(kit.db, "acme").failed_invoices == 1
    assert [p.state for p in payments(kit.db, "acme")] == ["FAILED"]
    assert kit.invoices.retry_failed_payments() == []  # not due yet

    expected_gaps = [timedelta(days=3), timedelta(days=5), None]
    for attempt, gap in enumerate(expected_gaps, start=2):
        assert invoice.next_attempt_time is not None
        kit.clock.set(invoice.next_attempt_time)
        (retried,) = kit.invoices.retry_failed_payments()
        assert (retried.state, retried.attempt_count) == ("PAYMENT_FAILED", attempt)
        assert retried.next_attempt_time == (None if gap is None else kit.clock.now() + gap)
        invoice = only_invoice(kit.db, "acme")
    assert billing_row(kit.db, "acme").failed_invoices == 1  # one invoice, counted once
    assert len(payments(kit.db, "acme")) == 4
    kit.clock.advance(timedelta(days=30))
    assert kit.invoices.retry_failed_payments() == []  # retries exhausted: pay by hand


def test_paying_a_failed_invoice_by_hand_lifts_the_failure(kit: Kit) -> None:
    add_account(kit.db, "acme", card="pm_card_chargeDeclined")
    add_usage(kit.db, "acme", "r1", 5_000_000)
    close_january(kit)
    invoice_id = only_invoice(kit.db, "acme").id
    with pytest.raises(PaymentRequired) as declined:
        kit.invoices.pay_invoice(member("acme"), "acme", invoice_id)
    assert declined.value.code == "payment_declined"
    assert billing_row(kit.db, "acme").failed_invoices == 1

    set_card(kit.db, "acme", "pm_card_visa", FEB)
    kit.listener.calls.clear()
    paid = kit.invoices.pay_invoice(member("acme"), "acme", invoice_id)
    assert (paid.state, paid.attempt_count, paid.paid_time) == ("PAID", 3, FEB)
    assert paid.next_attempt_time is None
    assert billing_row(kit.db, "acme").failed_invoices == 0
    assert billing_row(kit.db, "acme").historical_spend_micros == 5_000_000
    assert kit.listener.calls == ["acme"]
    assert [p.state for p in payments(kit.db, "acme")] == ["FAILED", "FAILED", "SUCCEEDED"]

    with pytest.raises(FailedPrecondition) as again:
        kit.invoices.pay_invoice(member("acme"), "acme", invoice_id)
    assert again.value.code == "invoice_already_paid"
    assert kit.invoices.retry_failed_payments() == []
    assert len(payments(kit.db, "acme")) == 3


def test_without_a_payment_method_the_invoice_stays_open(kit: Kit) -> None:
    add_account(kit.db, "acme")
    add_usage(kit.db, "acme", "r1", 2_500_000)
    close_january(kit)
    invoice = only_invoice(kit.db, "acme")
    assert (invoice.state, invoice.next_attempt_time, invoice.attempt_count) == ("OPEN", None, 0)
    assert billing_row(kit.db, "acme").failed_invoices == 0
    kit.clock.advance(timedelta(days=10))
    assert kit.invoices.retry_failed_payments() == []
    with pytest.raises(FailedPrecondition) as refused:
        kit.invoices.pay_invoice(member("acme"), "acme", invoice.id)
    assert refused.value.code == "payment_method_required"

    set_card(kit.db, "acme", "pm_card_mastercard", FEB)
    paid = kit.invoices.pay_invoice(member("acme"), "acme", invoice.id)
    assert paid.state == "PAID"
    assert kit.provider.charged_cents("acme") == 250
    assert billing_row(kit.db, "acme").failed_invoices == 0


def test_void_invoice_cannot_be_paid(kit: Kit) -> None:
    add_account(kit.db, "acme", card="pm_card_visa")
    with kit.db.transaction() as s:
        s.add(
            InvoiceRow(
                id="inv_202601_void", account_id="acme", period="2026-01", state="VOID",
                usage_micros=1, credits_applied_micros=0, total_micros=1, attempt_count=0,
                last_failure="", create_time=JAN, update_time=JAN,
            )
        )  # fmt: skip
    with pytest.raises(FailedPrecondition) as refused:
        kit.invoices.pay_invoice(member("acme"), "acme", "inv_202601_void")
    assert refused.value.code == "invoice_void"
    assert payments(kit.db, "acme") == []


def test_a_provider_outage_retries_the_same_attempt_key(database: Database) -> None:
    provider = ExplodingProvider()
    kit = make_kit(database, provider)
    add_account(kit.db, "acme", card="pm_card_visa")
    add_usage(kit.db, "acme", "r1", 1_000_000)
    close_january(kit)
    invoice = only_invoice(kit.db, "acme")
    assert (invoice.state, invoice.attempt_count, invoice.next_attempt_time) == ("OPEN", 0, FEB)
    assert kit.invoices.retry_failed_payments() == []  # raised inside, logged
    provider.healed = True
    (paid,) = kit.invoices.retry_failed_payments()
    assert (paid.state, paid.attempt_count) == ("PAID", 1)
    key = f"invoice:{invoice.id}:attempt:1"
    assert provider.keys == [key, key, key]
    assert provider.charged_cents("acme") == 100


def test_read_and_list_invoices_newest_first_with_lines(kit: Kit) -> None:
    add_account(kit.db, "acme")
    add_usage(kit.db, "acme", "j1", 100, model="m-a", prompt=7, completion=3)
    add_usage(kit.db, "acme", "j2", 200, model="m-a", prompt=1, completion=1)
    add_usage(kit.db, "acme", "j3", 50, model="m-b", kind="embedding", prompt=9, completion=0)
    add_usage(kit.db, "acme", "f1", 70, when=FEB + timedelta(days=3))
    kit.clock.set(datetime(2026, 3, 2, tzinfo=UTC))
    assert kit.closer.close_due_periods() == ["2026-01", "2026-02"]

    first = kit.invoices.list_invoices(member("acme", Role.USER), "acme", 1, None)
    assert first.total_size == 2
    assert [i.period for i in first.invoices] == ["2026-02"]
    assert first.invoices[0].lines == ()
    second = kit.invoices.list_invoices(member("acme"), "acme", 1, first.next_page_token)
    assert [i.period for i in second.invoices] == ["2026-01"]
    third = kit.invoices.list_invoices(member("acme"), "acme", 1, second.next_page_token)
    assert (third.invoices, third.next_page_token) == ([], "")

    jan = kit.invoices.get_invoice(member("acme"), "acme", second.invoices[0].id)
    assert (jan.usage_micros, jan.total_micros, jan.amount_due_micros) == (350, 350, 10_000)
    assert [
        (x.model, x.kind, x.requests, x.prompt_tokens, x.completion_tokens, x.amount_micros)
        for x in jan.lines
    ] == [("m-a", "chat", 2, 8, 4, 300), ("m-b", "embedding", 1, 9, 0, 50)]


def test_authorization(kit: Kit) -> None:
    add_account(kit.db, "acme")
    add_account(kit.db, "other")
    add_usage(kit.db, "acme", "r1", 100)
    close_january(kit)
    invoice_id = only_invoice(kit.db, "acme").id
    with pytest.raises(NotFound):
        kit.invoices.get_invoice(member("other"), "acme", invoice_id)
    with pytest.raises(NotFound) as missing:
        kit.invoices.get_invoice(member("other"), "other", invoice_id)
    assert missing.value.code == "invoice_not_found"
    with pytest.raises(PermissionDenied):
        kit.invoices.list_invoices(member("acme", Role.CONTRIBUTOR), "acme", None, None)
    with pytest.raises(PermissionDenied):
        kit.invoices.pay_invoice(member("acme", Role.USER), "acme", invoice_id)
    operator = Principal("root", "op", 0, Role.ADMIN, "k", "h", is_operator=True)
    assert kit.invoices.get_invoice(operator, "acme", invoice_id).id == invoice_id
