"""Admission's caches are re-read in the background before they expire, and never hide a change.

For each of the three caches (money snapshot, suspension reasons, plan
limits): a request that finds its entry past 3/4 of its lifetime is answered
from the entry without waiting (the re-read is held blocked to prove it),
one re-read runs, and a change made on this replica while a re-read was
running is not overwritten by what that re-read found.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from firebox.accounts.models import AccountRow
from firebox.clock import FakeClock
from firebox.limits import plans as plans_module
from firebox.limits.hooks import Reason, SuspensionHooks
from firebox.limits.plans import PlanLimits
from firebox.limits.ports import SpendState
from firebox.limits.refresh_ahead import RefreshAhead
from firebox.limits.spend_guard import InProcessSpendGuard, Refusal, Reservation
from firebox.limits.suspension import SuspensionService
from firebox.store.database import Database
from tests.limits.test_spend_guard import START, FakeMoney


class Gate:
    """Blocks the calls it wraps (in worker threads) until opened."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def wait(self) -> None:
        self.entered.set()
        assert self.opened.wait(10), "the gate was never opened"

    async def entered_soon(self) -> None:
        # Waits in a worker thread so the loop stays free; 60 s is only the failure path.
        if not await asyncio.to_thread(self.entered.wait, 60):
            raise AssertionError("the background re-read never started")


class GatedMoney(FakeMoney):
    def __init__(self) -> None:
        super().__init__()
        self.gate: Gate | None = None

    def spend_state(self, account_id: str) -> SpendState:
        if self.gate is not None:
            self.gate.wait()
        return super().spend_state(account_id)


def test_refresh_ahead_runs_one_read_per_key_and_survives_a_failure() -> None:
    refresh = RefreshAhead("thing")
    assert not refresh.due(0.74, 1.0) and refresh.due(0.75, 1.0)
    refresh.start("a", lambda: None)  # no event loop: nothing starts
    assert refresh.started == 0
    calls: list[str] = []

    def boom() -> None:
        calls.append("boom")
        raise RuntimeError("database gone")

    async def main() -> None:
        gate = Gate()
        refresh.start("a", gate.wait)
        refresh.start("a", lambda: calls.append("twice"))  # already running: skipped
        await gate.entered_soon()
        gate.opened.set()
        await refresh.drain()
        refresh.start("a", boom)
        await refresh.drain()
        refresh.start("a", lambda: calls.append("again"))  # the failure freed the key
        await refresh.drain()

    asyncio.run(main())
    assert calls == ["boom", "again"]
    assert (refresh.started, refresh.failed) == (3, 1)
    with pytest.raises(ValueError):
        RefreshAhead("x", early=1.0)


def test_the_money_snapshot_is_re_read_ahead_without_waiting() -> None:
    money, clock = GatedMoney(), FakeClock(START)
    money.set("acme", usage=10, limit=100)
    guard = InProcessSpendGuard(money, clock)

    async def main() -> None:
        await guard.release(await guard.reserve("acme", 1))  # type: ignore[arg-type]
        assert money.reads == 1
        clock.advance(timedelta(seconds=1.6))  # past 3/4 of the 2 s lifetime
        money.gate = Gate()
        money.update("acme", period_usage_micros=60)  # another replica settled 50
        held = await guard.reserve("acme", 1)  # answered from the entry: the read is blocked
        assert isinstance(held, Reservation)
        await money.gate.entered_soon()
        money.gate.opened.set()
        await guard._snapshots.refresh.drain()
        money.gate = None
        await guard.release(held)
        assert money.reads == 2
        # The re-read counts as just read once: the counter resyncs to the ledger.
        clock.advance(timedelta(seconds=1.0))  # 2.6 s after the first read, 1 s after the re-read
        assert isinstance(await guard.reserve("acme", 40), Reservation)
        assert guard.committed("acme") == 60
        assert isinstance(await guard.reserve("acme", 1), Refusal)  # 60 + 40 + 1 > 100
        assert money.reads == 2

    asyncio.run(main())


def test_a_money_change_during_a_re_read_is_not_overwritten() -> None:
    money, clock = GatedMoney(), FakeClock(START)
    money.set("acme", usage=0, limit=100)
    guard = InProcessSpendGuard(money, clock)

    async def main() -> None:
        await guard.release(await guard.reserve("acme", 1))  # type: ignore[arg-type]
        clock.advance(timedelta(seconds=1.7))
        money.gate = Gate()
        await guard.release(await guard.reserve("acme", 1))  # type: ignore[arg-type]
        await money.gate.entered_soon()  # the re-read has the old limit in hand...
        gate, money.gate = money.gate, None
        money.update("acme", spend_limit_micros=10)  # ...when the limit is lowered here
        guard.money_changed("acme")
        gate.opened.set()
        await guard._snapshots.refresh.drain()
        assert isinstance(await guard.reserve("acme", 20), Refusal)  # the new limit holds

    asyncio.run(main())


def _account(database: Database, account_id: str) -> None:
    with database.transaction() as session:
        session.add(AccountRow(id=account_id, create_time=START, update_time=START))


def test_suspension_reasons_are_re_read_ahead_and_a_change_wins(database: Database) -> None:
    _account(database, "acme")
    clock = FakeClock(START)
    money = FakeMoney()
    money.set("acme")
    service = SuspensionService(database, clock, money, SuspensionHooks(), cache_ttl_s=1.0)
    gate = Gate()
    real_read = service._read

    def gated_read(account_id: str) -> Any:
        active = real_read(account_id)  # reads "not suspended" before the change below
        gate.wait()
        return active

    async def main() -> None:
        assert service.reasons("acme") == ()
        clock.advance(timedelta(seconds=0.8))
        service._read = gated_read  # type: ignore[method-assign]
        assert service.reasons_cached("acme") == ()  # no waiting: the re-read is blocked
        await gate.entered_soon()
        service._read = real_read  # type: ignore[method-assign]
        await asyncio.to_thread(
            service.raise_reason, "acme", Reason.BLOCKED_BY_ABUSE_RULE, "operator"
        )
        gate.opened.set()
        await service.refresh.drain()
        assert service.reasons_cached("acme") == (Reason.BLOCKED_BY_ABUSE_RULE,)
        assert service.refresh.started == 1

    asyncio.run(main())


def test_plan_limits_are_re_read_ahead_and_an_invalidation_wins(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    _account(database, "acme")
    # PlanLimits ages entries by the monotonic clock: a fake one, so no real time passes
    # and a slow machine cannot carry the entry past its lifetime.
    now = [1000.0]
    monkeypatch.setattr(plans_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    plans = PlanLimits(database, FakeClock(START), ttl_s=2.0)
    first = plans.load("acme")
    gate = Gate()
    real = plans_module.repo.get_limits

    def gated(session: Any, account_id: str) -> Any:
        row = real(session, account_id)
        gate.wait()
        return row

    async def main() -> None:
        now[0] += 1.6  # past 3/4 of the 2 s lifetime, not past its end
        monkeypatch.setattr(plans_module.repo, "get_limits", gated)
        assert plans.cached("acme") == first  # answered at once; the re-read is blocked
        await gate.entered_soon()
        plans.invalidate("acme")  # a write on this replica while the re-read runs
        gate.opened.set()
        await plans.refresh.drain()
        assert plans.cached("acme") is None  # the re-read's answer was not kept
        assert plans.refresh.started == 1

    asyncio.run(main())


def test_an_idle_account_still_reads_when_its_entry_expired() -> None:
    money, clock = GatedMoney(), FakeClock(START)
    money.set("acme", usage=0, limit=100)
    guard = InProcessSpendGuard(money, clock)

    async def main() -> None:
        await guard.release(await guard.reserve("acme", 1))  # type: ignore[arg-type]
        clock.advance(timedelta(seconds=5))
        money.update("acme", spend_limit_micros=10)
        assert isinstance(await guard.reserve("acme", 20), Refusal)
        assert (money.reads, guard._snapshots.refresh.started) == (2, 0)

    asyncio.run(main())
