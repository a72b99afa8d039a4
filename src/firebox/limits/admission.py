"""``Enforcement``: the admission serving asks before every inference request.

In order (ARCHITECTURE "one request, end to end", step 3):

1. suspension — an account with a reason is refused with a 402 naming it
   and what lifts it;
2. the serverless rate limit (requests/min; tokens/min where the operator
   set them) — never for on-demand deployments, batch jobs nor unlimited plans;
3. a spend reservation of the request's worst-case cost. When the room left
   under the cap cannot hold the worst case but can hold the request's floor
   (its prompt plus one token per choice), the request is admitted holding
   that room, with its completion capped to the most tokens the room pays
   for (``EnforcedTicket.completion_cap``: the engine stops there with
   ``finish_reason: "length"``). A request refused only because other
   requests' reservations fill the cap (a soft refusal) waits up to
   ``spend_wait_s`` for one of them to settle, then gets a 429
   ``spend_reserved`` with ``Retry-After``: it suspends nothing. Only a
   refusal that nothing in flight caused (``Refusal.hard``: the settled
   usage leaves less than the floor) is a 402 that suspends the account for
   its reason — unless the request could never fit at all
   (``Refusal.oversized``: its floor alone passes the cap), which is refused
   as ``request_exceeds_spend_limit`` and suspends nothing.

The platform operator is never limited. The ticket carries the rate-limit
headers and settles the reservation once, to the priced usage;
``settle_soon`` (what serving calls) runs a Redis settlement after the
answer is sent, so its round trip is not on the response path.

On the hot path nothing waits on the database: plan limits and suspension
reasons come from per-replica caches (read in a worker thread on a miss),
the in-process limiter and guard do no I/O, and when both live in the same
Redis the rate checks and the reservation are one Lua round trip
(``redis_scripts.ADMIT``), which counts the rate only if the money fits.
When Redis is down (or the two use different backends) each is asked on
its own and falls back on its own; what a refused request's passed checks
counted is then taken back (``RateLimiter.refund``), so in every mode a
refused request uses up nothing of the rate window.

Token limits are an approximation: prompt tokens are counted at admission
from the demand's upper bound (over-counting short prompts), generated
tokens only when a request settles, so requests already in flight can
take the generated count past its limit; new ones are then refused.
"""

from __future__ import annotations

import logging
import time
from typing import NoReturn, Protocol

from anyio import to_thread

from firebox.accounts.principal import Principal
from firebox.clock import Clock
from firebox.errors import InvalidArgument, PaymentRequired, RateLimited
from firebox.inference.admission import Demand, OpenTicket, Ticket
from firebox.inference.metering import UsageRecord
from firebox.limits.hooks import Reason
from firebox.limits.plans import AccountLimits, PlanLimits
from firebox.limits.ports import MoneySource
from firebox.limits.rate_limiter import (
    RateCheck,
    RateDecision,
    RateLimiter,
    RedisRateLimiter,
    generated_tokens_key,
    prompt_tokens_key,
    requests_key,
)
from firebox.limits.redis_spend_guard import RedisSpendGuard
from firebox.limits.spend_guard import Refusal, Reservation, SpendGuard
from firebox.limits.suspension import SuspensionService
from firebox.money_state import format_usd

log = logging.getLogger(__name__)

_GENERATED = "generated tokens"

_CODES = {
    Reason.MONTHLY_SPEND_LIMIT_EXCEEDED: "monthly_spend_limit_exceeded",
    Reason.CREDIT_DEPLETED: "credit_depleted",
    Reason.FAILED_PAYMENTS: "failed_payments",
    Reason.BLOCKED_BY_ABUSE_RULE: "blocked",
}
_WHAT_LIFTS = {
    Reason.MONTHLY_SPEND_LIMIT_EXCEEDED: "its usage reached the monthly spend limit. Raise the "
    "account's spend limit (accountSpendLimit), buy credits to reach a higher usage tier, or "
    "wait for the month to roll over (UTC)",
    Reason.CREDIT_DEPLETED: "its credits are used up and it has no payment method on file. "
    "Add a payment method or buy credits",
    Reason.FAILED_PAYMENTS: "an invoice payment failed. Pay the failed invoice "
    "(or add a working payment method and pay it)",
    Reason.BLOCKED_BY_ABUSE_RULE: "it was blocked by the platform operator. Contact the operator",
}


class AdmissionMetrics(Protocol):
    """Counts admissions by outcome (the lead's Prometheus counter)."""

    def admission(self, outcome: str) -> None: ...

    def admission_time(self, seconds: float) -> None:
        """How long one admission took, whatever its outcome."""
        ...


def suspended(account_id: str, reason: str) -> PaymentRequired:
    """The 402 for an account suspended for ``reason``."""
    try:
        known = Reason(reason)
    except ValueError:  # a reason this replica does not know yet: the safe wording
        known = Reason.BLOCKED_BY_ABUSE_RULE
    return PaymentRequired(
        f"Account {account_id!r} is suspended: {_WHAT_LIFTS[known]}.", code=_CODES[known]
    )


_RAISE_LIMIT = {
    Reason.MONTHLY_SPEND_LIMIT_EXCEEDED: "raise the account's spend limit (accountSpendLimit) "
    "or buy credits to reach a higher usage tier",
    Reason.CREDIT_DEPLETED: "add a payment method or buy credits",
}
_LIFT = {
    Reason.MONTHLY_SPEND_LIMIT_EXCEEDED: "raise the account's spend limit (accountSpendLimit), "
    "buy credits to reach a higher usage tier, or wait for the month to roll over (UTC)",
    Reason.CREDIT_DEPLETED: "add a payment method or buy credits",
}
_CAP_NAMES = {
    Reason.MONTHLY_SPEND_LIMIT_EXCEEDED: "monthly spend limit",
    Reason.CREDIT_DEPLETED: "credit",
}


SPEND_RETRY_AFTER_S = 1  # what a 429 spend_reserved asks: a request in flight settles soon


def spend_refused(account_id: str, refusal: Refusal, floor_micros: int) -> PaymentRequired:
    """The 402 for a request whose least cost does not fit under the account's cap.

    Two cases, two messages: a request that could never fit (not suspended:
    a smaller one fits), and one that does not fit what is left of the month
    (the account is suspended: say what lifts it).
    """
    floor, cap = f"${format_usd(floor_micros)}", f"${format_usd(refusal.limit_micros)}"
    what = _CAP_NAMES[refusal.reason]
    if refusal.oversized:
        return PaymentRequired(
            f"This request costs at least {floor} (its prompt and one generated token), more "
            f"than account {account_id!r}'s whole {what} of {cap} this month, so it can never "
            f"run as sent. Shorten the prompt (or lower n), or {_RAISE_LIMIT[refusal.reason]}.",
            code="request_exceeds_spend_limit",
        )
    return PaymentRequired(
        f"Account {account_id!r} is suspended: what is left of its {what} of {cap} this "
        f"month cannot pay for this request's prompt and one generated token ({floor}). "
        f"To lift the suspension, {_LIFT[refusal.reason]}.",
        code=_CODES[refusal.reason],
    )


def spend_reserved(account_id: str, refusal: Refusal, waited_s: float) -> RateLimited:
    """The 429 for a request that fits the cap, but not beside the requests in flight.

    Their reservations hold the rest of the month's room until they settle
    (usually well under a second), so this is a retry, never a suspension.
    """
    what = _CAP_NAMES[refusal.reason]
    return RateLimited(
        f"Account {account_id!r}'s requests in flight hold what is left of its {what} of "
        f"${format_usd(refusal.limit_micros)} this month (${format_usd(refusal.used_micros)} "
        f"used or held), and none finished within {waited_s:g} s. Retry after "
        f"{SPEND_RETRY_AFTER_S} s, send fewer requests at once, or set max_tokens so each "
        "reserves less.",
        code="spend_reserved",
        headers={"Retry-After": str(SPEND_RETRY_AFTER_S)},
    )


def rate_limited(account_id: str, decision: RateDecision, what: str) -> RateLimited:
    """The 429 for a refused rate check, with ``Retry-After`` and the rate-limit headers."""
    retry = max(1, decision.retry_after_s or 1)
    return RateLimited(
        f"Rate limit reached for account {account_id!r}: {decision.limit} {what} per minute, "
        f"all serverless models together. Retry after {retry} s, or ask the platform operator "
        "for a higher limit.",
        code="rate_limit_exceeded",
        headers={**decision.headers(), "Retry-After": str(retry)},
    )


class Enforcement:
    """Implements ``firebox.inference.admission.Admission`` with the limits slice's rules."""

    def __init__(
        self,
        plans: PlanLimits,
        rate_limiter: RateLimiter,
        spend_guard: SpendGuard,
        suspension: SuspensionService,
        money: MoneySource,
        clock: Clock,
        metrics: AdmissionMetrics | None = None,
        *,
        spend_wait_s: float = 2.0,
    ) -> None:
        self._plans = plans
        self._spend_wait_s = spend_wait_s
        self._limiter = rate_limiter
        self._guard = spend_guard
        self._suspension = suspension
        self._money = money
        self._clock = clock
        self._metrics = metrics
        # Both in the same Redis: one ``ADMIT`` call checks the rate and reserves the money.
        self._shared: tuple[RedisSpendGuard, RedisRateLimiter] | None = None
        if (
            isinstance(spend_guard, RedisSpendGuard)
            and isinstance(rate_limiter, RedisRateLimiter)
            and spend_guard.redis_url == rate_limiter.redis_url
        ):
            self._shared = (spend_guard, rate_limiter)
        # Settlements that do I/O run after the answer (the guard drains them on close).
        self._defer = spend_guard.defer if isinstance(spend_guard, RedisSpendGuard) else None

    async def admit(self, principal: Principal, demand: Demand) -> Ticket:
        started = time.perf_counter()
        try:
            return await self._admit(principal, demand)
        finally:
            if self._metrics is not None:
                self._metrics.admission_time(time.perf_counter() - started)

    async def _admit(self, principal: Principal, demand: Demand) -> Ticket:
        if principal.is_operator:
            self._count("operator")
            return OpenTicket()
        account = demand.account_id
        reasons = self._suspension.reasons_cached(account)
        if reasons is None:
            reasons = await self._suspension.reasons_async(account)
        if reasons:
            self._count("suspended")
            raise suspended(account, reasons[0])
        limits = self._plans.cached(account)
        if limits is None:
            limits = await to_thread.run_sync(self._plans.load, account)
        # Deployments and batch jobs are outside the serverless rate limit (SPEC §5, §7).
        limited = demand.deployment is None and demand.kind != "batch"
        checks = self._checks(account, limits, demand) if limited else []
        worst = self._money.worst_case_cost(demand)
        floor = self._floor(demand, worst)
        # A soft refusal waits for room: each settlement or release wakes it to try again.
        deadline = time.monotonic() + self._spend_wait_s
        while True:
            version = self._guard.room_version(account)
            decisions, held = await self._attempt(account, worst, floor, checks)
            if isinstance(held, Reservation) or held.hard:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                self._count("spend_reserved")
                raise spend_reserved(account, held, self._spend_wait_s)
            await self._guard.wait_for_room(account, version, left)
        if isinstance(held, Refusal):
            self._count("spend_refused")
            if not held.oversized:
                await self._suspend(account, held)
            raise spend_refused(account, held, floor)
        cap = self._completion_cap(demand, worst, held.micros)
        self._count("admitted" if cap is None else "admitted_capped")
        headers: dict[str, str] = {}
        for check, decision in zip(checks, decisions, strict=True):
            if check.what == "requests":
                headers = decision.headers()
        tokens_key = generated_tokens_key(account) if limits.generated_tokens_per_minute else None
        return EnforcedTicket(self, held, headers, tokens_key, cap)

    async def _attempt(
        self, account: str, worst: int, floor: int, checks: list[RateCheck]
    ) -> tuple[list[RateDecision], Reservation | Refusal]:
        """One try at the rate checks and the reservation (one ``ADMIT`` call when shared)."""
        if self._shared is not None:
            guard, limiter = self._shared
            combined = await guard.reserve_checked(account, worst, checks, limiter, floor)
            if combined is not None:
                if combined.refused is not None:
                    self._refuse(account, checks[combined.refused], combined.decisions[0])
                assert combined.held is not None
                return combined.decisions, combined.held
        return await self._separately(account, worst, floor, checks)

    def _floor(self, demand: Demand, worst: int) -> int:
        """The least ``demand`` may be admitted with: its prompt and one token per choice."""
        if demand.choices <= 0 or demand.completion_tokens <= demand.choices:
            return worst  # nothing to cap (embeddings, or one token a choice already)
        return self._money.worst_case_cost(demand.with_completion(demand.choices))

    def _completion_cap(self, demand: Demand, worst: int, held: int) -> int | None:
        """The most tokens per choice ``held`` pays for, when it is less than ``worst``.

        Priced by the same ``worst_case_cost`` as the reservation (so exact, in
        integer micro-USD): the largest ``k`` whose worst case fits ``held``.
        The guard only holds less than the worst case when the floor (``k`` = 1)
        fits, and the cost grows with ``k``, so a binary search finds it.
        """
        if held >= worst or demand.choices <= 0:
            return None
        low, high = 1, demand.completion_tokens // demand.choices - 1
        while low < high:
            middle = (low + high + 1) // 2
            cost = self._money.worst_case_cost(demand.with_completion(demand.choices * middle))
            if cost <= held:
                low = middle
            else:
                high = middle - 1
        return low

    @staticmethod
    def _checks(account: str, limits: AccountLimits, demand: Demand) -> list[RateCheck]:
        """The per-minute counters ``limits`` sets for a serverless request, in check order."""
        checks = []
        if limits.requests_per_minute is not None:
            checks.append(
                RateCheck(requests_key(account), limits.requests_per_minute, 1, "requests")
            )
        generated = limits.generated_tokens_per_minute
        if generated is not None:
            # Amount 0 under limit - 1: admitted iff fewer than ``generated`` are counted.
            checks.append(RateCheck(generated_tokens_key(account), generated - 1, 0, _GENERATED))
        prompt = limits.prompt_tokens_per_minute
        if prompt is not None:
            key = prompt_tokens_key(account)
            checks.append(RateCheck(key, prompt, demand.prompt_tokens, "prompt tokens"))
        return checks

    async def _separately(
        self, account: str, worst: int, floor: int, checks: list[RateCheck]
    ) -> tuple[list[RateDecision], Reservation | Refusal]:
        """The checks, then the reservation, one call each (backends apart, or Redis down).

        What passed checks counted is taken back when a later check or the
        spend refuses, so a refused request uses up none of the window.
        """
        second = int(self._clock.now().timestamp())
        decisions: list[RateDecision] = []
        for check in checks:
            decision = await self._limiter.hit(check.key, check.limit, check.amount)
            if not decision.allowed:
                await self._refund(checks[: len(decisions)], second)
                self._refuse(account, check, decision)
            decisions.append(decision)
        held = await self._guard.reserve(account, worst, floor)
        if isinstance(held, Refusal):
            await self._refund(checks, second)
        return decisions, held

    async def _refund(self, checks: list[RateCheck], second: int) -> None:
        for check in checks:
            if check.amount > 0:
                await self._limiter.refund(check.key, check.amount, second)

    def _refuse(self, account: str, check: RateCheck, decision: RateDecision) -> NoReturn:
        """Raise the 429 (or the 400 of a prompt that can never fit) for a refused check."""
        self._count("rate_limited")
        if check.what == _GENERATED:
            shown = RateDecision(
                False, check.limit + 1, decision.used, decision.reset_s, decision.retry_after_s
            )
            raise rate_limited(account, shown, check.what)
        if check.what == "prompt tokens" and decision.retry_after_s is None:
            raise InvalidArgument(
                f"This prompt may use up to {check.amount} tokens, more than "
                f"account {account!r} may send in a minute ({check.limit}); shorten it.",
                code="prompt_exceeds_token_rate_limit",
            )
        raise rate_limited(account, decision, check.what)

    async def _suspend(self, account: str, refusal: Refusal) -> None:
        """Raise the refusal's reason as a suspension reason; a failure is only logged."""
        detail = f"usage reached the cap of {refusal.limit_micros} micro-USD"
        try:
            await to_thread.run_sync(
                lambda: self._suspension.raise_reason(
                    account,
                    refusal.reason.value,
                    detail,
                    period=refusal.period,
                    cap_micros=refusal.limit_micros,
                )
            )
        except Exception:
            log.exception("suspending %s for %s failed", account, refusal.reason)

    async def recover(self, hold: dict[str, object], usage: UsageRecord | None) -> None:
        """Settle (to ``usage``'s cost) or release a reservation a dead process left open.

        Only a reservation kept in Redis outlives its process (an in-process
        one, or one made while Redis was down, died with it: nothing to do).
        The guard's scripts act only while the reservation is open, so a
        replay of the same hold, or one whose process settled it just before
        dying, changes nothing. Never raises.
        """
        reservation = _reservation_of(hold)
        if reservation is None:
            log.error("in-flight journal hold %r is not a reservation; ignored", hold)
            return
        if not reservation.shared:
            return
        try:
            if usage is None:
                await self._guard.release(reservation)
            else:
                await self._guard.settle(reservation, self._money.cost(usage))
        except Exception:
            log.exception("recovering reservation %s failed; it expires", reservation.id)

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.admission(outcome)


class EnforcedTicket:
    """An admitted request: its headers, and the reservation its settlement closes."""

    __slots__ = (
        "_cap",
        "_enforcement",
        "_headers",
        "_reservation",
        "_settled",
        "_tokens_key",
    )

    def __init__(
        self,
        enforcement: Enforcement,
        reservation: Reservation,
        headers: dict[str, str],
        tokens_key: str | None,
        completion_cap: int | None = None,
    ) -> None:
        self._cap = completion_cap
        self._enforcement = enforcement
        self._reservation = reservation
        self._headers = headers
        self._tokens_key = tokens_key
        self._settled = False

    @property
    def headers(self) -> dict[str, str]:
        return self._headers

    @property
    def completion_cap(self) -> int | None:
        """Tokens per choice the held room pays for, when less than the demand's bound."""
        return self._cap

    @property
    def reservation(self) -> Reservation:
        return self._reservation

    @property
    def hold(self) -> dict[str, object] | None:
        r = self._reservation
        return {
            "id": r.id,
            "account_id": r.account_id,
            "period": r.period,
            "micros": r.micros,
            "shared": r.shared,
        }

    async def settle(self, usage: UsageRecord | None) -> None:
        """Settle to ``usage``'s cost, or release; only the first call counts; never raises."""
        if self._settled:
            return
        self._settled = True
        await self._close(usage)

    async def settle_soon(self, usage: UsageRecord | None) -> None:
        """``settle``, but a Redis settlement runs as a task and this returns at once.

        Until it runs, the reservation holds the worst case (stricter, never
        looser); the spend guard keeps the task and waits for it on close.
        """
        defer = self._enforcement._defer
        if defer is None:
            await self.settle(usage)
            return
        if self._settled:
            return
        self._settled = True
        defer(self._close(usage))

    async def _close(self, usage: UsageRecord | None) -> None:
        owner = self._enforcement
        try:
            if usage is None:
                await owner._guard.release(self._reservation)
                return
            reached = await owner._guard.settle(self._reservation, owner._money.cost(usage))
            if reached is not None and reached.hard:
                await owner._suspend(self._reservation.account_id, reached)
            if self._tokens_key is not None and usage.completion_tokens:
                await owner._limiter.add(self._tokens_key, usage.completion_tokens)
        except Exception:
            log.exception("settling reservation %s failed; releasing it", self._reservation.id)
            await self._release_after_failure()

    async def _release_after_failure(self) -> None:
        """Drop the hold of a settlement that failed (pricing, say), not leave it 15 min.

        The usage itself reaches the ledger on its own path; a release after a
        settlement that did go through changes nothing (it is gone already).
        """
        try:
            await self._enforcement._guard.release(self._reservation)
        except Exception:
            log.exception("releasing reservation %s failed", self._reservation.id)


def _reservation_of(hold: dict[str, object]) -> Reservation | None:
    """The reservation an ``EnforcedTicket.hold`` describes; None if it is not one."""
    fields = (hold.get("id"), hold.get("account_id"), hold.get("period"))
    micros, shared = hold.get("micros"), hold.get("shared")
    if not all(isinstance(f, str) for f in fields) or not isinstance(micros, int):
        return None
    reservation_id, account_id, period = (str(f) for f in fields)
    return Reservation(reservation_id, account_id, period, micros, shared=shared is True)
