"""The in-process spend guard: caps, hard/soft refusals, settlement, TTL, snapshots, races."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest

from firebox.clock import FakeClock
from firebox.inference.admission import Demand
from firebox.inference.metering import UsageRecord
from firebox.limits.hooks import Reason
from firebox.limits.ports import SpendState
from firebox.limits.spend_guard import (
    InProcessSpendGuard,
    Refusal,
    Reservation,
    SpendGuard,
    spend_cap,
)
from firebox.money_state import format_usd, period_of

START = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
DOLLAR = 1_000_000


class FakeMoney:
    """A MoneySource whose ledger the test sets by hand; counts its reads."""

    def __init__(self) -> None:
        self.states: dict[str, SpendState] = {}
        self.reads = 0
        self._lock = threading.Lock()

    def set(
        self,
        account_id: str,
        *,
        period: str = "2026-03",
        usage: int = 0,
        limit: int | None = 50 * DOLLAR,
        credit: int = 0,
        payment_method: bool = True,
        failed: bool = False,
    ) -> None:
        self.states[account_id] = SpendState(
            account_id=account_id,
            period=period,
            period_usage_micros=usage,
            spend_limit_micros=limit,
            credit_balance_micros=credit,
            has_payment_method=payment_method,
            failed_payments=failed,
        )

    def update(self, account_id: str, **changes: object) -> None:
        self.states[account_id] = dataclasses.replace(self.states[account_id], **changes)  # type: ignore[arg-type]

    def spend_state(self, account_id: str) -> SpendState:
        with self._lock:
            self.reads += 1
        return self.states[account_id]

    def cost(self, usage: UsageRecord) -> int:
        raise NotImplementedError

    def worst_case_cost(self, demand: Demand) -> int:
        raise NotImplementedError


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def money() -> FakeMoney:
    return FakeMoney()


@pytest.fixture
def guard(money: FakeMoney, clock: FakeClock) -> InProcessSpendGuard:
    return InProcessSpendGuard(money, clock)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_cap_is_the_limit_or_where_credits_run_out() -> None:
    money = FakeMoney()
    money.set("a", usage=300_000, credit=700_000, payment_method=False, limit=50 * DOLLAR)
    assert spend_cap(money.states["a"], "2026-03") == (DOLLAR, Reason.CREDIT_DEPLETED)
    # A snapshot of last month: none of its usage is this month's.
    assert spend_cap(money.states["a"], "2026-04") == (700_000, Reason.CREDIT_DEPLETED)
    money.set("b", usage=300_000, credit=700_000, payment_method=True, limit=50 * DOLLAR)
    assert spend_cap(money.states["b"], "2026-03") == (
        50 * DOLLAR,
        Reason.MONTHLY_SPEND_LIMIT_EXCEEDED,
    )
    money.set("c", usage=0, credit=10 * DOLLAR, payment_method=False, limit=5 * DOLLAR)
    assert spend_cap(money.states["c"], "2026-03") == (
        5 * DOLLAR,
        Reason.MONTHLY_SPEND_LIMIT_EXCEEDED,
    )
    money.set("d", limit=None, payment_method=True)
    assert spend_cap(money.states["d"], "2026-03") == (None, Reason.MONTHLY_SPEND_LIMIT_EXCEEDED)


def test_reserve_refuses_soft_then_hard(guard: InProcessSpendGuard, money: FakeMoney) -> None:
    money.set("acme", usage=60, limit=100)

    async def scenario() -> None:
        first = await guard.reserve("acme", 30)
        assert isinstance(first, Reservation)
        assert (first.account_id, first.period, first.micros) == ("acme", "2026-03", 30)
        soft = await guard.reserve("acme", 20)  # 60 + 30 + 20 > 100, but 60 + 20 fits
        assert soft == Refusal(Reason.MONTHLY_SPEND_LIMIT_EXCEEDED, 100, 90, False, "2026-03")
        hard = await guard.reserve("acme", 41)  # 60 + 41 > 100 with nothing in flight
        assert hard == Refusal(Reason.MONTHLY_SPEND_LIMIT_EXCEEDED, 100, 90, True, "2026-03")
        exact = await guard.reserve("acme", 10)  # 60 + 30 + 10 == 100 fits
        assert isinstance(exact, Reservation)
        assert guard.reserved("acme") == 40
        await guard.release(first)
        assert guard.reserved("acme") == 10
        assert isinstance(await guard.reserve("acme", 20), Reservation)

    run(scenario())


async def room_scenario(guard: SpendGuard, money: FakeMoney) -> None:
    """Both backends: hold the worst case, or cap to the room, or refuse soft or hard.

    Capping happens only once the month itself cannot pay the worst case; a
    request held out only by reservations in flight is refused softly (the
    caller waits for room), and a wake-up is signalled by every release.
    """
    money.set("acme", usage=600, limit=1000)
    first = await guard.reserve("acme", 300, 50)  # 300 fits: held whole
    assert isinstance(first, Reservation) and first.micros == 300
    # 400 is what the month has left, so a 300 worst case is not capped: soft refusal.
    soft = await guard.reserve("acme", 300, 50)
    assert soft == Refusal(Reason.MONTHLY_SPEND_LIMIT_EXCEEDED, 1000, 900, False, "2026-03")
    # A 500 worst case is more than the month has left: capped to the 100 of room.
    version = guard.room_version("acme")
    capped = await guard.reserve("acme", 500, 50)
    assert isinstance(capped, Reservation) and capped.micros == 100
    # The floor no longer fits beside the ones in flight, but would alone: soft.
    soft = await guard.reserve("acme", 500, 50)
    assert soft == Refusal(Reason.MONTHLY_SPEND_LIMIT_EXCEEDED, 1000, 1000, False, "2026-03")
    assert guard.room_version("acme") == version
    await guard.release(first)
    assert guard.room_version("acme") != version  # a release wakes the waiters
    await guard.wait_for_room("acme", version, 60)  # returns at once: it already moved
    await guard.settle(capped, 90)
    # 690 used, nothing in flight: a floor of 311 cannot fit, nor ever a floor of 1001.
    hard = await guard.reserve("acme", 500, 311)
    assert hard == Refusal(Reason.MONTHLY_SPEND_LIMIT_EXCEEDED, 1000, 690, True, "2026-03")
    oversized = await guard.reserve("acme", 2000, 1001)
    assert oversized is not None and isinstance(oversized, Refusal) and oversized.oversized
    last = await guard.reserve("acme", 500, 310)  # exactly the 310 left
    assert isinstance(last, Reservation) and last.micros == 310


def test_room_left_caps_waits_or_refuses(guard: InProcessSpendGuard, money: FakeMoney) -> None:
    run(room_scenario(guard, money))


def test_settle_commits_actual_and_reports_the_limit_reached(
    guard: InProcessSpendGuard, money: FakeMoney
) -> None:
    money.set("acme", usage=0, limit=100)

    async def scenario() -> None:
        a = await guard.reserve("acme", 50)
        b = await guard.reserve("acme", 50)
        assert isinstance(a, Reservation) and isinstance(b, Reservation)
        assert await guard.settle(a, 20) is None
        assert guard.committed("acme") == 20
        assert guard.reserved("acme") == 50
        reached = await guard.settle(b, 80)  # more than reserved: logged, not clamped
        assert reached == Refusal(Reason.MONTHLY_SPEND_LIMIT_EXCEEDED, 100, 100, True, "2026-03")
        assert guard.committed("acme") == 100
        assert guard.reserved("acme") == 0
        again = await guard.reserve("acme", 0)
        assert isinstance(again, Reservation)  # a free request still fits at the limit
        refused = await guard.reserve("acme", 1)
        assert isinstance(refused, Refusal) and refused.hard

    run(scenario())


def test_settling_twice_or_after_release_holds_nothing_twice(
    guard: InProcessSpendGuard, money: FakeMoney
) -> None:
    money.set("acme", usage=0, limit=100)

    async def scenario() -> None:
        a = await guard.reserve("acme", 40)
        assert isinstance(a, Reservation)
        await guard.release(a)
        await guard.release(a)
        assert guard.reserved("acme") == 0
        assert guard.committed("acme") == 0

    run(scenario())


def test_credit_cap_without_payment_method(guard: InProcessSpendGuard, money: FakeMoney) -> None:
    money.set("free", usage=0, credit=DOLLAR, payment_method=False)

    async def scenario() -> None:
        a = await guard.reserve("free", 600_000)
        assert isinstance(a, Reservation)
        refusal = await guard.reserve("free", 500_000)
        assert refusal == Refusal(Reason.CREDIT_DEPLETED, DOLLAR, 600_000, False, "2026-03")
        reached = await guard.settle(a, DOLLAR)
        assert reached is not None and reached.reason is Reason.CREDIT_DEPLETED

    run(scenario())


def test_unlimited_account_is_never_refused(guard: InProcessSpendGuard, money: FakeMoney) -> None:
    money.set("big", usage=10**12, limit=None)

    async def scenario() -> None:
        for _ in range(10):
            assert isinstance(await guard.reserve("big", 10**9), Reservation)

    run(scenario())


def test_negative_worst_case_is_a_bug(guard: InProcessSpendGuard, money: FakeMoney) -> None:
    money.set("acme")
    with pytest.raises(ValueError):
        run(guard.reserve("acme", -1))


def test_leaked_reservations_expire_after_the_ttl(
    guard: InProcessSpendGuard, money: FakeMoney, clock: FakeClock
) -> None:
    money.set("acme", usage=0, limit=100)

    async def scenario() -> None:
        assert isinstance(await guard.reserve("acme", 100), Reservation)
        assert isinstance(await guard.reserve("acme", 1), Refusal)
        clock.advance(timedelta(minutes=14, seconds=59))
        assert isinstance(await guard.reserve("acme", 1), Refusal)
        clock.advance(timedelta(seconds=1))
        fresh = await guard.reserve("acme", 100)
        assert isinstance(fresh, Reservation)
        assert guard.expired == 1
        assert guard.reserved("acme") == 100

    run(scenario())


def test_snapshot_is_cached_refreshed_and_resynced(
    guard: InProcessSpendGuard, money: FakeMoney, clock: FakeClock
) -> None:
    money.set("acme", usage=10, limit=100)

    async def scenario() -> None:
        for _ in range(5):
            r = await guard.reserve("acme", 1)
            assert isinstance(r, Reservation)
            await guard.release(r)
        assert money.reads == 1
        # Another replica settled 50 more; the ledger has them.
        money.update("acme", period_usage_micros=60)
        assert guard.committed("acme") == 10
        clock.advance(timedelta(seconds=2))
        r = await guard.reserve("acme", 1)
        assert isinstance(r, Reservation)
        await guard.release(r)
        assert money.reads == 2
        assert guard.committed("acme") == 60
        # The counter is ahead of a lagging ledger: max(counter, ledger) keeps it.
        s = await guard.reserve("acme", 30)
        assert isinstance(s, Reservation)
        await guard.settle(s, 30)
        guard.money_changed("acme")
        await guard.release(await guard.reserve("acme", 0))  # type: ignore[arg-type]
        assert money.reads == 3
        assert guard.committed("acme") == 90
        # A raised limit is seen at once after money_changed.
        assert isinstance(await guard.reserve("acme", 20), Refusal)
        money.update("acme", spend_limit_micros=200)
        guard.money_changed("acme")
        assert isinstance(await guard.reserve("acme", 20), Reservation)

    run(scenario())


def test_a_new_month_starts_from_the_ledger(
    guard: InProcessSpendGuard, money: FakeMoney, clock: FakeClock
) -> None:
    money.set("acme", usage=100, limit=100)

    async def scenario() -> None:
        old = await guard.reserve("acme", 0)
        assert isinstance(old, Reservation)
        assert isinstance(await guard.reserve("acme", 1), Refusal)
        clock.set(datetime(2026, 4, 1, tzinfo=UTC))
        guard.money_changed("acme")  # billing has not rolled the period yet
        fresh = await guard.reserve("acme", 60)
        assert isinstance(fresh, Reservation) and fresh.period == "2026-04"
        assert guard.committed("acme") == 0
        assert await guard.settle(old, 0) is None  # last month's: the ledger has it
        assert guard.committed("acme") == 0

    run(scenario())


def _near_limit(money: FakeMoney, fits: int, worst: int) -> int:
    cap = 1_000 * DOLLAR
    money.set("acme", usage=cap - fits * worst - worst // 2, limit=cap)
    return cap


def test_64_concurrent_reservations_admit_exactly_those_that_fit(
    guard: InProcessSpendGuard, money: FakeMoney
) -> None:
    worst = 7_000
    cap = _near_limit(money, fits=5, worst=worst)

    async def scenario() -> None:
        results = await asyncio.gather(*(guard.reserve("acme", worst) for _ in range(64)))
        admitted = [r for r in results if isinstance(r, Reservation)]
        refused = [r for r in results if isinstance(r, Refusal)]
        assert len(admitted) == 5
        assert len(refused) == 59
        assert all(not r.hard for r in refused)
        await asyncio.gather(*(guard.settle(r, worst) for r in admitted))
        committed = guard.committed("acme")
        assert committed is not None and committed <= cap
        assert committed == cap - worst // 2

    run(scenario())


def test_64_threads_racing_never_pass_the_cap(guard: InProcessSpendGuard, money: FakeMoney) -> None:
    worst = 5_000
    cap = _near_limit(money, fits=20, worst=worst)
    start = money.states["acme"].period_usage_micros
    settled: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(64)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        barrier.wait()
        for _ in range(10):
            reservation = asyncio.run(guard.reserve("acme", worst))
            if isinstance(reservation, Refusal):
                return
            actual = rng.randint(0, worst)
            asyncio.run(guard.settle(reservation, actual))
            with lock:
                settled.append(actual)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert guard.committed("acme") == start + sum(settled)
    assert start + sum(settled) <= cap
    assert guard.reserved("acme") == 0
    assert len(settled) >= 20  # at least the 20 worst cases that fit at once


def test_the_month_is_the_utc_month_and_usd_is_the_wire_format() -> None:
    """One ``period_of`` and one ``format_usd`` (firebox.money_state) for billing and limits."""
    from firebox.billing import money, pricing

    evening = datetime(2026, 3, 31, 23, 30, tzinfo=timezone(timedelta(hours=-2)))
    assert period_of(evening) == "2026-04"  # 01:30 UTC on April 1st
    assert pricing.period_of is period_of and money.format_usd is format_usd
    assert [format_usd(m) for m in (50_000_000, 1_500, -500_000, 0)] == [
        "50.00",
        "0.0015",
        "-0.50",
        "0.00",
    ]
    money_source, clock = FakeMoney(), FakeClock(evening)
    money_source.set("acme", period="2026-04", usage=0, limit=100)
    guard = InProcessSpendGuard(money_source, clock)
    held = asyncio.run(guard.reserve("acme", 10))
    assert isinstance(held, Reservation) and held.period == "2026-04"
