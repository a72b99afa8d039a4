"""``Enforcement``: suspension, rate limits, spend reservations, and the 429/402 answers."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient

from firebox.accounts.models import AccountRow
from firebox.accounts.principal import Principal
from firebox.accounts.roles import Role
from firebox.clock import FakeClock
from firebox.errors import InvalidArgument, PaymentRequired, RateLimited
from firebox.http.errors import install_error_handlers
from firebox.inference.admission import Demand
from firebox.inference.metering import UsageRecord
from firebox.limits.admission import EnforcedTicket, Enforcement
from firebox.limits.hooks import SuspensionHooks
from firebox.limits.plans import PlanLimits
from firebox.limits.ports import SpendState
from firebox.limits.rate_limiter import InProcessRateLimiter, RedisRateLimiter
from firebox.limits.redis_spend_guard import RedisSpendGuard
from firebox.limits.spend_guard import InProcessSpendGuard
from firebox.limits.suspension import SuspensionService
from firebox.store.database import Database
from tests.conftest import REDIS_URL
from tests.limits.test_rate_limiter import Proxy

START = datetime(2026, 3, 10, 12, 0, 0, tzinfo=UTC)
OPERATOR = Principal("firebox", "op", 1, Role.ADMIN, "k0", "h0", is_operator=True)
MEMBER = Principal("acme", "alice", 2, Role.USER, "k1", "h1")
BACKENDS = ["memory", pytest.param("redis", marks=pytest.mark.redis)] if REDIS_URL else ["memory"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Money:
    """A MoneySource whose prices are ``unit`` micro-USD per 1M tokens (1 per token)."""

    def __init__(self) -> None:
        self.states: dict[str, SpendState] = {}
        self.broken = False  # pricing fails (a settlement that raises)
        self.unit = 1_000_000

    def spend_state(self, account_id: str) -> SpendState:
        return self.states.get(account_id) or SpendState(
            account_id, "2026-03", 0, 50_000_000, 1_000_000, True, False
        )

    def cost(self, usage: UsageRecord) -> int:
        if self.broken:
            raise RuntimeError("no price for this model")
        tokens = usage.prompt_tokens + usage.completion_tokens
        return -(-(tokens * self.unit) // 1_000_000)

    def worst_case_cost(self, demand: Demand) -> int:
        tokens = demand.prompt_tokens + demand.completion_tokens
        return -(-(tokens * self.unit) // 1_000_000)


class Metrics:
    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.timed = 0

    def admission(self, outcome: str) -> None:
        self.outcomes[outcome] += 1

    def admission_time(self, seconds: float) -> None:
        assert 0 <= seconds < 10
        self.timed += 1


class World:
    def __init__(
        self, db: Database, redis_url: str | None = None, spend_wait_s: float = 0.2
    ) -> None:
        self.clock = FakeClock(START)
        self.db = db
        self.money = Money()
        self.plans = PlanLimits(db, self.clock)
        self.limiter: InProcessRateLimiter | RedisRateLimiter = InProcessRateLimiter(self.clock)
        self.guard: InProcessSpendGuard | RedisSpendGuard = InProcessSpendGuard(
            self.money, self.clock
        )
        self.prefix = f"test:adm:{uuid.uuid4().hex[:8]}:"
        if redis_url is not None:
            self.limiter = RedisRateLimiter(
                redis_url,
                self.clock,
                InProcessRateLimiter(self.clock),
                1,
                key_prefix=self.prefix + "rate:",
            )
            self.guard = RedisSpendGuard(redis_url, self.money, self.clock, key_prefix=self.prefix)
        self.suspension = SuspensionService(db, self.clock, self.money, SuspensionHooks())
        self.metrics = Metrics()
        self.enforcement = Enforcement(
            self.plans,
            self.limiter,
            self.guard,
            self.suspension,
            self.money,
            self.clock,
            self.metrics,
            spend_wait_s=spend_wait_s,
        )
        for account, plan in (
            ("acme", "BUSINESS"),
            ("bigco", "ENTERPRISE"),
            ("firebox", "DEVELOPER"),
        ):
            with db.transaction() as session:
                session.add(AccountRow(id=account, plan=plan, create_time=START, update_time=START))


@pytest.fixture
def world(database: Database) -> World:
    return World(database)


@pytest.fixture(params=BACKENDS)
async def both(request: pytest.FixtureRequest, database: Database) -> AsyncIterator[World]:
    """A world on in-process counters, and (when Redis is set) one on Redis."""
    made = World(database, REDIS_URL if request.param == "redis" else None)
    yield made
    if isinstance(made.limiter, RedisRateLimiter):
        assert made.limiter.fallback_checks == 0
        await made.limiter.aclose()
    if isinstance(made.guard, RedisSpendGuard):
        assert made.guard.fallbacks == 0
        await made.guard.aclose()
        client = redis.Redis.from_url(made.guard.redis_url)
        for key in client.scan_iter(f"{made.prefix}*"):
            client.delete(key)
        client.close()


def reserved(world: World, account: str) -> int:
    """Money held by open reservations of ``account`` this month, on either backend."""
    if isinstance(world.guard, InProcessSpendGuard):
        return world.guard.reserved(account)
    client = redis.Redis.from_url(world.guard.redis_url)
    try:
        value = client.hget(world.guard.keys(account, "2026-03")[0], "reserved")
    finally:
        client.close()
    return int(value or 0)


def demand(
    account: str = "acme", prompt: int = 10, completion: int = 90, **extra: object
) -> Demand:
    base = Demand(
        "req-1",
        account,
        "chat",
        "accounts/firebox/models/m",
        "accounts/firebox/models/m",
        None,
        None,
        prompt,
        completion,
    )
    return replace(base, **extra)  # type: ignore[arg-type]


def usage(account: str = "acme", prompt: int = 10, completion: int = 40) -> UsageRecord:
    return UsageRecord("req-1", account, "m", "m", "chat", START, prompt, completion)


@pytest.mark.anyio
async def test_admit_reserves_and_settle_commits_once(both: World) -> None:
    ticket = await both.enforcement.admit(MEMBER, demand())
    assert isinstance(ticket, EnforcedTicket)
    assert ticket.headers == {
        "x-ratelimit-limit-requests": "600",
        "x-ratelimit-remaining-requests": "599",
        "x-ratelimit-reset-requests": "60s",
    }
    assert reserved(both, "acme") == 100
    await ticket.settle(usage())
    await ticket.settle(usage(completion=1000))  # a second settle changes nothing
    assert (reserved(both, "acme"), both.guard.committed("acme")) == (0, 50)
    released = await both.enforcement.admit(MEMBER, demand())
    await released.settle(None)
    assert (reserved(both, "acme"), both.guard.committed("acme")) == (0, 50)
    assert both.metrics.outcomes == Counter(admitted=2)


@pytest.mark.anyio
async def test_rate_limit_refuses_with_retry_after(both: World) -> None:
    both.plans.set_account_limits(OPERATOR, "acme", 3)
    for _ in range(3):
        await both.enforcement.admit(MEMBER, demand())
    both.clock.advance(timedelta(seconds=20))
    with pytest.raises(RateLimited) as refused:
        await both.enforcement.admit(MEMBER, demand())
    error = refused.value
    assert error.code == "rate_limit_exceeded"
    assert error.headers == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "40s",
        "Retry-After": "40",
    }
    assert "3 requests per minute" in error.message and "Retry after 40 s" in error.message
    assert reserved(both, "acme") == 300  # the refused one reserved nothing
    # On-demand deployments are never rate-limited; nor is the operator.
    deployed = await both.enforcement.admit(MEMBER, demand(deployment="d1"))
    assert deployed.headers == {}
    await both.enforcement.admit(OPERATOR, demand())
    assert both.metrics.outcomes == Counter(admitted=4, rate_limited=1, operator=1)
    assert both.metrics.timed == 6  # every admission is timed, refused ones too
    both.clock.advance(timedelta(seconds=40))
    await both.enforcement.admit(MEMBER, demand())  # the window slid


@pytest.mark.anyio
async def test_enterprise_is_unlimited(world: World) -> None:
    for _ in range(1000):
        ticket = await world.enforcement.admit(MEMBER, demand("bigco", 0, 1))
    assert ticket.headers == {}


@pytest.mark.parametrize(
    ("reason", "code", "hint"),
    [
        ("MONTHLY_SPEND_LIMIT_EXCEEDED", "monthly_spend_limit_exceeded", "spend limit"),
        ("CREDIT_DEPLETED", "credit_depleted", "Add a payment method or buy credits"),
        ("FAILED_PAYMENTS", "failed_payments", "Pay the failed invoice"),
        ("BLOCKED_BY_ABUSE_RULE", "blocked", "Contact the operator"),
    ],
)
@pytest.mark.anyio
async def test_suspended_accounts_get_a_402_saying_what_lifts_it(
    world: World, reason: str, code: str, hint: str
) -> None:
    world.suspension.raise_reason("acme", reason)
    with pytest.raises(PaymentRequired) as refused:
        await world.enforcement.admit(MEMBER, demand())
    assert refused.value.code == code and hint in refused.value.message
    assert world.limiter.check("acme", 600, 0, mode=-1).used == 0  # nothing counted
    assert world.metrics.outcomes == Counter(suspended=1)


@pytest.mark.anyio
async def test_spend_cap_refuses_and_suspends_when_reached(both: World) -> None:
    both.money.states["acme"] = SpendState("acme", "2026-03", 0, 1000, 0, True, False)
    first = await both.enforcement.admit(MEMBER, demand(prompt=100, completion=500))
    # Only the other request in flight makes this one not fit: after waiting for room,
    # a 429 to retry, never a 402 nor a suspension.
    with pytest.raises(RateLimited) as soft:
        await both.enforcement.admit(MEMBER, demand(prompt=100, completion=500))
    assert soft.value.code == "spend_reserved"
    assert soft.value.headers == {"Retry-After": "1"}
    assert both.suspension.reasons("acme") == ()
    assert "in flight" in soft.value.message and "suspended" not in soft.value.message
    await first.settle(usage(prompt=100, completion=500))
    # Now the settled usage alone leaves no room for 600: suspended for the month.
    with pytest.raises(PaymentRequired) as hard:
        await both.enforcement.admit(MEMBER, demand(prompt=100, completion=500))
    assert both.suspension.reasons("acme") == ("MONTHLY_SPEND_LIMIT_EXCEEDED",)
    assert hard.value.code == "monthly_spend_limit_exceeded"
    message = hard.value.message
    assert "is suspended" in message and "max_tokens" not in message
    assert "of $0.001 this month" in message and "one generated token ($0.0006)" in message
    assert "accountSpendLimit" in message and "month to roll over" in message
    with pytest.raises(PaymentRequired) as after:
        await both.enforcement.admit(MEMBER, demand(prompt=1, completion=1))
    assert after.value.code == "monthly_spend_limit_exceeded"
    assert both.metrics.outcomes == Counter(
        admitted=1, spend_reserved=1, spend_refused=1, suspended=1
    )


@pytest.mark.anyio
async def test_credits_depleted_without_a_payment_method(both: World) -> None:
    both.money.states["acme"] = SpendState("acme", "2026-03", 0, 50_000_000, 500, False, False)
    await (await both.enforcement.admit(MEMBER, demand(prompt=100, completion=200))).settle(
        usage(prompt=100, completion=200)
    )
    with pytest.raises(PaymentRequired) as refused:
        await both.enforcement.admit(MEMBER, demand(prompt=100, completion=200))
    assert refused.value.code == "credit_depleted"
    assert both.suspension.reasons("acme") == ("CREDIT_DEPLETED",)
    message = refused.value.message
    assert "is suspended" in message and "max_tokens" not in message
    assert "add a payment method or buy credits" in message


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("state", "hint"),
    [
        # A fresh $1 account without a card; a request that could cost $2.
        (SpendState("acme", "2026-03", 0, 50_000_000, 1_000_000, False, False), "credit of $1.00"),
        (SpendState("acme", "2026-03", 0, 1_000_000, 0, True, False), "spend limit of $1.00"),
    ],
)
async def test_a_request_that_could_never_fit_is_refused_without_suspending(
    both: World, state: SpendState, hint: str
) -> None:
    both.money.states["acme"] = state
    with pytest.raises(PaymentRequired) as refused:
        await both.enforcement.admit(MEMBER, demand(prompt=1_000_000, completion=1_000_000))
    assert refused.value.code == "request_exceeds_spend_limit"
    message = refused.value.message
    assert "at least $2.00" in message and hint in message and "prompt" in message
    assert both.suspension.reasons("acme") == ()
    assert reserved(both, "acme") == 0
    # A request that fits is still admitted: the account was not suspended.
    ticket = await both.enforcement.admit(MEMBER, demand(prompt=1_000, completion=9_000))
    await ticket.settle(usage(prompt=1_000, completion=9_000))
    assert both.metrics.outcomes == Counter(spend_refused=1, admitted=1)


@pytest.mark.anyio
async def test_a_settlement_that_fails_releases_its_reservation(both: World) -> None:
    ticket = await both.enforcement.admit(MEMBER, demand())
    assert reserved(both, "acme") == 100
    both.money.broken = True
    await ticket.settle(usage())  # logged, never raised
    assert reserved(both, "acme") == 0
    assert both.guard.committed("acme") == 0


@pytest.mark.anyio
async def test_token_limits(both: World) -> None:
    both.plans.set_account_limits(
        OPERATOR, "acme", prompt_tokens_per_minute=100, generated_tokens_per_minute=50
    )
    ticket = await both.enforcement.admit(MEMBER, demand(prompt=60))
    with pytest.raises(RateLimited) as prompt_refused:
        await both.enforcement.admit(MEMBER, demand(prompt=60))
    assert "100 prompt tokens per minute" in prompt_refused.value.message
    with pytest.raises(InvalidArgument):
        await both.enforcement.admit(MEMBER, demand(prompt=101))
    await ticket.settle(usage(prompt=60, completion=50))
    with pytest.raises(RateLimited) as generated_refused:
        await both.enforcement.admit(MEMBER, demand(prompt=1))
    assert "50 generated tokens per minute" in generated_refused.value.message
    both.clock.advance(timedelta(seconds=60))
    await both.enforcement.admit(MEMBER, demand(prompt=60))


def test_429_and_headers_through_a_real_route(world: World) -> None:
    world.plans.set_account_limits(OPERATOR, "acme", 2)
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/infer")
    async def infer() -> dict[str, str]:
        ticket = await world.enforcement.admit(MEMBER, demand())
        await ticket.settle(None)
        return ticket.headers

    with TestClient(app) as client:
        assert client.post("/infer").json()["x-ratelimit-remaining-requests"] == "1"
        assert client.post("/infer").status_code == 200
        refused = client.post("/infer")
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "60"
    assert refused.headers["x-ratelimit-limit-requests"] == "2"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"] == "60s"
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert error["type"] == "rate_limit_error"
    assert "2 requests per minute" in error["message"]


@pytest.mark.anyio
async def test_a_refused_request_uses_up_none_of_the_rate_window(both: World) -> None:
    both.plans.set_account_limits(OPERATOR, "acme", 5, prompt_tokens_per_minute=100)
    both.money.states["acme"] = SpendState("acme", "2026-03", 0, 1000, 0, True, False)
    held = await both.enforcement.admit(MEMBER, demand(prompt=50, completion=550))
    with pytest.raises(RateLimited):  # the money does not fit: no request, no tokens
        await both.enforcement.admit(MEMBER, demand(prompt=50, completion=550))
    with pytest.raises(RateLimited):  # the prompt tokens do not fit: no request counted
        await both.enforcement.admit(MEMBER, demand(prompt=60, completion=1))
    assert await both.limiter.used("acme") == 1
    assert await both.limiter.used("acme:prompt-tokens") == 50
    assert reserved(both, "acme") == 600
    await held.settle(None)
    ticket = await both.enforcement.admit(MEMBER, demand(prompt=50, completion=550))
    assert ticket.headers["x-ratelimit-remaining-requests"] == "3"
    assert both.metrics.outcomes == Counter(admitted=2, spend_reserved=1, rate_limited=1)


@pytest.mark.anyio
async def test_a_refusal_judged_on_a_stale_snapshot_does_not_suspend(world: World) -> None:
    world.money.states["acme"] = SpendState("acme", "2026-03", 900, 1000, 0, True, False)
    await (await world.enforcement.admit(MEMBER, demand(prompt=1, completion=1))).settle(None)
    # The limit was raised, but the guard's snapshot (cached 2 s) still says 1000.
    world.money.states["acme"] = SpendState("acme", "2026-03", 900, 10_000, 0, True, False)
    with pytest.raises(PaymentRequired):
        await world.enforcement.admit(MEMBER, demand(prompt=100, completion=100))
    assert world.suspension.reasons("acme") == ()


@pytest.mark.redis
@pytest.mark.anyio
@pytest.mark.skipif(not REDIS_URL, reason="FIREBOX_TEST_REDIS_URL is not set")
async def test_redis_admission_is_one_round_trip(database: Database) -> None:
    world = World(database, REDIS_URL)
    assert isinstance(world.limiter, RedisRateLimiter)
    assert isinstance(world.guard, RedisSpendGuard)
    calls: Counter[str] = Counter()
    for owner, name in (
        (world.limiter, "_script"),
        (world.guard, "_reserve"),
        (world.guard, "_admit"),
    ):
        real = getattr(owner, name)

        async def counted(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            calls[_name] += 1
            return await _real(*args, **kwargs)

        setattr(owner, name, counted)
    world.plans.set_account_limits(
        OPERATOR, "acme", 600, prompt_tokens_per_minute=1000, generated_tokens_per_minute=500
    )
    try:
        for _ in range(3):
            ticket = await world.enforcement.admit(MEMBER, demand())
        assert calls == Counter(_admit=3)
        assert ticket.headers["x-ratelimit-remaining-requests"] == "597"
        assert await world.limiter.used("acme:prompt-tokens") == 30
    finally:
        await world.limiter.aclose()
        await world.guard.aclose()


@pytest.mark.redis
@pytest.mark.anyio
@pytest.mark.skipif(not REDIS_URL, reason="FIREBOX_TEST_REDIS_URL is not set")
async def test_redis_down_falls_back_per_replica_and_recovers(database: Database) -> None:
    assert REDIS_URL is not None
    target = redis.Redis.from_url(REDIS_URL).connection_pool.connection_kwargs
    proxy = Proxy(target.get("host", "127.0.0.1"), int(target.get("port", 6379)))
    url = f"redis://127.0.0.1:{proxy.port}/{int(target.get('db', 0))}"
    world = World(database)
    world.limiter = RedisRateLimiter(
        url, world.clock, InProcessRateLimiter(world.clock), 4, key_prefix=world.prefix + "rate:"
    )
    world.guard = RedisSpendGuard(url, world.money, world.clock, key_prefix=world.prefix, retry_s=0)
    enforcement = Enforcement(
        world.plans, world.limiter, world.guard, world.suspension, world.money, world.clock
    )
    world.plans.set_account_limits(OPERATOR, "acme", 8)
    try:
        # Down: this replica enforces 8 // 4 = 2 in memory, and reserves in memory.
        local = await enforcement.admit(MEMBER, demand())
        assert isinstance(local, EnforcedTicket) and not local.reservation.shared
        assert local.headers["x-ratelimit-limit-requests"] == "2"
        await enforcement.admit(MEMBER, demand())
        with pytest.raises(RateLimited):
            await enforcement.admit(MEMBER, demand())
        # The guard (retry_s=0) tried Redis on each reservation: the ADMIT call, then its own
        # twice; the limiter, in its cool-down, answered all three checks from memory.
        assert (world.limiter.fallback_checks, world.guard.fallbacks, world.limiter.outages) == (
            3,
            3,
            1,
        )
        # Back up, after the limiter's cool-down: one shared call again.
        await proxy.up()
        world.clock.advance(timedelta(seconds=1))
        shared = await enforcement.admit(MEMBER, demand())
        assert isinstance(shared, EnforcedTicket) and shared.reservation.shared
        assert shared.headers["x-ratelimit-limit-requests"] == "8"
        assert shared.headers["x-ratelimit-remaining-requests"] == "7"
        assert not world.limiter.degraded
        await shared.settle(usage())
        # (off the loop: the proxy runs on it, and ``committed`` blocks)
        assert await asyncio.to_thread(world.guard.committed, "acme") == 50
    finally:
        await proxy.down()
        await world.limiter.aclose()
        await world.guard.aclose()
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"{world.prefix}*"):
            client.delete(key)
        client.close()


@pytest.mark.redis
@pytest.mark.anyio
@pytest.mark.skipif(not REDIS_URL, reason="FIREBOX_TEST_REDIS_URL is not set")
async def test_a_deferred_redis_settlement_holds_until_it_runs_and_settles_once(
    database: Database,
) -> None:
    world = World(database, REDIS_URL)
    guard = world.guard
    assert isinstance(guard, RedisSpendGuard)
    gate = asyncio.Event()
    settles: list[str] = []
    real = guard._settle

    async def gated(*args: Any, **kwargs: Any) -> Any:
        settles.append(kwargs["args"][1])
        await gate.wait()
        return await real(*args, **kwargs)

    guard._settle = gated  # type: ignore[assignment]
    try:
        ticket = await world.enforcement.admit(MEMBER, demand())
        await ticket.settle_soon(usage())  # returns at once: the settlement is a task
        await ticket.settle_soon(usage(completion=1000))  # only the first counts
        await ticket.settle(usage(completion=1000))
        for _ in range(6000):  # until the settlement reached the gate (60 s, failure path)
            if settles:
                break
            await asyncio.sleep(0.01)
        assert settles, "the deferred settlement never started"
        # Until the settlement runs, the reservation holds the worst case.
        assert (reserved(world, "acme"), len(guard._deferred)) == (100, 1)
        gate.set()
        await guard.drain()
        assert (reserved(world, "acme"), guard._deferred) == (0, set())
        assert await asyncio.to_thread(guard.committed, "acme") == 50
        # Closing the guard waits for a settlement still deferred.
        gate.clear()
        last = await world.enforcement.admit(MEMBER, demand())
        await last.settle_soon(usage(completion=20))
        asyncio.get_running_loop().call_later(0.05, gate.set)
        await guard.aclose()
        assert reserved(world, "acme") == 0
        assert settles == [ticket.reservation.id, last.reservation.id]  # once each
        client = redis.Redis.from_url(guard.redis_url)
        assert int(client.hget(guard.keys("acme", "2026-03")[0], "committed") or 0) == 80
        client.close()
    finally:
        gate.set()
        await world.limiter.aclose()
        await guard.aclose()
        client = redis.Redis.from_url(guard.redis_url)
        for key in client.scan_iter(f"{world.prefix}*"):
            client.delete(key)
        client.close()


def enforcement_of(world: World, spend_wait_s: float) -> Enforcement:
    """``world``'s enforcement, waiting up to ``spend_wait_s`` for room."""
    return Enforcement(
        world.plans,
        world.limiter,
        world.guard,
        world.suspension,
        world.money,
        world.clock,
        world.metrics,
        spend_wait_s=spend_wait_s,
    )


@pytest.mark.anyio
async def test_a_request_held_out_only_by_requests_in_flight_waits_for_room(both: World) -> None:
    """Issue 13 finding 7: money merely held in flight makes a request wait, not fail."""
    both.money.states["acme"] = SpendState("acme", "2026-03", 0, 1000, 0, True, False)
    enforcement = enforcement_of(both, spend_wait_s=60)  # far more than the settle takes
    first = await enforcement.admit(MEMBER, demand(prompt=100, completion=500))
    # 600 + 600 > 1000, though the month alone (0 used) could pay for both.
    waiting = asyncio.create_task(enforcement.admit(MEMBER, demand(prompt=100, completion=500)))
    room = both.guard.room
    while room.waiting("acme") == 0:  # the second request was refused once and now waits
        assert not waiting.done(), waiting
        await asyncio.sleep(0.01)
    await first.settle(usage(prompt=100, completion=50))  # 150 used: room for 600 again
    second = await waiting
    assert isinstance(second, EnforcedTicket) and second.completion_cap is None
    assert reserved(both, "acme") == 600
    await second.settle(None)
    assert both.suspension.reasons("acme") == ()
    assert both.metrics.outcomes == Counter(admitted=2)


@pytest.mark.anyio
async def test_a_request_that_only_fits_in_part_is_admitted_with_its_completion_capped(
    both: World,
) -> None:
    """The room left pays for the prompt and some tokens: admitted, capped to those tokens."""
    both.money.unit = 2_500_000  # 2.5 micro-USD a token, rounded up per request
    both.money.states["acme"] = SpendState("acme", "2026-03", 0, 1000, 0, True, False)
    first = await both.enforcement.admit(MEMBER, demand(prompt=100, completion=200, choices=1))
    assert first.completion_cap is None and reserved(both, "acme") == 750
    # Worst case 2.5 x (20 + 2 x 500) = 2550 > the 250 left; its floor 2.5 x 22 = 55 fits.
    capped = await both.enforcement.admit(MEMBER, demand(prompt=20, completion=2 * 500, choices=2))
    # The most per choice that 250 pays for: 2.5 x (20 + 2 x 40) = 250 exactly; 41 is 255.
    assert capped.completion_cap == 40
    assert reserved(both, "acme") == 1000
    # A third fits the cap but not beside them: a 429 after the wait, no suspension.
    with pytest.raises(RateLimited) as soft:
        await both.enforcement.admit(MEMBER, demand(prompt=4, completion=10, choices=1))
    assert soft.value.code == "spend_reserved"
    assert both.suspension.reasons("acme") == ()
    await first.settle(usage(prompt=100, completion=200))
    await capped.settle(usage(prompt=20, completion=2 * 40))
    assert await asyncio.to_thread(both.guard.committed, "acme") == 1000  # exactly the cap
    # Reaching the cap suspended the account (the settlement saw it): 402 from now on.
    with pytest.raises(PaymentRequired) as hard:
        await both.enforcement.admit(MEMBER, demand(prompt=4, completion=10, choices=1))
    assert hard.value.code == "monthly_spend_limit_exceeded"
    assert both.suspension.reasons("acme") == ("MONTHLY_SPEND_LIMIT_EXCEEDED",)
    assert both.metrics.outcomes == Counter(
        admitted=1, admitted_capped=1, spend_reserved=1, suspended=1
    )


@pytest.mark.anyio
async def test_32_way_concurrency_fills_the_limit_without_early_402s(both: World) -> None:
    """Issue 13 finding 7: 300 small requests at 32-way concurrency, a limit worth ~100.

    Each request reserves a worst case ~10x its real cost (a 200-token bound,
    ~15 tokens used). Usage must end at >= 90% of the limit and never above
    it, and no request may get a 402 while the smallest one still fits.
    """
    limit = 2_000  # ~100 requests of ~20 micro-USD
    both.money.states["acme"] = SpendState("acme", "2026-03", 0, limit, 0, True, False)
    enforcement = enforcement_of(both, spend_wait_s=2.0)
    prompt, bound = 10, 200
    smallest_floor = prompt + 1
    jobs = iter(range(300))
    spent = 0  # counted before each settlement: never below what the guard has committed
    codes: Counter[str] = Counter()
    early: list[int] = []

    async def worker() -> None:
        nonlocal spent
        for job in jobs:
            try:
                ticket = await enforcement.admit(
                    MEMBER, demand(prompt=prompt, completion=bound, choices=1)
                )
            except PaymentRequired as refused:
                codes[refused.code] += 1
                if spent + smallest_floor <= limit:
                    early.append(spent)
                continue
            except RateLimited as refused:
                codes[refused.code] += 1
                continue
            codes["capped" if ticket.completion_cap is not None else "ok"] += 1
            await asyncio.sleep(0)  # the engine runs: other requests interleave
            generated = min(5 + job % 11, ticket.completion_cap or bound)
            spent += prompt + generated
            assert spent <= limit
            await ticket.settle(usage(prompt=prompt, completion=generated))

    await asyncio.gather(*(worker() for _ in range(32)))
    assert early == [], codes
    assert limit * 9 // 10 <= spent <= limit, (spent, codes)
    assert reserved(both, "acme") == 0
    assert await asyncio.to_thread(both.guard.committed, "acme") == spent
    assert codes["ok"] + codes["capped"] >= 90, codes
    assert set(codes) <= {"ok", "capped", "spend_reserved", "monthly_spend_limit_exceeded"}
