"""``Enforcement``: suspension, rate limits, spend reservations, and the 429/402 answers."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
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
from firebox.limits.rate_limiter import InProcessRateLimiter
from firebox.limits.spend_guard import InProcessSpendGuard
from firebox.limits.suspension import SuspensionService
from firebox.store.database import Database

START = datetime(2026, 3, 10, 12, 0, 0, tzinfo=UTC)
OPERATOR = Principal("firebox", "op", 1, Role.ADMIN, "k0", "h0", is_operator=True)
MEMBER = Principal("acme", "alice", 2, Role.USER, "k1", "h1")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Money:
    """A MoneySource whose prices are 1 micro-USD per token."""

    def __init__(self) -> None:
        self.states: dict[str, SpendState] = {}

    def spend_state(self, account_id: str) -> SpendState:
        return self.states.get(account_id) or SpendState(
            account_id, "2026-03", 0, 50_000_000, 1_000_000, True, False
        )

    def cost(self, usage: UsageRecord) -> int:
        return usage.prompt_tokens + usage.completion_tokens

    def worst_case_cost(self, demand: Demand) -> int:
        return demand.prompt_tokens + demand.completion_tokens


class Metrics:
    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()

    def admission(self, outcome: str) -> None:
        self.outcomes[outcome] += 1


class World:
    def __init__(self, db: Database) -> None:
        self.clock = FakeClock(START)
        self.db = db
        self.money = Money()
        self.plans = PlanLimits(db, self.clock)
        self.limiter = InProcessRateLimiter(self.clock)
        self.guard = InProcessSpendGuard(self.money, self.clock)
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
async def test_admit_reserves_and_settle_commits_once(world: World) -> None:
    ticket = await world.enforcement.admit(MEMBER, demand())
    assert isinstance(ticket, EnforcedTicket)
    assert ticket.headers == {
        "x-ratelimit-limit-requests": "600",
        "x-ratelimit-remaining-requests": "599",
        "x-ratelimit-reset-requests": "60s",
    }
    assert world.guard.reserved("acme") == 100
    await ticket.settle(usage())
    await ticket.settle(usage(completion=1000))  # a second settle changes nothing
    assert (world.guard.reserved("acme"), world.guard.committed("acme")) == (0, 50)
    released = await world.enforcement.admit(MEMBER, demand())
    await released.settle(None)
    assert (world.guard.reserved("acme"), world.guard.committed("acme")) == (0, 50)
    assert world.metrics.outcomes == Counter(admitted=2)


@pytest.mark.anyio
async def test_rate_limit_refuses_with_retry_after(world: World) -> None:
    world.plans.set_account_limits(OPERATOR, "acme", 3)
    for _ in range(3):
        await world.enforcement.admit(MEMBER, demand())
    world.clock.advance(timedelta(seconds=20))
    with pytest.raises(RateLimited) as refused:
        await world.enforcement.admit(MEMBER, demand())
    error = refused.value
    assert error.code == "rate_limit_exceeded"
    assert error.headers == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "40s",
        "Retry-After": "40",
    }
    assert "3 requests per minute" in error.message and "Retry after 40 s" in error.message
    assert world.guard.reserved("acme") == 300  # the refused one reserved nothing
    # On-demand deployments are never rate-limited; nor is the operator.
    deployed = await world.enforcement.admit(MEMBER, demand(deployment="d1"))
    assert deployed.headers == {}
    await world.enforcement.admit(OPERATOR, demand())
    assert world.metrics.outcomes == Counter(admitted=4, rate_limited=1, operator=1)
    world.clock.advance(timedelta(seconds=40))
    await world.enforcement.admit(MEMBER, demand())  # the window slid


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
async def test_spend_cap_refuses_and_suspends_when_reached(world: World) -> None:
    world.money.states["acme"] = SpendState("acme", "2026-03", 0, 1000, 0, True, False)
    first = await world.enforcement.admit(MEMBER, demand(prompt=100, completion=500))
    # Only the other request in flight makes this one not fit: refused, not suspended.
    with pytest.raises(PaymentRequired) as soft:
        await world.enforcement.admit(MEMBER, demand(prompt=100, completion=500))
    assert soft.value.code == "monthly_spend_limit_exceeded"
    assert world.suspension.reasons("acme") == ()
    await first.settle(usage(prompt=100, completion=500))
    # Now the settled usage alone leaves no room for 600: suspended for the month.
    with pytest.raises(PaymentRequired):
        await world.enforcement.admit(MEMBER, demand(prompt=100, completion=500))
    assert world.suspension.reasons("acme") == ("MONTHLY_SPEND_LIMIT_EXCEEDED",)
    with pytest.raises(PaymentRequired) as after:
        await world.enforcement.admit(MEMBER, demand(prompt=1, completion=1))
    assert after.value.code == "monthly_spend_limit_exceeded"
    assert world.metrics.outcomes == Counter(admitted=1, spend_refused=2, suspended=1)


@pytest.mark.anyio
async def test_credits_depleted_without_a_payment_method(world: World) -> None:
    world.money.states["acme"] = SpendState("acme", "2026-03", 0, 50_000_000, 500, False, False)
    with pytest.raises(PaymentRequired) as refused:
        await world.enforcement.admit(MEMBER, demand(prompt=100, completion=500))
    assert refused.value.code == "credit_depleted"
    assert world.suspension.reasons("acme") == ("CREDIT_DEPLETED",)


@pytest.mark.anyio
async def test_token_limits(world: World) -> None:
    world.plans.set_account_limits(
        OPERATOR, "acme", prompt_tokens_per_minute=100, generated_tokens_per_minute=50
    )
    ticket = await world.enforcement.admit(MEMBER, demand(prompt=60))
    with pytest.raises(RateLimited) as prompt_refused:
        await world.enforcement.admit(MEMBER, demand(prompt=60))
    assert "100 prompt tokens per minute" in prompt_refused.value.message
    with pytest.raises(InvalidArgument):
        await world.enforcement.admit(MEMBER, demand(prompt=101))
    await ticket.settle(usage(prompt=60, completion=50))
    with pytest.raises(RateLimited) as generated_refused:
        await world.enforcement.admit(MEMBER, demand(prompt=1))
    assert "50 generated tokens per minute" in generated_refused.value.message
    world.clock.advance(timedelta(seconds=60))
    await world.enforcement.admit(MEMBER, demand(prompt=60))


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
