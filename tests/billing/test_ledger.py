"""The ledger writes each request once, consumes credits in order, and rolls periods."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from firebox.billing.bulk import insert_all
from firebox.billing.ledger import ENTRIES, ENTRY_COLUMNS, Ledger, use_reference
from firebox.billing.models import (
    BillingAccountRow,
    CreditEntryRow,
    CreditGrantRow,
    UsageRecordRow,
)
from firebox.billing.overrides import NoOverrides
from firebox.billing.price_book import PriceBook
from firebox.billing.pricing import PricedUsage, Pricer
from firebox.clock import FakeClock
from firebox.errors import ServiceUnavailable
from firebox.store.database import Database
from tests.billing.conftest import T0, AddGrant, MakeAccount, usage

BOOK = PriceBook.load()
PRICER = Pricer(BOOK, NoOverrides())


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def money_changed(self, account_id: str) -> None:
        self.calls.append(account_id)


def priced(amount_tokens: int, **fields: object) -> PricedUsage:
    """A chat record whose amount is ``amount_tokens`` x $0.20/1M (5 tokens = 1 micro)."""
    return PRICER.price(usage(completion_tokens=amount_tokens, **fields))


def micro(n: int, **fields: object) -> PricedUsage:
    """A record costing exactly ``n`` micro-USD (5 tokens per micro at $0.20/1M)."""
    result = priced(5 * n, **fields)
    assert result.amount_micros == n
    return result


def billing(db: Database, account: str = "acme") -> BillingAccountRow:
    with db.transaction() as session:
        row = session.get(BillingAccountRow, account)
        assert row is not None
        return row


def grants(db: Database) -> dict[str, int]:
    with db.transaction() as session:
        return {g.id: g.remaining_micros for g in session.scalars(select(CreditGrantRow))}


def usage_rows(db: Database) -> list[UsageRecordRow]:
    with db.transaction() as session:
        return list(session.scalars(select(UsageRecordRow).order_by(UsageRecordRow.id)))


def entry_sum(db: Database, grant_id: str) -> int:
    with db.transaction() as session:
        total = session.scalar(
            select(func.sum(CreditEntryRow.amount_micros)).where(
                CreditEntryRow.grant_id == grant_id
            )
        )
        return int(total or 0)


@pytest.fixture
def ledger(billing_db: Database, clock: FakeClock) -> Ledger:
    return Ledger(billing_db, clock, Recorder(), BOOK)


def test_writes_records_and_period_usage(
    billing_db: Database, ledger: Ledger, make_account: MakeAccount
) -> None:
    make_account("acme")
    assert ledger.apply([micro(3), micro(4)]) == 2
    rows = usage_rows(billing_db)
    assert [(r.amount_micros, r.credit_applied_micros, r.period) for r in rows] == [
        (3, 0, "2026-01"),
        (4, 0, "2026-01"),
    ]
    assert rows[0].price_version == "2024-01"
    assert rows[0].unit_price_micros == 200_000
    assert billing(billing_db).period_usage_micros == 7


def test_replay_is_a_no_op(
    billing_db: Database, ledger: Ledger, make_account: MakeAccount, add_grant: AddGrant
) -> None:
    make_account("acme")
    add_grant("acme", "g1", 10)
    batch = [micro(3, request_id="a"), micro(4, request_id="b")]
    assert ledger.apply(batch) == 2
    assert ledger.apply(batch) == 0
    overlap = [micro(4, request_id="b"), micro(5, request_id="c")]
    assert ledger.apply(overlap) == 1
    dup = [micro(1, request_id="d"), micro(1, request_id="d"), micro(2, request_id="c")]
    assert ledger.apply(dup) == 1
    row = billing(billing_db)
    assert row.period_usage_micros == 13
    assert row.credit_balance_micros == 0
    assert grants(billing_db) == {"g1": 0}
    assert entry_sum(billing_db, "g1") == 0
    applied = [(r.request_id, r.credit_applied_micros) for r in usage_rows(billing_db)]
    assert applied == [("a", 3), ("b", 4), ("c", 3), ("d", 0)]


def test_credit_order_earliest_expiry_first_never_negative(
    billing_db: Database, ledger: Ledger, make_account: MakeAccount, add_grant: AddGrant
) -> None:
    make_account("acme")
    add_grant("acme", "forever", 100, create_time=T0 - timedelta(days=9))
    add_grant("acme", "late", 10, expire_time=T0 + timedelta(days=20))
    add_grant("acme", "soon", 10, expire_time=T0 + timedelta(days=2))
    add_grant("acme", "soon-b", 10, expire_time=T0 + timedelta(days=2), create_time=T0)
    add_grant(
        "acme", "soon-a", 10, expire_time=T0 + timedelta(days=2), create_time=T0 - timedelta(1)
    )
    assert ledger.apply([micro(15, request_id="r1")]) == 1
    # soon-a was created first; "soon" and "soon-b" tie on expiry and creation: id order.
    assert grants(billing_db) == {"forever": 100, "late": 10, "soon": 5, "soon-b": 10, "soon-a": 0}
    ledger.apply([micro(12, request_id="r2")])
    assert grants(billing_db) == {"forever": 100, "late": 10, "soon": 0, "soon-b": 3, "soon-a": 0}
    ledger.apply([micro(150, request_id="r3")])
    assert grants(billing_db) == {"forever": 0, "late": 0, "soon": 0, "soon-b": 0, "soon-a": 0}
    row = billing(billing_db)
    assert row.credit_balance_micros == 0
    assert row.period_usage_micros == 177
    applied = {r.request_id: r.credit_applied_micros for r in usage_rows(billing_db)}
    assert applied == {"r1": 15, "r2": 12, "r3": 113}
    with billing_db.transaction() as session:
        refs = set(session.scalars(select(CreditEntryRow.reference)))
    assert use_reference("soon-b", ["r2"]) in refs
    for grant_id in ("forever", "late", "soon", "soon-b", "soon-a"):
        assert entry_sum(billing_db, grant_id) == 0


def entries(db: Database) -> list[tuple[str, str, int, str]]:
    with db.transaction() as session:
        rows = session.scalars(
            select(CreditEntryRow).where(CreditEntryRow.kind == "USE").order_by(CreditEntryRow.id)
        )
        return [(e.account_id, e.grant_id, e.amount_micros, e.reference) for e in rows]


def test_one_use_entry_per_grant_and_batch(
    billing_db: Database, ledger: Ledger, make_account: MakeAccount, add_grant: AddGrant
) -> None:
    make_account("acme")
    make_account("beta")
    add_grant("acme", "a1", 10, expire_time=T0 + timedelta(days=1))
    add_grant("acme", "a2", 100)
    add_grant("beta", "b1", 100)
    late = T0 + timedelta(seconds=5)
    batch = [
        micro(4, request_id="x1"),
        micro(9, request_id="x2", time=late),  # 6 from a1 (now empty), 3 from a2
        micro(2, request_id="x3", time=late),  # a2 only
        micro(7, request_id="y1", account_id="beta"),
    ]
    assert ledger.apply(batch) == 4
    assert entries(billing_db) == [
        ("acme", "a1", -10, use_reference("a1", ["x2", "x1"])),
        ("acme", "a2", -5, use_reference("a2", ["x2", "x3"])),
        ("beta", "b1", -7, use_reference("b1", ["y1"])),
    ]
    with billing_db.transaction() as session:
        times = list(
            session.scalars(select(CreditEntryRow.time).where(CreditEntryRow.kind == "USE"))
        )
    assert times == [late, late, T0]  # the latest record that drew on the grant
    assert ledger.apply(batch) == 0  # a replay draws nothing, so writes no entry
    assert ledger.apply([*batch, micro(1, request_id="x4")]) == 1
    assert entries(billing_db)[3:] == [("acme", "a2", -1, use_reference("a2", ["x4"]))]
    assert grants(billing_db) == {"a1": 0, "a2": 94, "b1": 93}
    for grant_id in ("a1", "a2", "b1"):
        assert entry_sum(billing_db, grant_id) == grants(billing_db)[grant_id]
    assert use_reference("a2", ["x3", "x2"]) == use_reference("a2", ["x2", "x3"])
    assert use_reference("a2", ["x2"]) != use_reference("a2", ["x3"])


def test_grant_expired_at_record_time_is_skipped(
    billing_db: Database, ledger: Ledger, make_account: MakeAccount, add_grant: AddGrant
) -> None:
    make_account("acme")
    add_grant("acme", "old", 50, expire_time=T0)
    add_grant("acme", "new", 5)
    ledger.apply([micro(8, request_id="late", time=T0 + timedelta(seconds=1))])
    assert grants(billing_db) == {"old": 50, "new": 0}
    ledger.apply([micro(8, request_id="early", time=T0 - timedelta(seconds=1))])
    assert grants(billing_db) == {"old": 42, "new": 0}
    assert billing(billing_db).credit_balance_micros == 42


def test_period_roll_and_older_records(
    billing_db: Database, ledger: Ledger, make_account: MakeAccount
) -> None:
    make_account("acme", period="2026-01", period_usage_micros=40)
    ledger.apply([micro(5, request_id="feb", time=T0 + timedelta(days=20))])
    row = billing(billing_db)
    assert (row.period, row.period_usage_micros) == ("2026-02", 5)
    ledger.apply([micro(7, request_id="jan", time=T0)])
    row = billing(billing_db)
    assert (row.period, row.period_usage_micros) == ("2026-02", 5)
    periods = {r.request_id: r.period for r in usage_rows(billing_db)}
    assert periods == {"feb": "2026-02", "jan": "2026-01"}


def test_missing_billing_row_is_created(
    billing_db: Database, ledger: Ledger, make_account: MakeAccount
) -> None:
    make_account("solo", billing=False)
    jan, feb = T0, T0 + timedelta(days=20)
    batch = [micro(2, account_id="solo", time=feb), micro(3, account_id="solo", time=jan)]
    assert ledger.apply(batch) == 2
    row = billing(billing_db, "solo")
    assert (row.period, row.period_usage_micros, row.credit_balance_micros) == ("2026-02", 2, 0)


def test_unknown_account_is_dropped(ledger: Ledger, billing_db: Database) -> None:
    assert ledger.apply([micro(2, account_id="ghost")]) == 0
    assert ledger.dropped_unknown_accounts == 1
    assert usage_rows(billing_db) == []


def test_listener_hears_credit_exhaustion_and_limit(
    billing_db: Database, clock: FakeClock, make_account: MakeAccount, add_grant: AddGrant
) -> None:
    listener = Recorder()
    ledger = Ledger(billing_db, clock, listener, BOOK)
    make_account("acme", account_spend_limit_micros=20)
    make_account("other")
    add_grant("acme", "g", 5)
    ledger.apply([micro(3), micro(1, account_id="other")])
    assert listener.calls == []
    ledger.apply([micro(3)])  # credits hit 0
    assert listener.calls == ["acme"]
    ledger.apply([micro(10)])  # usage 16 < 20
    assert listener.calls == ["acme"]
    ledger.apply([micro(4)])  # usage 20: reached the limit
    assert listener.calls == ["acme", "acme"]
    ledger.apply([micro(1)])  # already over: no news
    assert listener.calls == ["acme", "acme"]


def test_concurrent_overlapping_batches_leave_exact_balances(
    billing_db: Database, clock: FakeClock, make_account: MakeAccount, add_grant: AddGrant
) -> None:
    make_account("acme")
    add_grant("acme", "g", 1000)
    records = [micro(3, request_id=f"c{i}") for i in range(400)]
    batches = [records[i : i + 50] for i in range(0, 400, 25)]  # each id in two batches
    ledger = Ledger(billing_db, clock, Recorder(), BOOK)
    errors: list[BaseException] = []

    def run(part: list[list[PricedUsage]]) -> None:
        try:
            for batch in part:
                ledger.apply(batch)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(batches[k::2],)) for k in range(2)]
    threads += [threading.Thread(target=run, args=(list(reversed(batches)),))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    rows = usage_rows(billing_db)
    assert len(rows) == 400
    assert sum(r.credit_applied_micros for r in rows) == 1000
    row = billing(billing_db)
    assert (row.period_usage_micros, row.credit_balance_micros) == (1200, 0)
    assert grants(billing_db) == {"g": 0}
    assert entry_sum(billing_db, "g") == 0


def test_a_colliding_insert_fails_the_batch_retryably(
    billing_db: Database, make_account: MakeAccount
) -> None:
    make_account("acme")
    row = ("acme", "g", "USE", -1, "same", T0)
    with billing_db.transaction() as session:
        session.add(
            CreditGrantRow(
                id="g",
                account_id="acme",
                source="OPERATOR",
                amount_micros=1,
                remaining_micros=1,
                reference="g",
                create_time=T0,
            )
        )
    with pytest.raises(ServiceUnavailable) as caught, billing_db.transaction() as session:
        insert_all(session, ENTRIES, ENTRY_COLUMNS, [row, row], sqlite=billing_db.is_sqlite)
    assert caught.value.code == "ledger_conflict"
    with billing_db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(CreditEntryRow)) == 0
