"""The monthly close: one invoice per account and month, idempotent, race-safe, late usage."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from firebox.billing.invoices import InvoiceService
from firebox.billing.models import InvoiceLineRow, InvoiceRow, PaymentRow
from firebox.billing.period import PeriodCloseJob, PeriodCloser
from firebox.errors import FailedPrecondition, InvalidArgument
from firebox.store.database import Database
from tests.billing.test_invoices import (
    FEB,
    JAN,
    Kit,
    RecordingListener,
    add_account,
    add_usage,
    billing_row,
    make_kit,
    only_invoice,
    payments,
)

MAR = datetime(2026, 3, 1, 1, 0, 5, tzinfo=UTC)  # March 1st, after the 1-hour grace


def count(db: Database, table: type[InvoiceRow] | type[PaymentRow] | type[InvoiceLineRow]) -> int:
    with db.transaction() as s:
        return s.scalar(select(func.count()).select_from(table)) or 0


@pytest.fixture
def kit(database: Database) -> Kit:
    return make_kit(database)


def test_only_ended_months_close(kit: Kit) -> None:
    for period in ("2026-01", "2026-02", "2027-01"):
        with pytest.raises(FailedPrecondition) as refused:
            kit.closer.close_period(period)
        assert refused.value.code == "period_not_ended"
    for bad in ("2026-1", "2026-13", "202601", "jan"):
        with pytest.raises(InvalidArgument) as invalid:
            kit.closer.close_period(bad)
        assert invalid.value.code == "invalid_period"
    kit.clock.set(FEB)
    assert kit.closer.close_period("2025-12").invoice_ids == []  # no usage: no invoice


def test_close_invoices_each_account_with_usage_of_that_month(kit: Kit) -> None:
    add_account(kit.db, "acme")
    add_account(kit.db, "beta")
    add_account(kit.db, "idle")
    add_usage(kit.db, "acme", "a1", 400_000, credit=400_000, model="m-a")
    add_usage(kit.db, "acme", "a2", 300_000, credit=100_000, model="m-a")
    add_usage(kit.db, "acme", "a3", 90_000, model="m-b", kind="completion", prompt=3)
    add_usage(kit.db, "acme", "a-feb", 999, when=FEB)  # February: not in January's invoice
    add_usage(kit.db, "beta", "b1", 250_000, credit=250_000)
    kit.clock.set(FEB + timedelta(days=1))

    report = kit.closer.close_period("2026-01")

    assert len(report.invoice_ids) == 2
    assert (report.paid, report.open, report.payment_failed, report.late_records) == (1, 1, 0, 0)
    acme = only_invoice(kit.db, "acme")
    assert (acme.period, acme.state) == ("2026-01", "OPEN")
    assert (acme.usage_micros, acme.credits_applied_micros, acme.total_micros) == (
        790_000,
        500_000,
        290_000,
    )
    beta = only_invoice(kit.db, "beta")  # fully covered by credits: nothing to charge
    assert (beta.state, beta.total_micros, beta.paid_time) == ("PAID", 0, kit.clock.now())
    assert count(kit.db, PaymentRow) == 0
    with kit.db.transaction() as s:
        lines = s.scalars(
            select(InvoiceLineRow).where(InvoiceLineRow.invoice_id == acme.id)
            .order_by(InvoiceLineRow.model)
        ).all()  # fmt: skip
        assert [
            (x.model, x.kind, x.requests, x.prompt_tokens, x.amount_micros, x.credit_applied_micros)
            for x in lines
        ] == [("m-a", "chat", 2, 20, 700_000, 500_000), ("m-b", "completion", 1, 3, 90_000, 0)]
    assert sorted(kit.listener.calls) == ["acme", "beta"]


def test_closing_twice_changes_nothing_and_late_usage_is_reported(kit: Kit) -> None:
    add_account(kit.db, "acme", card="pm_card_visa")
    add_usage(kit.db, "acme", "r1", 1_000_000)
    kit.clock.set(FEB)
    first = kit.closer.close_period("2026-01")
    assert (len(first.invoice_ids), first.paid) == (1, 1)

    add_usage(kit.db, "acme", "late-1", 500_000, when=JAN + timedelta(days=5))
    add_usage(kit.db, "acme", "late-2", 700_000, when=JAN + timedelta(days=6))
    second = kit.closer.close_period("2026-01")

    assert (second.invoice_ids, second.already_invoiced, second.late_records) == ([], 1, 2)
    invoice = only_invoice(kit.db, "acme")
    assert (invoice.total_micros, invoice.state) == (1_000_000, "PAID")
    assert [p.amount_micros for p in payments(kit.db, "acme")] == [1_000_000]
    assert kit.provider.charged_cents("acme") == 100
    assert billing_row(kit.db, "acme").historical_spend_micros == 1_000_000
    assert kit.closer.close_due_periods() == []  # late usage does not reopen the month


def test_two_replicas_closing_at_once_make_one_invoice_each(database: Database) -> None:
    kit = make_kit(database)
    other = InvoiceService(database, kit.clock, kit.provider, RecordingListener())
    replica = PeriodCloser(database, kit.clock, other, RecordingListener())
    for n in range(6):
        add_account(database, f"acct-{n}", card="pm_card_visa")
        add_usage(database, f"acct-{n}", f"r{n}", 20_000 * (n + 1))
    kit.clock.set(FEB)
    barrier = threading.Barrier(2)
    reports = []

    def close(closer: PeriodCloser) -> None:
        barrier.wait()
        reports.append(closer.close_period("2026-01"))

    threads = [threading.Thread(target=close, args=(c,)) for c in (kit.closer, replica)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    assert len(reports) == 2
    assert sum(len(r.invoice_ids) for r in reports) == 6
    assert sum(r.already_invoiced for r in reports) == 6
    assert count(database, InvoiceRow) == 6
    assert count(database, PaymentRow) == 6
    for n in range(6):
        assert kit.provider.charged_cents(f"acct-{n}") == 2 * (n + 1)
        assert only_invoice(database, f"acct-{n}").state == "PAID"


def test_close_due_periods_closes_every_ended_month_once(kit: Kit) -> None:
    add_account(kit.db, "acme")
    add_usage(kit.db, "acme", "d1", 10, when=datetime(2025, 11, 3, tzinfo=UTC))
    add_usage(kit.db, "acme", "j1", 20)
    add_usage(kit.db, "acme", "f1", 30, when=FEB)
    kit.clock.set(FEB + timedelta(days=2))
    assert kit.closer.close_due_periods() == ["2025-11", "2026-01"]
    assert kit.closer.close_due_periods() == []

    add_account(kit.db, "late")  # an account whose only January usage came late
    add_usage(kit.db, "late", "l1", 40)
    kit.clock.set(MAR)
    assert kit.closer.close_due_periods() == ["2026-01", "2026-02"]
    assert count(kit.db, InvoiceRow) == 4


def test_the_job_waits_for_the_grace_but_a_close_by_hand_does_not(database: Database) -> None:
    kit = make_kit(database)
    add_account(database, "acme")
    add_account(database, "beta")
    add_usage(database, "acme", "a1", 20)
    add_usage(database, "beta", "b1", 30)
    kit.clock.set(FEB)  # January ended 1 second ago: a replica may still hold its records
    assert kit.closer.close_due_periods() == []
    kit.clock.set(FEB + timedelta(minutes=59, seconds=58))
    assert kit.closer.close_due_periods() == []
    assert count(database, InvoiceRow) == 0
    add_usage(database, "acme", "a-late", 50, when=FEB - timedelta(seconds=2))
    kit.clock.set(FEB + timedelta(hours=1) - timedelta(seconds=1))  # exactly end + grace
    assert kit.closer.close_due_periods() == ["2026-01"]
    assert only_invoice(database, "acme").usage_micros == 70  # the late record is in
    assert count(database, InvoiceRow) == 2

    by_hand = PeriodCloser(database, kit.clock, kit.invoices, kit.listener, rescan_s=0)
    add_account(database, "gamma")
    add_usage(database, "gamma", "g1", 10, when=FEB + timedelta(days=3))
    kit.clock.set(datetime(2026, 3, 1, 0, 0, 1, tzinfo=UTC))
    assert by_hand.close_due_periods() == []
    assert len(by_hand.close_period("2026-02").invoice_ids) == 1  # the CLI closes at once
    no_grace = PeriodCloser(database, kit.clock, kit.invoices, kit.listener, grace=timedelta(0))
    assert no_grace.close_due_periods() == []  # nothing left: February is invoiced


def test_full_rescans_are_rationed_within_a_month(database: Database) -> None:
    kit = make_kit(database)
    closer = PeriodCloser(database, kit.clock, kit.invoices, kit.listener, rescan_s=3600)
    add_account(database, "acme")
    kit.clock.set(FEB + timedelta(hours=2))
    assert closer.close_due_periods() == []
    add_usage(database, "acme", "j1", 20)
    kit.clock.advance(timedelta(minutes=10))
    assert closer.close_due_periods() == []  # scanned 10 minutes ago: not yet
    kit.clock.advance(timedelta(hours=1))
    assert closer.close_due_periods() == ["2026-01"]


def test_job_round_closes_retries_and_runs_the_extra_chore(kit: Kit) -> None:
    chores: list[int] = []
    job = PeriodCloseJob(kit.closer, kit.invoices, kit.clock, extra=lambda: chores.append(1))
    add_account(kit.db, "acme", card="pm_card_chargeDeclined")
    add_usage(kit.db, "acme", "r1", 3_000_000)
    kit.clock.set(FEB + timedelta(hours=1))

    first = job.run_once()
    assert (first.closed_periods, first.payment_attempts, first.errors) == (["2026-01"], 0, [])
    assert only_invoice(kit.db, "acme").state == "PAYMENT_FAILED"
    kit.clock.advance(timedelta(days=1))
    second = job.run_once()
    assert (second.closed_periods, second.payment_attempts) == ([], 1)
    assert only_invoice(kit.db, "acme").attempt_count == 2
    assert chores == [1, 1]


def test_job_survives_a_failing_chore_and_runs_in_a_thread(kit: Kit) -> None:
    ran = threading.Event()

    def chore() -> None:
        ran.set()
        raise RuntimeError("credit expiry broke")

    job = PeriodCloseJob(kit.closer, kit.invoices, kit.clock, interval_s=0.01, extra=chore)
    assert job.run_once().errors == ["extra: credit expiry broke"]
    ran.clear()
    job.start()
    try:
        assert ran.wait(5)
        ran.clear()
        assert ran.wait(5)  # it keeps going after the failure
    finally:
        job.stop()
