"""The sliding-window rate limiter, in memory and in Redis, under a fake clock."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from firebox.clock import FakeClock
from firebox.limits.rate_limiter import (
    InProcessRateLimiter,
    RateDecision,
    RateLimiter,
    RedisRateLimiter,
    decide,
)
from tests.conftest import REDIS_URL

START = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)  # on a whole second
BACKENDS = ["memory", pytest.param("redis", marks=pytest.mark.redis)] if REDIS_URL else ["memory"]

Make = Callable[[FakeClock], RateLimiter]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture(params=BACKENDS)
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Make]:
    """Builds limiters of one backend; Redis ones use a key prefix of their own."""
    prefix = f"test:rl:{uuid.uuid4().hex[:8]}:"
    made: list[RedisRateLimiter] = []

    def build(clock: FakeClock) -> RateLimiter:
        if request.param == "memory":
            return InProcessRateLimiter(clock)
        assert REDIS_URL is not None
        limiter = RedisRateLimiter(
            REDIS_URL, clock, InProcessRateLimiter(clock), 1, key_prefix=prefix
        )
        made.append(limiter)
        return limiter

    yield build
    for limiter in made:
        assert limiter.fallback_checks == 0  # every check really went to Redis
        await limiter.aclose()
    if made and REDIS_URL:
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)
        client.close()


async def admitted(limiter: RateLimiter, clock: FakeClock, count: int, step_ms: int) -> list[bool]:
    results = []
    for _ in range(count):
        results.append((await limiter.hit("acme", 600)).allowed)
        clock.advance(timedelta(milliseconds=step_ms))
    return results


@pytest.mark.anyio
async def test_700_requests_in_one_minute_admit_exactly_600(make: Make, clock: FakeClock) -> None:
    limiter = make(clock)
    results = await admitted(limiter, clock, 700, step_ms=84)  # 700 x 84 ms = 58.8 s
    assert results.count(True) == 600
    assert results[:600] == [True] * 600 and results[600:] == [False] * 100
    assert await limiter.used("acme") == 600


@pytest.mark.anyio
async def test_a_client_at_exactly_the_limit_is_never_refused(make: Make, clock: FakeClock) -> None:
    limiter = make(clock)
    results = await admitted(limiter, clock, 10 * 180, step_ms=100)  # 10/s for 3 minutes
    assert results.count(False) == 0
    # At t = 180 s the window is seconds 121-180: 59 full seconds of 10.
    assert await limiter.used("acme") == 590


@pytest.mark.anyio
async def test_the_window_slides_and_retry_after_is_when_capacity_frees(
    make: Make, clock: FakeClock
) -> None:
    limiter = make(clock)
    for _ in range(300):
        assert (await limiter.hit("acme", 600)).allowed
    clock.advance(timedelta(seconds=30))
    for _ in range(300):
        assert (await limiter.hit("acme", 600)).allowed
    clock.advance(timedelta(seconds=15, milliseconds=500))  # t = 45.5 s
    refused = await limiter.hit("acme", 600)
    assert refused == RateDecision(False, 600, 600, 15, 15)  # second 0 leaves at t = 60
    clock.advance(timedelta(seconds=14))  # t = 59.5 s: still full
    assert not (await limiter.hit("acme", 600)).allowed
    clock.advance(timedelta(milliseconds=500))  # t = 60 s: second 0 left the window
    results = [(await limiter.hit("acme", 600)).allowed for _ in range(301)]
    assert results.count(True) == 300
    assert await limiter.used("acme") == 600
    clock.advance(timedelta(seconds=90))  # two minutes after the last one: all gone
    assert await limiter.used("acme") == 0


@pytest.mark.anyio
async def test_headers_say_limit_remaining_and_reset(make: Make, clock: FakeClock) -> None:
    limiter = make(clock)
    first = await limiter.hit("acme", 600)
    assert first.headers() == {
        "x-ratelimit-limit-requests": "600",
        "x-ratelimit-remaining-requests": "599",
        "x-ratelimit-reset-requests": "60s",
    }
    clock.advance(timedelta(seconds=12))
    second = await limiter.hit("acme", 600)
    assert second.headers()["x-ratelimit-remaining-requests"] == "598"
    assert second.headers()["x-ratelimit-reset-requests"] == "48s"  # the first leaves at 60 s


@pytest.mark.anyio
async def test_accounts_and_amounts_are_counted_apart(make: Make, clock: FakeClock) -> None:
    limiter = make(clock)
    assert (await limiter.hit("a:prompt-tokens", 1000, 900)).allowed
    too_many = await limiter.hit("a:prompt-tokens", 1000, 200)
    assert (too_many.allowed, too_many.used, too_many.retry_after_s) == (False, 900, 60)
    never = await limiter.hit("a:prompt-tokens", 1000, 1001)
    assert (never.allowed, never.retry_after_s) == (False, None)
    await limiter.add("a:generated-tokens", 5000)
    assert await limiter.used("a:generated-tokens") == 5000
    assert await limiter.used("b:prompt-tokens") == 0


def brute_force(arrivals: list[int], limit: int) -> list[bool]:
    """The specification: admit iff fewer than ``limit`` admitted in the last 60 seconds."""
    kept: list[int] = []
    out = []
    for second in arrivals:
        ok = sum(1 for s in kept if s > second - 60) < limit
        out.append(ok)
        if ok:
            kept.append(second)
    return out


@settings(max_examples=60, deadline=None)
@given(
    gaps=st.lists(st.integers(min_value=0, max_value=25), min_size=1, max_size=300),
    limit=st.integers(min_value=1, max_value=40),
)
def test_in_memory_matches_the_specification(gaps: list[int], limit: int) -> None:
    clock = FakeClock(START)
    limiter = InProcessRateLimiter(clock)
    arrivals = []
    second = 0
    results = []
    for gap in gaps:
        second += gap
        clock.set(START + timedelta(seconds=second))
        arrivals.append(second)
        results.append(limiter.check("k", limit).allowed)
    assert results == brute_force(arrivals, limit)
    admitted_at = [s for s, ok in zip(arrivals, results, strict=True) if ok]
    for start in set(arrivals):  # any 60 consecutive seconds hold at most ``limit``
        assert sum(1 for s in admitted_at if start <= s < start + 60) <= limit


def test_decide_counts_only_what_it_admits() -> None:
    decision, add = decide([(100, 3)], 130, 4, 2, 1)
    assert (decision.allowed, decision.used, decision.retry_after_s, add) == (False, 3, 30, False)
    decision, add = decide([(100, 3)], 130, 5, 2, 1)
    assert (decision.allowed, decision.used, decision.reset_s, add) == (True, 5, 30, True)


@pytest.mark.redis
@pytest.mark.anyio
@pytest.mark.skipif(not REDIS_URL, reason="FIREBOX_TEST_REDIS_URL is not set")
async def test_redis_and_memory_decide_alike(clock: FakeClock) -> None:
    assert REDIS_URL is not None
    prefix = f"test:rl:{uuid.uuid4().hex[:8]}:"
    shared = RedisRateLimiter(REDIS_URL, clock, InProcessRateLimiter(clock), 1, key_prefix=prefix)
    local = InProcessRateLimiter(clock)
    rng = random.Random(7)
    counted: list[tuple[int, int]] = []  # (second, amount) of admitted hits, for refunds
    try:
        for _ in range(3000):
            op = rng.choices(["hit", "add", "refund", "used"], weights=[85, 5, 7, 3])[0]
            if op == "hit":
                amount, limit = rng.choice([0, 1, 1, 1, 3, 9]), 50
                decision = await shared.hit("k", limit, amount)
                assert decision == await local.hit("k", limit, amount)
                if decision.allowed and amount:
                    counted.append((int(clock.now().timestamp()), amount))
            elif op == "add":
                amount = rng.choice([1, 5])
                await shared.add("k", amount)
                await local.add("k", amount)
            elif op == "refund" and counted:
                second, amount = rng.choice(counted)
                take = rng.choice([1, amount, amount + 2])
                await shared.refund("k", take, second)
                await local.refund("k", take, second)
            assert await shared.used("k") == await local.used("k")
            gap_ms = rng.choice([0, 0, 10, 300, 900, 4000, 15000, 59000, 61000, 125000])
            clock.advance(timedelta(milliseconds=gap_ms))
        assert shared.fallback_checks == 0
    finally:
        await shared.aclose()


class Proxy:
    """A TCP proxy in front of Redis that can be down (port closed) or up."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)

    async def down(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in self.writers:  # and cut the connections it carries
            writer.close()
        self.writers.clear()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))


@pytest.mark.redis
@pytest.mark.anyio
@pytest.mark.skipif(not REDIS_URL, reason="FIREBOX_TEST_REDIS_URL is not set")
async def test_redis_down_falls_back_to_a_share_and_recovers(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    assert REDIS_URL is not None
    target = redis.Redis.from_url(REDIS_URL).connection_pool.connection_kwargs
    proxy = Proxy(target.get("host", "127.0.0.1"), int(target.get("port", 6379)))
    db = int(target.get("db", 0))
    fallbacks: list[int] = []
    limiter = RedisRateLimiter(
        f"redis://127.0.0.1:{proxy.port}/{db}",
        clock,
        InProcessRateLimiter(clock),
        replicas_hint=4,
        key_prefix=f"test:rl:{uuid.uuid4().hex[:8]}:",
        on_fallback=lambda: fallbacks.append(1),
    )
    caplog.set_level(logging.WARNING, logger="firebox.limits.rate_limiter")
    try:
        # Down: each replica enforces 600 // 4 = 150 in memory.
        down = [await limiter.hit("acme", 600) for _ in range(200)]
        assert [d.allowed for d in down].count(True) == 150
        assert down[0].limit == 150 and limiter.degraded
        assert (limiter.fallback_checks, len(fallbacks), limiter.outages) == (200, 200, 1)
        unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(unreachable) == 1  # once per outage, not per check

        # Back up: within the cool-down the limiter still answers from memory ...
        await proxy.up()
        assert (await limiter.hit("acme", 600)).limit == 150
        # ... and after it, Redis counts again, from its own (empty) window.
        clock.advance(timedelta(seconds=1))
        back = await limiter.hit("acme", 600)
        assert (back.allowed, back.limit, back.used) == (True, 600, 1)
        assert not limiter.degraded and limiter.fallback_checks == 201

        # A second outage is a second warning.
        await proxy.down()
        clock.advance(timedelta(seconds=1))
        assert (await limiter.hit("acme", 600)).limit == 150
        assert limiter.outages == 2
    finally:
        await proxy.down()
        await limiter.aclose()


def test_idle_counters_are_forgotten(clock: FakeClock) -> None:
    limiter = InProcessRateLimiter(clock)
    for key in ("a", "b", "c"):
        limiter.check(key, 10)
    clock.advance(timedelta(seconds=59))
    limiter.check("c", 10)
    assert limiter.forget_idle() == 0  # "a" and "b" are still inside the window
    clock.advance(timedelta(seconds=1))
    assert limiter.forget_idle() == 2
    assert limiter.check("c", 10, 0, mode=-1).used == 1


@pytest.mark.anyio
async def test_refund_takes_back_what_a_hit_counted(make: Make, clock: FakeClock) -> None:
    limiter = make(clock)
    second = int(clock.now().timestamp())
    for _ in range(3):
        assert (await limiter.hit("acme", 3)).allowed
    await limiter.refund("acme", 1, second)
    assert await limiter.used("acme") == 2
    clock.advance(timedelta(seconds=1))
    await limiter.refund("acme", 5, second + 1)  # nothing counted in that second
    await limiter.refund("acme", 5, second)  # never below zero
    assert await limiter.used("acme") == 0
    assert (await limiter.hit("acme", 3)).used == 1


@pytest.mark.redis
@pytest.mark.anyio
@pytest.mark.skipif(not REDIS_URL, reason="FIREBOX_TEST_REDIS_URL is not set")
async def test_a_counter_of_the_old_layout_is_converted_on_its_first_check() -> None:
    """Buckets written before the ``_t``/``_at``/``_o`` fields existed (a rolling upgrade)."""
    assert REDIS_URL is not None
    clock = FakeClock(START - timedelta(seconds=80))
    prefix = f"test:rl:{uuid.uuid4().hex[:8]}:"
    shared = RedisRateLimiter(REDIS_URL, clock, InProcessRateLimiter(clock), 1, key_prefix=prefix)
    local = InProcessRateLimiter(clock)
    now = int(START.timestamp())
    # The old layout: one field per second, nothing else; two buckets already out of the window.
    old = {now - 75: 4, now - 60: 3, now - 59: 2, now - 30: 5, now - 1: 1}
    plain = redis.Redis.from_url(REDIS_URL)
    plain.hset(shared.key("k"), mapping={str(sec): n for sec, n in old.items()})
    for sec, n in old.items():  # the same history in memory
        clock.set(datetime.fromtimestamp(sec, UTC))
        for _ in range(n):
            local.check("k", 1000)
    clock.set(START)
    try:
        for step in range(40):
            decision = await shared.hit("k", 12)
            assert decision == await local.hit("k", 12), step
            clock.advance(timedelta(seconds=2))
        fields = plain.hkeys(shared.key("k"))
        assert b"_t" in fields and b"_at" in fields
        assert str(now - 75).encode() not in fields  # stale buckets went on conversion
    finally:
        plain.delete(shared.key("k"))
        plain.close()
        await shared.aclose()
