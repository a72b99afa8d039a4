"""DbOverrides never reads the database on the caller's thread once loaded."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy.orm import Session

from firebox.billing.models import PriceOverrideRow
from firebox.billing.overrides import DbOverrides
from firebox.clock import FakeClock
from firebox.store.database import Database
from tests.billing.conftest import T0, MakeAccount

CLASS = "TEXT_DENSE_UP_TO_16B"


class Gated:
    """A Database whose reads can be held at a gate or made to fail, and are counted."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.reads = 0
        self.fail = False
        self.gate = threading.Event()
        self.gate.set()
        self.done = threading.Event()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        self.reads += 1
        try:
            self.gate.wait(10)
            if self.fail:
                raise ConnectionError("database unreachable")
            with self.db.transaction() as session:
                yield session
        finally:
            self.done.set()


def settle(overrides: DbOverrides) -> None:
    """Wait until no background refresh runs (its error handling included)."""
    for _ in range(1000):
        if not overrides._refreshing.locked():
            return
        threading.Event().wait(0.01)
    raise AssertionError("the refresh never finished")


def price(overrides: DbOverrides) -> int | None:
    return overrides.unit_price("acme", None, CLASS, T0)


def setup(billing_db: Database, make_account: MakeAccount) -> tuple[Gated, FakeClock, DbOverrides]:
    make_account("acme")
    with billing_db.transaction() as session:
        session.add(
            PriceOverrideRow(
                account_id="acme",
                target=CLASS,
                unit_price_micros=150_000,
                effective_from=T0 - timedelta(days=1),
                create_time=T0,
            )
        )
    gated = Gated(billing_db)
    clock = FakeClock(T0)
    overrides = DbOverrides(gated, clock, max_age=timedelta(seconds=60))  # type: ignore[arg-type]
    return gated, clock, overrides


def test_a_failing_refresh_keeps_the_prices(
    billing_db: Database, make_account: MakeAccount
) -> None:
    gated, clock, overrides = setup(billing_db, make_account)
    assert price(overrides) == 150_000  # the first load is synchronous
    assert gated.reads == 1
    gated.fail = True
    clock.advance(timedelta(seconds=61))
    gated.done.clear()
    assert price(overrides) == 150_000  # stale: served at once, refreshed behind
    assert gated.done.wait(10)
    settle(overrides)
    for _ in range(50):
        assert price(overrides) == 150_000  # the failed refresh kept the snapshot
    assert overrides.deployment_discount_bps("acme") == 0
    assert gated.reads == 2  # and is not retried on every lookup before max_age


def test_a_stale_snapshot_starts_one_refresh_not_one_per_call(
    billing_db: Database, make_account: MakeAccount
) -> None:
    gated, clock, overrides = setup(billing_db, make_account)
    assert price(overrides) == 150_000
    with billing_db.transaction() as session:
        row = session.query(PriceOverrideRow).one()
        row.unit_price_micros = 90_000
    clock.advance(timedelta(seconds=61))
    gated.gate.clear()  # the refresh hangs in the database...
    gated.done.clear()
    for _ in range(100):
        assert price(overrides) == 150_000  # ...while lookups answer without waiting
    assert gated.reads == 2  # one refresh under way, not 100
    gated.gate.set()
    assert gated.done.wait(10)
    settle(overrides)
    assert price(overrides) == 90_000
    assert gated.reads == 2
