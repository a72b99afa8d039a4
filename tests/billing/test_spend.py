"""SpendState: the effective limit, usage of the current month, payment methods."""

from __future__ import annotations

from datetime import timedelta

from firebox.billing.models import PaymentMethodRow
from firebox.billing.price_book import PriceBook
from firebox.billing.spend import SpendReader
from firebox.clock import FakeClock
from firebox.store.database import Database
from tests.billing.conftest import T0, MakeAccount

BOOK = PriceBook.load()


def reader(db: Database, clock: FakeClock | None = None) -> SpendReader:
    return SpendReader(db, clock or FakeClock(T0), BOOK)


def add_method(db: Database, account_id: str, *, deleted: bool = False) -> None:
    with db.transaction() as session:
        session.add(
            PaymentMethodRow(
                id=f"pm-{account_id}-{deleted}",
                account_id=account_id,
                provider="test",
                provider_ref="pm_card_visa",
                create_time=T0,
                delete_time=T0 if deleted else None,
            )
        )


def test_default_account(billing_db: Database, make_account: MakeAccount) -> None:
    make_account("acme", period_usage_micros=7, credit_balance_micros=1_000_000)
    state = reader(billing_db).spend_state("acme")
    assert state.period == "2026-01"
    assert state.period_usage_micros == 7
    assert state.spend_limit_micros == 50_000_000
    assert state.credit_balance_micros == 1_000_000
    assert (state.has_payment_method, state.failed_payments) == (False, False)


def test_limits(billing_db: Database, make_account: MakeAccount) -> None:
    make_account("rich", historical_spend_micros=1_000_000_000)
    make_account("own", tier=2, account_spend_limit_micros=70_000_000)
    make_account("custom", custom_spend_limit_micros=7_000_000, account_spend_limit_micros=9)
    make_account("free", unlimited=True, custom_spend_limit_micros=1)
    make_account("failed", unlimited=False, failed_invoices=1, tier=4)
    limits = {
        a: reader(billing_db).spend_state(a).spend_limit_micros
        for a in ("rich", "own", "custom", "free", "failed")
    }
    assert limits == {
        "rich": 5_000_000_000,
        "own": 70_000_000,
        "custom": 9,
        "free": None,
        "failed": 0,
    }
    assert reader(billing_db).spend_state("failed").failed_payments is True


def test_payment_methods(billing_db: Database, make_account: MakeAccount) -> None:
    make_account("a")
    make_account("b")
    add_method(billing_db, "a")
    add_method(billing_db, "b", deleted=True)
    assert reader(billing_db).spend_state("a").has_payment_method is True
    assert reader(billing_db).spend_state("b").has_payment_method is False


def test_new_month_has_no_usage_yet(billing_db: Database, make_account: MakeAccount) -> None:
    make_account("acme", period="2026-01", period_usage_micros=40)
    clock = FakeClock(T0)
    clock.advance(timedelta(days=20))
    state = reader(billing_db, clock).spend_state("acme")
    assert (state.period, state.period_usage_micros) == ("2026-02", 0)


def test_account_without_billing_row(billing_db: Database, make_account: MakeAccount) -> None:
    make_account("bare", billing=False)
    add_method(billing_db, "bare")
    state = reader(billing_db).spend_state("bare")
    assert (state.period_usage_micros, state.credit_balance_micros) == (0, 0)
    assert (state.spend_limit_micros, state.has_payment_method) == (50_000_000, True)
