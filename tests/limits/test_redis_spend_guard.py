"""The Redis spend guard: the same rules, atomic across replicas; fallback when Redis fails.

Tests that need a server run only with FIREBOX_TEST_REDIS_URL set, each under
its own key prefix.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from firebox.clock import FakeClock
from firebox.limits.hooks import Reason
from firebox.limits.rate_limiter import KEY_TTL_S as RATE_KEY_TTL_S
from firebox.limits.rate_limiter import WINDOW_S, InProcessRateLimiter, RedisRateLimiter
from firebox.limits.redis_spend_guard import RedisSpendGuard
from firebox.limits.spend_guard import Refusal, Reservation
from tests.conftest import REDIS_URL
from tests.limits.test_spend_guard import DOLLAR, FakeMoney, room_scenario

START = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)

needs_redis = pytest.mark.skipif(REDIS_URL is None, reason="FIREBOX_TEST_REDIS_URL is not set")


def make_guard(money: FakeMoney, clock: FakeClock, **kwargs: Any) -> RedisSpendGuard:
    assert REDIS_URL is not None
    prefix = f"test-spend-{uuid.uuid4().hex[:10]}:"
    return RedisSpendGuard(REDIS_URL, money, clock, key_prefix=prefix, **kwargs)


def with_guard(
    scenario: Callable[[RedisSpendGuard, FakeMoney, FakeClock], Awaitable[None]], **kwargs: Any
) -> None:
    money, clock = FakeMoney(), FakeClock(START)
    guard = make_guard(money, clock, **kwargs)

    async def main() -> None:
        try:
            await scenario(guard, money, clock)
        finally:
            await guard.aclose()

    asyncio.run(main())


@needs_redis
@pytest.mark.redis
def test_soft_hard_settle_release() -> None:
    async def scenario(guard: RedisSpendGuard, money: FakeMoney, clock: FakeClock) -> None:
        money.set("acme", usage=60, limit=100)
        first = await guard.reserve("acme", 30)
        assert isinstance(first, Reservation) and first.shared
        soft = await guard.reserve("acme", 20)
        assert soft == Refusal(Reason.MONTHLY_SPEND_LIMIT_EXCEEDED, 100, 90, False, "2026-03")
        hard = await guard.reserve("acme", 41)
        assert hard == Refusal(Reason.MONTHLY_SPEND_LIMIT_EXCEEDED, 100, 90, True, "2026-03")
        last = await guard.reserve("acme", 10)
        assert isinstance(last, Reservation)
        await guard.release(first)
        assert await guard.settle(last, 5) is None
        assert guard.committed("acme") == 65
        big = await guard.reserve("acme", 35)
        assert isinstance(big, Reservation)
        reached = await guard.settle(big, 35)
        assert reached == Refusal(Reason.MONTHLY_SPEND_LIMIT_EXCEEDED, 100, 100, True, "2026-03")
        await guard.settle(big, 35)  # a second settle of the same reservation changes nothing
        assert guard.committed("acme") == 100
        assert guard.fallbacks == 0

    with_guard(scenario)


@needs_redis
@pytest.mark.redis
def test_room_left_caps_waits_or_refuses_as_in_process() -> None:
    async def scenario(guard: RedisSpendGuard, money: FakeMoney, clock: FakeClock) -> None:
        await room_scenario(guard, money)
        assert guard.fallbacks == 0

    with_guard(scenario)


@needs_redis
@pytest.mark.redis
def test_credit_cap_and_expiry_by_the_clock() -> None:
    async def scenario(guard: RedisSpendGuard, money: FakeMoney, clock: FakeClock) -> None:
        money.set("free", usage=0, credit=DOLLAR, payment_method=False)
        leaked = await guard.reserve("free", DOLLAR)
        assert isinstance(leaked, Reservation)
        refusal = await guard.reserve("free", 1)
        assert refusal == Refusal(Reason.CREDIT_DEPLETED, DOLLAR, DOLLAR, False, "2026-03")
        clock.advance(timedelta(minutes=15))
        again = await guard.reserve("free", DOLLAR)
        assert isinstance(again, Reservation)
        assert guard.expired == 1

    with_guard(scenario)


@needs_redis
@pytest.mark.redis
def test_restart_reseeds_from_the_ledger_and_refresh_resyncs() -> None:
    async def scenario(guard: RedisSpendGuard, money: FakeMoney, clock: FakeClock) -> None:
        money.set("acme", usage=40, limit=100)
        r = await guard.reserve("acme", 10)
        assert isinstance(r, Reservation)
        await guard.settle(r, 10)
        assert guard.committed("acme") == 50
        # Redis lost everything: the count starts again from the ledger's figure.
        await guard._client.execute("DEL", *guard.keys("acme", "2026-03"))
        money.update("acme", period_usage_micros=45)
        guard.money_changed("acme")
        r = await guard.reserve("acme", 0)
        assert isinstance(r, Reservation)
        assert guard.committed("acme") == 45
        # The ledger moved past the counter (usage billed elsewhere): refresh catches up.
        money.update("acme", period_usage_micros=95)
        clock.advance(timedelta(seconds=3))
        refused = await guard.reserve("acme", 10)
        assert isinstance(refused, Refusal) and refused.hard
        assert guard.committed("acme") == 95

    with_guard(scenario)


@needs_redis
@pytest.mark.redis
def test_64_concurrent_reservations_admit_exactly_those_that_fit() -> None:
    worst = 7_000
    cap = 1_000 * DOLLAR

    async def scenario(guard: RedisSpendGuard, money: FakeMoney, clock: FakeClock) -> None:
        money.set("acme", usage=cap - 5 * worst - worst // 2, limit=cap)
        results = await asyncio.gather(*(guard.reserve("acme", worst) for _ in range(64)))
        admitted = [r for r in results if isinstance(r, Reservation)]
        assert len(admitted) == 5
        assert sum(1 for r in results if isinstance(r, Refusal) and not r.hard) == 59
        await asyncio.gather(*(guard.settle(r, worst) for r in admitted))
        assert guard.committed("acme") == cap - worst // 2

    with_guard(scenario)


@needs_redis
@pytest.mark.redis
def test_two_replicas_racing_never_pass_the_cap() -> None:
    worst = 5_000
    cap = 1_000 * DOLLAR
    money, clock = FakeMoney(), FakeClock(START)
    money.set("acme", usage=cap - 20 * worst - 1, limit=cap)
    one = make_guard(money, clock)
    # A second replica sharing the same keys.
    two = RedisSpendGuard(REDIS_URL or "", money, clock, key_prefix=one._prefix)
    settled: list[int] = []

    async def worker(guard: RedisSpendGuard, seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(10):
            reservation = await guard.reserve("acme", worst)
            if isinstance(reservation, Refusal):
                return
            actual = rng.randint(0, worst)
            await guard.settle(reservation, actual)
            settled.append(actual)

    async def main() -> None:
        await asyncio.gather(*(worker(one if i % 2 else two, i) for i in range(64)))
        start = money.states["acme"].period_usage_micros
        assert one.committed("acme") == start + sum(settled)
        assert start + sum(settled) <= cap
        assert len(settled) >= 20
        await one.aclose()
        await two.aclose()

    asyncio.run(main())


def test_falls_back_to_in_process_counters_when_redis_is_unreachable() -> None:
    money, clock = FakeMoney(), FakeClock(START)
    money.set("acme", usage=90, limit=100)
    guard = RedisSpendGuard("redis://127.0.0.1:1/0", money, clock, key_prefix="unreachable:")

    async def main() -> None:
        r = await guard.reserve("acme", 10)
        assert isinstance(r, Reservation) and not r.shared
        assert guard.fallbacks == 1
        refusal = await guard.reserve("acme", 1)
        assert refusal == Refusal(Reason.MONTHLY_SPEND_LIMIT_EXCEEDED, 100, 100, False, "2026-03")
        assert await guard.settle(r, 10) is not None
        assert guard.committed("acme") == 100
        assert guard.fallbacks == 1  # within the retry window Redis is not tried again
        await guard.aclose()

    asyncio.run(main())


@needs_redis
@pytest.mark.redis
def test_recovers_after_a_redis_error() -> None:
    async def scenario(guard: RedisSpendGuard, money: FakeMoney, clock: FakeClock) -> None:
        money.set("acme", usage=0, limit=100)
        real = guard._reserve
        calls = {"n": 0}

        async def flaky(**kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 1:
                raise RedisConnectionError("boom")
            return await real(**kwargs)

        guard._reserve = flaky  # type: ignore[assignment]
        local = await guard.reserve("acme", 10)
        assert isinstance(local, Reservation) and not local.shared
        assert guard.fallbacks == 1
        await guard.release(local)
        shared = await guard.reserve("acme", 10)  # retry_s=0: Redis again
        assert isinstance(shared, Reservation) and shared.shared
        await guard.settle(shared, 7)
        assert guard.committed("acme") == 7

    with_guard(scenario, retry_s=0.0)


@needs_redis
@pytest.mark.redis
def test_a_retried_script_counts_once() -> None:
    """The client retries a call once after a timeout even if Redis ran it: same id, one effect."""

    async def scenario(guard: RedisSpendGuard, money: FakeMoney, clock: FakeClock) -> None:
        money.set("acme", usage=0, limit=100)
        state = money.spend_state("acme")
        keys = list(guard.keys("acme", "2026-03"))

        async def reserve_twice(rid: str, worst: int) -> Reservation:
            args = guard._reserve_args(state, True, worst, worst, 100, clock.now(), rid)
            for _ in range(2):
                answer = await guard._reserve(keys=keys, args=args)
                assert int(answer[0]) == 1
            return Reservation(rid, "acme", "2026-03", worst, shared=True)

        async def counters() -> tuple[int, int]:
            values = await guard._client.execute("HMGET", keys[0], "committed", "reserved")
            return int(values[0]), int(values[1])

        settled = await reserve_twice("rid-settled", 30)
        released = await reserve_twice("rid-released", 40)
        assert await counters() == (0, 70)
        for _ in range(2):
            await guard.settle(settled, 20)
        assert await counters() == (20, 40)
        for _ in range(2):
            await guard.release(released)
        assert await counters() == (20, 0)
        # A retried reserve of a reservation already settled holds nothing either.
        assert isinstance(await guard.reserve("acme", 80), Reservation)
        assert isinstance(await guard.reserve("acme", 1), Refusal)

    with_guard(scenario)


@needs_redis
@pytest.mark.redis
def test_a_retried_admit_counts_the_rate_and_the_money_once() -> None:
    async def scenario(guard: RedisSpendGuard, money: FakeMoney, clock: FakeClock) -> None:
        assert REDIS_URL is not None
        limiter = RedisRateLimiter(
            REDIS_URL, clock, InProcessRateLimiter(clock), 1, key_prefix=guard._prefix + "rate:"
        )
        money.set("acme", usage=0, limit=100)
        state = money.spend_state("acme")
        args = guard._reserve_args(state, True, 30, 30, 100, clock.now(), "rid-1")
        args += [int(clock.now().timestamp()), WINDOW_S, RATE_KEY_TTL_S, 1, 1]  # 1 a minute
        keys = [*guard.keys("acme", "2026-03"), limiter.key("acme")]
        try:
            for _ in range(2):
                answer = [int(x) for x in await guard._admit(keys=keys, args=args)]
                # Admitted (the retry too, not rate limited): committed 0, reserved 30,
                # expired 0, held 30; the counter: used 1, reset 60 s, retry 0.
                assert answer == [1, 1, 0, 30, 0, 30, 1, 60, 0]
            assert await limiter.used("acme") == 1
        finally:
            await limiter.aclose()

    with_guard(scenario)


@needs_redis
@pytest.mark.redis
def test_the_cooldown_after_a_failure_runs_on_the_injected_clock() -> None:
    async def scenario(guard: RedisSpendGuard, money: FakeMoney, clock: FakeClock) -> None:
        money.set("acme", usage=0, limit=100)
        real = guard._reserve
        calls = {"n": 0}

        async def flaky(**kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 1:
                raise RedisConnectionError("boom")
            return await real(**kwargs)

        guard._reserve = flaky  # type: ignore[assignment]
        assert not (await guard.reserve("acme", 10)).shared  # type: ignore[union-attr]
        clock.advance(timedelta(seconds=4))
        assert not (await guard.reserve("acme", 10)).shared  # type: ignore[union-attr]
        clock.advance(timedelta(seconds=1))
        assert (await guard.reserve("acme", 10)).shared  # type: ignore[union-attr]
        assert (calls["n"], guard.fallbacks) == (2, 1)

    with_guard(scenario, retry_s=5.0)
