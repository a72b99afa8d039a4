"""Suspension: each reason raised and lifted, the column, the audit rows, the hooks."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from firebox.accounts.models import AccountRow
from firebox.clock import FakeClock
from firebox.limits.hooks import Reason, SuspensionHooks
from firebox.limits.models import AuditLogRow, SuspensionReasonRow
from firebox.limits.spend_guard import InProcessSpendGuard, Refusal, Reservation
from firebox.limits.suspension import SuspensionService
from firebox.store.database import Database
from tests.limits.test_spend_guard import DOLLAR, FakeMoney

START = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


class FakeScaler:
    """Stands in for the deployments slice: records every flip it is told about."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool, tuple[str, ...]]] = []

    def __call__(self, account_id: str, suspended: bool, reasons: tuple[str, ...]) -> None:
        self.calls.append((account_id, suspended, reasons))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def money() -> FakeMoney:
    m = FakeMoney()
    m.set("acme", usage=0, credit=DOLLAR, payment_method=False, limit=50 * DOLLAR)
    return m


@pytest.fixture
def scaler() -> FakeScaler:
    return FakeScaler()


@pytest.fixture
def service(
    database: Database, clock: FakeClock, money: FakeMoney, scaler: FakeScaler
) -> SuspensionService:
    with database.transaction() as session:
        for account_id in ("acme", "other"):
            session.add(
                AccountRow(id=account_id, create_time=START, update_time=START, display_name="x")
            )
    hooks = SuspensionHooks()

    def broken(account_id: str, suspended: bool, reasons: tuple[str, ...]) -> None:
        raise RuntimeError("a subscriber failed")

    hooks.register(broken)  # its error is logged; the next subscriber still runs
    hooks.register(scaler)
    return SuspensionService(database, clock, money, hooks, cache_ttl_s=1.0)


def column(db: Database, account_id: str = "acme") -> str:
    with db.transaction() as session:
        row = session.get(AccountRow, account_id)
        assert row is not None
        return row.suspend_state


def audit(db: Database, account_id: str = "acme") -> list[tuple[str, str, dict[str, object]]]:
    with db.transaction() as session:
        rows = session.scalars(
            select(AuditLogRow).where(AuditLogRow.account_id == account_id).order_by(AuditLogRow.id)
        ).all()
        return [(r.action, r.actor, json.loads(r.detail)) for r in rows]


def test_raise_and_lift_write_rows_column_audit_and_hooks_once_per_flip(
    service: SuspensionService, database: Database, scaler: FakeScaler
) -> None:
    assert service.reasons("acme") == ()
    assert service.raise_reason("acme", Reason.FAILED_PAYMENTS, "invoice failed") is True
    assert service.raise_reason("acme", Reason.FAILED_PAYMENTS, "invoice failed") is False
    assert service.raise_reason("acme", Reason.BLOCKED_BY_ABUSE_RULE, "spam", actor="op") is True
    assert service.reasons("acme") == ("BLOCKED_BY_ABUSE_RULE", "FAILED_PAYMENTS")
    assert column(database) == "BLOCKED_BY_ABUSE_RULE"
    assert service.lift("acme", Reason.BLOCKED_BY_ABUSE_RULE, actor="op") is True
    assert column(database) == "FAILED_PAYMENTS"
    assert service.lift("acme", Reason.BLOCKED_BY_ABUSE_RULE) is False
    assert service.lift("acme", Reason.FAILED_PAYMENTS) is True
    assert service.reasons("acme") == ()
    assert column(database) == "UNSUSPENDED"
    assert scaler.calls == [
        ("acme", True, ("FAILED_PAYMENTS",)),
        ("acme", False, ()),
    ]
    entries = audit(database)
    assert [(a, actor) for a, actor, _ in entries] == [
        ("SUSPENDED", "system"),
        ("REASON_ADDED", "op"),
        ("REASON_LIFTED", "op"),
        ("UNSUSPENDED", "system"),
    ]
    assert entries[1][2] == {
        "reason": "BLOCKED_BY_ABUSE_RULE",
        "detail": "spam",
        "period": None,
        "reasonsBefore": ["FAILED_PAYMENTS"],
        "reasonsAfter": ["BLOCKED_BY_ABUSE_RULE", "FAILED_PAYMENTS"],
    }
    assert entries[3][2] == {
        "reason": "FAILED_PAYMENTS",
        "reasonsBefore": ["FAILED_PAYMENTS"],
        "reasonsAfter": [],
    }
    assert audit(database, "other") == []


def test_reasons_are_cached_for_the_ttl(
    service: SuspensionService, database: Database, clock: FakeClock
) -> None:
    assert service.reasons_cached("acme") is None
    assert service.reasons("acme") == ()
    assert service.reasons_cached("acme") == ()
    # Another replica raises a reason: this one sees it once its cache expires.
    with database.transaction() as session:
        session.add(
            SuspensionReasonRow(
                account_id="acme", reason="FAILED_PAYMENTS", detail="", period=None, since=START
            )
        )
    assert service.reasons("acme") == ()
    clock.advance(timedelta(seconds=1))
    assert service.reasons_cached("acme") is None
    assert service.reasons("acme") == ("FAILED_PAYMENTS",)


def test_money_changed_credit_depleted_and_payment_method(
    service: SuspensionService, database: Database, money: FakeMoney, scaler: FakeScaler
) -> None:
    service.money_changed("acme")  # a fresh account with $1 is fine
    assert service.reasons("acme") == ()
    money.update("acme", credit_balance_micros=0, period_usage_micros=DOLLAR)
    service.money_changed("acme")
    assert service.reasons("acme") == ("CREDIT_DEPLETED",)
    assert column(database) == "CREDIT_DEPLETED"
    service.money_changed("acme")  # nothing changed: no second audit row, no second hook
    money.update("acme", has_payment_method=True)
    service.money_changed("acme")
    assert service.reasons("acme") == ()
    assert [a for a, _, _ in audit(database)] == ["SUSPENDED", "UNSUSPENDED"]
    assert scaler.calls == [("acme", True, ("CREDIT_DEPLETED",)), ("acme", False, ())]


def test_money_changed_buying_credits_lifts_credit_depleted(
    service: SuspensionService, money: FakeMoney
) -> None:
    money.update("acme", credit_balance_micros=0, period_usage_micros=DOLLAR)
    service.money_changed("acme")
    assert service.reasons("acme") == ("CREDIT_DEPLETED",)
    money.update("acme", credit_balance_micros=5 * DOLLAR)
    service.money_changed("acme")
    assert service.reasons("acme") == ()


def test_money_changed_failed_payments(
    service: SuspensionService, money: FakeMoney, database: Database
) -> None:
    money.update("acme", failed_payments=True, spend_limit_micros=0, has_payment_method=True)
    service.money_changed("acme")
    assert service.reasons("acme") == ("FAILED_PAYMENTS",)  # the $0 limit is not a second reason
    money.update("acme", failed_payments=False, spend_limit_micros=50 * DOLLAR)
    service.money_changed("acme")
    assert service.reasons("acme") == ()
    assert column(database) == "UNSUSPENDED"


def test_monthly_limit_lifts_when_the_limit_rises(
    database: Database, clock: FakeClock, money: FakeMoney, scaler: FakeScaler
) -> None:
    committed = {"acme": 0}
    with database.transaction() as session:
        session.add(AccountRow(id="acme", create_time=START, update_time=START))
    hooks = SuspensionHooks()
    hooks.register(scaler)
    service = SuspensionService(database, clock, money, hooks, committed=committed.get)
    money.update("acme", has_payment_method=True, spend_limit_micros=10 * DOLLAR)
    money.update("acme", period_usage_micros=9 * DOLLAR)
    committed["acme"] = 10 * DOLLAR  # the guard is ahead of the ledger
    service.money_changed("acme")
    assert service.reasons("acme") == ("MONTHLY_SPEND_LIMIT_EXCEEDED",)
    assert service.active("acme")[0].period == "2026-03"
    money.update("acme", spend_limit_micros=10 * DOLLAR + 1)
    service.money_changed("acme")
    assert service.reasons("acme") == ()
    assert scaler.calls == [
        ("acme", True, ("MONTHLY_SPEND_LIMIT_EXCEEDED",)),
        ("acme", False, ()),
    ]


def test_monthly_limit_lifts_by_itself_when_the_month_rolls_over(
    service: SuspensionService, database: Database, clock: FakeClock, scaler: FakeScaler
) -> None:
    assert service.raise_reason("acme", Reason.MONTHLY_SPEND_LIMIT_EXCEEDED, "limit reached")
    assert service.active("acme")[0].period == "2026-03"
    assert service.reasons_cached("acme") == ("MONTHLY_SPEND_LIMIT_EXCEEDED",)
    clock.set(datetime(2026, 4, 1, tzinfo=UTC))
    assert service.reasons_cached("acme") is None  # never served stale across the roll
    assert service.reasons("acme") == ()
    assert column(database) == "UNSUSPENDED"
    entries = audit(database)
    assert [a for a, _, _ in entries] == ["SUSPENDED", "UNSUSPENDED"]
    assert entries[1][2]["note"] == "the month rolled over"
    assert scaler.calls[-1] == ("acme", False, ())
    assert len(scaler.calls) == 2


def test_monthly_reason_of_the_new_month_replaces_the_old(
    service: SuspensionService, clock: FakeClock
) -> None:
    service.raise_reason("acme", Reason.MONTHLY_SPEND_LIMIT_EXCEEDED, "march", period="2026-03")
    clock.set(datetime(2026, 4, 2, tzinfo=UTC))
    service.raise_reason("acme", Reason.MONTHLY_SPEND_LIMIT_EXCEEDED, "april")
    active = service.active("acme")
    assert [(a.reason, a.period, a.detail) for a in active] == [
        ("MONTHLY_SPEND_LIMIT_EXCEEDED", "2026-04", "april")
    ]


def test_unknown_account_changes_nothing(service: SuspensionService, scaler: FakeScaler) -> None:
    assert service.raise_reason("ghost", Reason.FAILED_PAYMENTS) is False
    assert service.reasons("ghost") == ()
    assert scaler.calls == []


def test_reasons_async_reads_in_a_thread_on_a_miss(service: SuspensionService) -> None:
    service.raise_reason("acme", Reason.FAILED_PAYMENTS)
    assert asyncio.run(service.reasons_async("acme")) == ("FAILED_PAYMENTS",)
    service._cache.clear()
    assert asyncio.run(service.reasons_async("acme")) == ("FAILED_PAYMENTS",)


def test_concurrent_raises_suspend_once(
    database: Database, clock: FakeClock, money: FakeMoney, scaler: FakeScaler
) -> None:
    """Replicas racing to raise the same reason: one row, one audit entry, one hook call."""
    import threading

    with database.transaction() as session:
        session.add(AccountRow(id="acme", create_time=START, update_time=START))
    replicas = []
    for _ in range(8):
        hooks = SuspensionHooks()
        hooks.register(scaler)
        replicas.append(SuspensionService(database, clock, money, hooks))
    barrier = threading.Barrier(len(replicas))

    def race(service: SuspensionService) -> None:
        barrier.wait()
        service.raise_reason("acme", Reason.FAILED_PAYMENTS, "race")

    threads = [threading.Thread(target=race, args=(s,)) for s in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [a for a, _, _ in audit(database)] == ["SUSPENDED"]
    assert scaler.calls == [("acme", True, ("FAILED_PAYMENTS",))]
    assert column(database) == "FAILED_PAYMENTS"


# -- a hard refusal's reason stays until what it was raised for changes -------------


class Refused:
    """A spend guard and a suspension service wired as admission wires them."""

    def __init__(self, database: Database, clock: FakeClock, money: FakeMoney) -> None:
        with database.transaction() as session:
            session.add(AccountRow(id="acme", create_time=START, update_time=START))
        self.guard = InProcessSpendGuard(money, clock)
        self.service = SuspensionService(
            database, clock, money, SuspensionHooks(), committed=self.guard.committed
        )

    def refuse(self, worst: int, *, cap_micros: bool = False) -> Refusal:
        """Reserve ``worst``; it must be refused hard, and it suspends as admission does."""
        refusal = asyncio.run(self.guard.reserve("acme", worst))
        assert isinstance(refusal, Refusal) and refusal.hard
        self.service.raise_reason(
            "acme",
            refusal.reason.value,
            f"usage reached the cap of {refusal.limit_micros} micro-USD",
            period=refusal.period,
            cap_micros=refusal.limit_micros if cap_micros else None,
        )
        return refusal

    def money_changed(self) -> tuple[str, ...]:
        self.guard.money_changed("acme")
        self.service.money_changed("acme")
        return self.service.reasons("acme")


@pytest.fixture
def refused(database: Database, clock: FakeClock, money: FakeMoney) -> Refused:
    return Refused(database, clock, money)


def test_monthly_refusal_stays_until_the_limit_rises(
    refused: Refused, money: FakeMoney, database: Database
) -> None:
    money.set("acme", usage=9 * DOLLAR + DOLLAR // 2, limit=10 * DOLLAR, payment_method=True)
    refusal = refused.refuse(DOLLAR)  # 9.5 + 1 > 10, with nothing else in flight
    assert refusal.reason == Reason.MONTHLY_SPEND_LIMIT_EXCEEDED
    assert refused.service.reasons("acme") == ("MONTHLY_SPEND_LIMIT_EXCEEDED",)
    (active,) = refused.service.active("acme")
    assert active.detail == "usage reached the cap of 10000000 micro-USD"
    assert refused.money_changed() == ("MONTHLY_SPEND_LIMIT_EXCEEDED",)  # unchanged limit
    money.update("acme", period_usage_micros=9_700_000)  # a usage batch reached the ledger
    assert refused.money_changed() == ("MONTHLY_SPEND_LIMIT_EXCEEDED",)
    money.update("acme", spend_limit_micros=9 * DOLLAR)  # lowered: stays
    assert refused.money_changed() == ("MONTHLY_SPEND_LIMIT_EXCEEDED",)
    money.update("acme", spend_limit_micros=10 * DOLLAR)  # back to the recorded limit: stays
    assert refused.money_changed() == ("MONTHLY_SPEND_LIMIT_EXCEEDED",)
    money.update("acme", spend_limit_micros=11 * DOLLAR)  # raised above it: lifted
    assert refused.money_changed() == ()
    # The very next reservation sees the raised limit (the guard dropped its snapshot).
    assert isinstance(asyncio.run(refused.guard.reserve("acme", DOLLAR)), Reservation)
    entries = audit(database)
    assert [a for a, _, _ in entries] == ["SUSPENDED", "UNSUSPENDED"]
    assert entries[0][2]["cap"] == {"period": "2026-03", "limitMicros": 10 * DOLLAR}
    assert entries[0][2]["detail"] == "usage reached the cap of 10000000 micro-USD"


def test_monthly_refusal_lifts_when_the_limit_is_removed_or_the_month_rolls(
    refused: Refused, money: FakeMoney, clock: FakeClock
) -> None:
    money.set("acme", usage=10 * DOLLAR, limit=10 * DOLLAR, payment_method=True)
    refused.refuse(1)
    money.update("acme", spend_limit_micros=None)
    assert refused.money_changed() == ()
    money.update("acme", spend_limit_micros=10 * DOLLAR)
    assert refused.money_changed() == ("MONTHLY_SPEND_LIMIT_EXCEEDED",)  # reached: raised
    clock.set(datetime(2026, 4, 1, tzinfo=UTC))
    money.set("acme", period="2026-04", usage=0, limit=10 * DOLLAR, payment_method=True)
    assert refused.money_changed() == ()


def test_credit_refusal_stays_while_only_usage_moves(
    refused: Refused, money: FakeMoney, database: Database
) -> None:
    money.set("acme", usage=700_000, credit=300_000, payment_method=False, limit=50 * DOLLAR)
    refusal = refused.refuse(500_000)  # 0.7 + 0.5 > 0.7 + 0.3
    assert (refusal.reason, refusal.limit_micros) == (Reason.CREDIT_DEPLETED, DOLLAR)
    assert refused.service.reasons("acme") == ("CREDIT_DEPLETED",)
    assert refused.money_changed() == ("CREDIT_DEPLETED",)  # the balance is still 0.3 > 0
    money.update("acme", period_usage_micros=900_000, credit_balance_micros=100_000)
    assert refused.money_changed() == ("CREDIT_DEPLETED",)  # usage moved credit to usage
    money.update("acme", period_usage_micros=1_050_000, credit_balance_micros=0)
    assert refused.money_changed() == ("CREDIT_DEPLETED",)  # usage past the credits
    assert [a for a, _, _ in audit(database)] == ["SUSPENDED"]
    assert audit(database)[0][2]["cap"] == {
        "period": "2026-03",
        "creditCapMicros": DOLLAR,
        "creditBalanceMicros": 300_000,
        "paymentMethod": False,
    }


@pytest.mark.parametrize(
    ("change", "lifted"),
    [
        ({"has_payment_method": True}, True),
        ({"credit_balance_micros": 5 * DOLLAR}, True),  # bought or granted
        ({"credit_balance_micros": 300_001}, True),  # one micro granted is enough
        ({"credit_balance_micros": 300_000}, False),
        ({"spend_limit_micros": 100 * DOLLAR}, False),  # the limit is not the credit cap
    ],
)
def test_credit_refusal_lifts_on_a_payment_method_or_a_grant(
    refused: Refused, money: FakeMoney, change: dict[str, object], lifted: bool
) -> None:
    money.set("acme", usage=700_000, credit=300_000, payment_method=False, limit=50 * DOLLAR)
    refused.refuse(500_000)
    money.update("acme", **change)
    assert refused.money_changed() == (() if lifted else ("CREDIT_DEPLETED",))


def test_credit_refusal_of_a_past_month_lifts_only_on_new_credit(
    refused: Refused, money: FakeMoney, clock: FakeClock
) -> None:
    money.set("acme", usage=700_000, credit=300_000, payment_method=False)
    refused.refuse(500_000)
    clock.set(datetime(2026, 4, 1, tzinfo=UTC))
    money.set("acme", period="2026-04", usage=0, credit=300_000, payment_method=False)
    assert refused.money_changed() == ("CREDIT_DEPLETED",)  # the new month brought no credit
    money.update("acme", credit_balance_micros=2 * DOLLAR)
    assert refused.money_changed() == ()


def test_a_refusal_judged_against_an_older_cap_suspends_nothing(
    refused: Refused, money: FakeMoney
) -> None:
    money.set("acme", usage=9 * DOLLAR, limit=10 * DOLLAR, payment_method=True)
    asyncio.run(refused.guard.reserve("acme", 1))  # the guard caches the $10 snapshot
    money.update("acme", spend_limit_micros=20 * DOLLAR)  # raised; money_changed not yet run
    refused.refuse(2 * DOLLAR, cap_micros=True)
    assert refused.service.reasons("acme") == ()


def test_a_reason_without_a_recorded_cap_lifts_by_the_old_rule(
    service: SuspensionService, database: Database, money: FakeMoney
) -> None:
    with database.transaction() as session:
        session.add(
            SuspensionReasonRow(
                account_id="acme", reason="CREDIT_DEPLETED", detail="old", since=START
            )
        )
    service.money_changed("acme")  # $1 of credit left
    assert service.reasons("acme") == ()
