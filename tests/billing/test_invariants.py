"""Billing invariants under random sequences of money events (hypothesis).

Each example runs a random sequence of: usage (priced and written by the
ledger, sometimes late, into the previous month), credit purchases (with a
working or a declining card), operator grants with or without expiry,
credit expiry, clock moves across months, period closes with their payments
and retries, payments by hand, card changes, and replays of any earlier
replayable event. After every step the cached balances must equal the sums
of the ledger rows they cache, nothing may go negative, every invoice must
add up, historical spend and tier never fall, and a replay changes nothing.
A fixed seeded sequence must end with identical money on SQLite and
PostgreSQL (when FIREBOX_TEST_DATABASE_URL is set).
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, func, select

from firebox.accounts.models import AccountRow
from firebox.accounts.principal import Principal
from firebox.accounts.roles import Role
from firebox.billing.events import NoListener
from firebox.billing.ledger import Ledger
from firebox.billing.models import (
    BillingAccountRow,
    CreditEntryRow,
    CreditGrantRow,
    InvoiceLineRow,
    InvoiceRow,
    PaymentMethodRow,
    PaymentRow,
    UsageRecordRow,
)
from firebox.billing.money import MICROS_PER_CENT, cents_up
from firebox.billing.overrides import NoOverrides
from firebox.billing.payments.test_provider import TestPaymentProvider
from firebox.billing.price_book import PriceBook
from firebox.billing.pricing import PricedUsage, Pricer
from firebox.billing.service import BillingService
from firebox.clock import FakeClock
from firebox.errors import FailedPrecondition, InvalidArgument, PaymentRequired
from firebox.inference.metering import UsageRecord
from firebox.store.database import Database
from tests.conftest import PG_URL, make_database

ACCOUNTS = ("acct-a", "acct-b")
START = datetime(2026, 1, 20, 9, 0, tzinfo=UTC)
OPERATOR = Principal("root", "operator", 0, Role.ADMIN, "op", "op", is_operator=True)
MODEL = "accounts/fireworks/models/small"
E, Inv, L, P, U = CreditEntryRow, InvoiceRow, InvoiceLineRow, PaymentRow, UsageRecordRow
TABLES = (  # children first
    InvoiceLineRow,
    InvoiceRow,
    PaymentRow,
    PaymentMethodRow,
    CreditEntryRow,
    UsageRecordRow,
    CreditGrantRow,
    BillingAccountRow,
    AccountRow,
)

Op = tuple[Any, ...]
account = st.sampled_from(ACCOUNTS)
OPS = st.one_of(
    st.tuples(
        st.just("usage"),
        account,
        st.integers(0, 200_000_000),  # prompt tokens ($0.20 / 1M: up to $40)
        st.integers(0, 20_000_000),  # completion tokens
        st.integers(0, 100),  # cached percent of the prompt
        st.booleans(),  # late: dated into the previous month
    ),
    st.tuples(st.just("purchase"), account, st.integers(1, 60)),
    st.tuples(
        st.just("grant"), account, st.integers(1, 20_000_000), st.sampled_from([None, 1, 10, 40])
    ),
    st.tuples(st.just("expire")),
    st.tuples(st.just("advance"), st.integers(1, 24 * 25)),
    st.tuples(st.just("close")),
    st.tuples(
        st.just("card"), account, st.sampled_from(["pm_card_visa", "pm_card_chargeDeclined", None])
    ),
    st.tuples(st.just("pay"), account),
    st.tuples(st.just("replay"), st.integers(0, 10_000)),
)


@dataclass
class World:
    """BillingService + Ledger + the job's steps on one database, under a fake clock."""

    db: Database
    clock: FakeClock = field(default_factory=lambda: FakeClock(START))
    provider: TestPaymentProvider = field(default_factory=TestPaymentProvider)
    replayable: list[Op] = field(default_factory=list)
    last: dict[str, tuple[int, int]] = field(default_factory=dict)
    n: int = 0

    def __post_init__(self) -> None:
        book = PriceBook.load()
        self.pricer = Pricer(book, NoOverrides(), clock=self.clock)
        self.ledger = Ledger(self.db, self.clock, NoListener(), book)
        self.billing = BillingService(self.db, self.clock, self.pricer, self.provider, NoListener())
        with self.db.transaction() as s:
            for a in ACCOUNTS:
                s.add(AccountRow(id=a, create_time=START, update_time=START))
        for a in ACCOUNTS:
            self.billing.open_account(a)

    def step(self, op: Op) -> None:
        self.n += 1
        self.clock.advance(timedelta(minutes=1))  # no two events at the same instant
        kind = op[0]
        if kind == "replay":
            if self.replayable:
                self.replay(self.replayable[op[1] % len(self.replayable)])
            return
        getattr(self, f"do_{kind}")(*op[1:])

    def do_usage(self, acct: str, prompt: int, completion: int, cached: int, late: bool) -> None:
        when = self.clock.now() - (timedelta(days=32) if late else timedelta(0))
        record = UsageRecord(
            request_id=f"req-{self.n}", account_id=acct, model=MODEL, base_model=MODEL,
            kind="chat", time=when, prompt_tokens=prompt, completion_tokens=completion,
            cached_prompt_tokens=prompt * cached // 100, price_class="TEXT_DENSE_UP_TO_16B",
        )  # fmt: skip
        priced = self.pricer.price(record)
        assert self.ledger.apply([priced]) == 1
        self.replayable.append(("usage", priced))

    def do_purchase(self, acct: str, dollars: int) -> None:
        """A purchase refused before any charge (no card) records nothing: not replayable."""
        key = f"buy-{self.n}"
        try:
            self._purchase(acct, dollars, key)
        except FailedPrecondition as refused:
            assert refused.code == "payment_method_required"
            return
        self.replayable.append(("purchase", acct, dollars, key))

    def _purchase(self, acct: str, dollars: int, key: str) -> None:
        with contextlib.suppress(PaymentRequired):
            self.billing.purchase_credits(OPERATOR, acct, dollars * 1_000_000, key)

    def do_grant(self, acct: str, micros: int, days: int | None) -> None:
        expire = None if days is None else self.clock.now() + timedelta(days=days)
        key = f"grant-{self.n}"
        self.billing.grant_credits(OPERATOR, acct, micros, "test", expire, idempotency_key=key)
        self.replayable.append(("grant", acct, micros, expire, key))

    def do_expire(self) -> None:
        """Expiry depends on the time, so its replay is a second run at the same instant."""
        self.billing.expire_credits()
        before = money(self.db)
        assert self.billing.expire_credits() == 0
        assert money(self.db) == before

    def do_advance(self, hours: int) -> None:
        self.clock.advance(timedelta(hours=hours))

    def do_close(self) -> None:
        """One round of the job; replayed at once (later, late usage may be due a close)."""
        closed = self.billing.close_due_periods()
        self.billing.retry_failed_payments()
        before = money(self.db)
        for period in closed:
            assert self.billing.close_period(period).invoice_ids == []
        assert self.billing.retry_failed_payments() == []
        assert money(self.db) == before

    def do_card(self, acct: str, card: str | None) -> None:
        for method in self.billing.list_payment_methods(OPERATOR, acct):
            self.billing.delete_payment_method(OPERATOR, acct, method.id)
        if card is not None:
            self.billing.add_payment_method(OPERATOR, acct, card)

    def do_pay(self, acct: str) -> None:
        for invoice in self.billing.list_invoices(OPERATOR, acct, 200, None).invoices:
            if invoice.state in ("OPEN", "PAYMENT_FAILED"):
                with contextlib.suppress(FailedPrecondition, PaymentRequired):
                    self.billing.pay_invoice(OPERATOR, acct, invoice.id)

    def replay(self, op: Op) -> None:
        before = money(self.db)
        kind = op[0]
        if kind == "usage":
            priced: PricedUsage = op[1]
            assert self.ledger.apply([priced]) == 0
        elif kind == "purchase":
            self._purchase(op[1], op[2], op[3])
        elif kind == "grant":
            try:
                self.billing.grant_credits(
                    OPERATOR, op[1], op[2], "test", op[3], idempotency_key=op[4]
                )
            except InvalidArgument as refused:  # its expiry has passed since: refused
                assert refused.code == "invalid_expire_time"
        assert money(self.db) == before, f"replaying {kind} changed money"

    def check(self) -> None:
        """Every invariant of the ledger, after any step."""
        with self.db.transaction() as s:
            for row in s.scalars(select(BillingAccountRow)):
                a = row.account_id
                assert row.credit_balance_micros == _sum(s, E.amount_micros, E.account_id == a)
                assert row.credit_balance_micros >= 0
                paid = _sum(s, P.amount_micros, P.account_id == a, P.state == "SUCCEEDED")
                assert row.historical_spend_micros == paid
                month = _sum(s, U.amount_micros, U.account_id == a, U.period == row.period)
                assert row.period_usage_micros == month
                failed = _count(s, Inv, Inv.account_id == a, Inv.state == "PAYMENT_FAILED")
                assert row.failed_invoices == failed
                spend, tier = self.last.get(a, (0, 1))
                assert row.historical_spend_micros >= spend and row.tier >= tier
                self.last[a] = (row.historical_spend_micros, row.tier)
                used = _sum(s, U.credit_applied_micros, U.account_id == a)
                assert used == -_sum(s, E.amount_micros, E.account_id == a, E.kind == "USE")
            for grant in s.scalars(select(CreditGrantRow)):
                assert grant.remaining_micros == _sum(s, E.amount_micros, E.grant_id == grant.id)
                assert 0 <= grant.remaining_micros <= grant.amount_micros
            assert not _count(s, U, U.credit_applied_micros > U.amount_micros)
            for inv in s.scalars(select(Inv)):
                assert inv.total_micros == inv.usage_micros - inv.credits_applied_micros >= 0
                lines = (L.invoice_id == inv.id,)
                assert inv.usage_micros == _sum(s, L.amount_micros, *lines)
                assert inv.credits_applied_micros == _sum(s, L.credit_applied_micros, *lines)
                charged = _sum(s, P.amount_micros, P.invoice_id == inv.id, P.state == "SUCCEEDED")
                due = cents_up(inv.total_micros) * MICROS_PER_CENT
                assert charged == (due if inv.state == "PAID" else 0), (inv.state, charged)


def _count(session: Any, table: Any, *where: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(table).where(*where)) or 0)


def _sum(session: Any, column: Any, *where: Any) -> int:
    return int(session.scalar(select(func.coalesce(func.sum(column), 0)).where(*where)) or 0)


def money(db: Database) -> tuple[Any, ...]:
    """Every amount and state, without random ids: equal across replays and backends."""
    with db.transaction() as s:
        accounts = s.execute(
            select(
                BillingAccountRow.account_id, BillingAccountRow.period,
                BillingAccountRow.period_usage_micros, BillingAccountRow.credit_balance_micros,
                BillingAccountRow.historical_spend_micros, BillingAccountRow.tier,
                BillingAccountRow.failed_invoices,
            ).order_by(BillingAccountRow.account_id)
        ).all()  # fmt: skip
        grants = sorted(
            (*g[:4], g[4].isoformat() if g[4] else "")
            for g in s.execute(
                select(
                    CreditGrantRow.account_id,
                    CreditGrantRow.source,
                    CreditGrantRow.amount_micros,
                    CreditGrantRow.remaining_micros,
                    CreditGrantRow.expire_time,
                )
            )
        )
        invoices = s.execute(
            select(
                InvoiceRow.account_id, InvoiceRow.period, InvoiceRow.state,
                InvoiceRow.usage_micros, InvoiceRow.credits_applied_micros,
                InvoiceRow.total_micros, InvoiceRow.attempt_count,
            ).order_by(InvoiceRow.account_id, InvoiceRow.period)
        ).all()  # fmt: skip
        payments = s.scalar(select(func.count()).select_from(PaymentRow))
        records = s.scalar(select(func.count()).select_from(UsageRecordRow))
    return (
        tuple(map(tuple, accounts)),
        tuple(grants),
        tuple(map(tuple, invoices)),
        payments,
        records,
    )


def reset(db: Database) -> None:
    with db.transaction() as s:
        for table in TABLES:
            s.execute(delete(table))


def run(db: Database, ops: list[Op]) -> World:
    reset(db)
    world = World(db)
    world.check()
    for op in ops:
        world.step(op)
        world.check()
    # Every ended month can be closed, and closing it is final.
    world.do_advance(24 * 31)
    world.do_close()
    world.check()
    # With a working card, paying by hand settles every invoice and every failure.
    for acct in ACCOUNTS:
        world.do_card(acct, "pm_card_visa")
        world.do_pay(acct)
    world.check()
    accounts, _, invoices, _, _ = money(db)
    assert {inv[2] for inv in invoices} <= {"PAID"}
    assert [a[6] for a in accounts] == [0] * len(ACCOUNTS)
    return world


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(OPS, min_size=1, max_size=30))
def test_money_invariants_hold_after_every_step(database: Database, ops: list[Op]) -> None:
    run(database, ops)


def seeded_ops(seed: int, count: int) -> list[Op]:
    rng = random.Random(seed)
    cards = ["pm_card_visa", "pm_card_chargeDeclined", None]
    ops: list[Op] = []
    for _ in range(count):
        a = rng.choice(ACCOUNTS)
        usage = ("usage", a, rng.randrange(200_000_000), rng.randrange(20_000_000))
        candidates: list[Op] = [
            (*usage, rng.randrange(101), rng.random() < 0.1),
            ("purchase", a, rng.randint(1, 60)),
            ("grant", a, rng.randint(1, 20_000_000), rng.choice([None, 1, 10, 40])),
            ("expire",),
            ("advance", rng.randint(1, 24 * 25)),
            ("close",),
            ("card", a, rng.choice(cards)),
            ("pay", a),
            ("replay", rng.randrange(10_000)),
        ]
        ops.append(rng.choices(candidates, weights=[4, 1, 1, 1, 2, 1, 1, 1, 1])[0])
    return ops


def test_a_long_seeded_sequence(database: Database) -> None:
    world = run(database, seeded_ops(11, 150))
    assert money(database)[2], "the sequence should have made invoices"
    assert world.provider.charge_count() > 0


@pytest.mark.postgres
@pytest.mark.skipif(PG_URL is None, reason="needs FIREBOX_TEST_DATABASE_URL")
def test_sqlite_and_postgresql_end_with_identical_money(tmp_path: Path) -> None:
    ops = seeded_ops(5, 120)
    results = []
    for backend in ("sqlite", "postgresql"):
        db, drop = make_database(backend, tmp_path)
        try:
            run(db, ops)
            results.append(money(db))
        finally:
            drop()
    assert results[0] == results[1]
