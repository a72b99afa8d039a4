"""The serverless rate limiter: a sliding window of 60 one-second buckets per counter.

A check at second ``s`` admits iff what was counted in seconds ``s-59 … s``
plus this request stays within the limit, then counts it in bucket ``s``.
So in any 60 consecutive whole seconds at most ``limit`` are admitted (the
last admission of such a span saw every earlier one in its own window), and
a client sending steadily at exactly ``limit / 60`` per second is never
refused (its window holds at most ``limit - 1`` others when it asks).

Counters are keyed by a string: an account id for requests, plus a suffix
for the optional token limits. ``InProcessRateLimiter`` keeps a ring of 60
counters per key under a lock (embedded mode, one replica).
``RedisRateLimiter`` shares them across replicas with one atomic Lua call per
check (``redis_scripts.SLIDING_WINDOW``, over ``redis_wire``'s pipelined
connection); if Redis is unreachable it falls
back to the in-process limiter with this replica's share of the limit, and
tries Redis again after a short cool-down.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import redis.exceptions

from firebox.clock import Clock
from firebox.limits.outage import Outage
from firebox.limits.redis_scripts import REFUND, SLIDING_WINDOW
from firebox.limits.redis_wire import ScriptClient

log = logging.getLogger("firebox.limits.rate_limiter")

WINDOW_S = 60
KEY_TTL_S = 2 * WINDOW_S  # an idle counter's hash disappears after two windows


def requests_key(account_id: str) -> str:
    """The counter of an account's serverless requests (all models together)."""
    return account_id


def prompt_tokens_key(account_id: str) -> str:
    return f"{account_id}:prompt-tokens"


def generated_tokens_key(account_id: str) -> str:
    return f"{account_id}:generated-tokens"


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The answer to one check.

    ``used`` counts the window after this check (this request included when
    admitted). ``reset_s`` is when the oldest counted bucket leaves the
    window, freeing capacity (0 when nothing is counted); ``retry_after_s``
    is, on a refusal, when enough old buckets will have expired for this
    request to fit (``None``: it can never fit, the amount exceeds the limit).
    """

    allowed: bool
    limit: int
    used: int
    reset_s: int
    retry_after_s: int | None = 0

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)

    def headers(self, unit: str = "requests") -> dict[str, str]:
        """OpenAI-style ``x-ratelimit-*-{unit}`` headers."""
        return {
            f"x-ratelimit-limit-{unit}": str(self.limit),
            f"x-ratelimit-remaining-{unit}": str(self.remaining),
            f"x-ratelimit-reset-{unit}": f"{self.reset_s}s",
        }


def decide(
    buckets: Iterable[tuple[int, int]], now: int, limit: int, amount: int, mode: int
) -> tuple[RateDecision, bool]:
    """The decision over ``(second, count)`` buckets already inside the window.

    ``mode``: 1 checks then counts, 0 counts unconditionally, -1 only reads.
    Returns the decision and whether ``amount`` must be added to bucket ``now``.
    Mirrors the Lua script line for line.
    """
    counts: dict[int, int] = {}
    for sec, n in buckets:
        counts[sec] = counts.get(sec, 0) + n
    total = sum(counts.values())
    allowed = mode == 0 or (mode == 1 and total + amount <= limit)
    add = allowed and mode != -1 and amount > 0
    if add:
        counts[now] = counts.get(now, 0) + amount
        total += amount
    secs = sorted(s for s, n in counts.items() if n > 0)
    reset = secs[0] + WINDOW_S - now if secs else 0
    retry: int | None = 0
    if not allowed:
        retry = None
        if amount <= limit:
            left = total
            for sec in secs:
                left -= counts[sec]
                if left + amount <= limit:
                    retry = sec + WINDOW_S - now
                    break
    return RateDecision(mode == -1 or allowed, limit, total, reset, retry), add


@dataclass(frozen=True, slots=True)
class RateCheck:
    """One counter admission checks: admit ``amount`` under ``limit`` on ``key``.

    ``what`` names the unit in the 429 ("requests", "prompt tokens", ...).
    """

    key: str
    limit: int
    amount: int
    what: str


class RateLimiter(Protocol):
    """Sliding-window counters shared by every replica that uses the same backend."""

    async def hit(self, key: str, limit: int, amount: int = 1) -> RateDecision:
        """Admit ``amount`` under ``limit`` and count it, or refuse and count nothing."""
        ...

    async def add(self, key: str, amount: int) -> None:
        """Count ``amount`` without checking (tokens known only once a request ends)."""
        ...

    async def used(self, key: str) -> int:
        """What is counted in the current window."""
        ...

    async def refund(self, key: str, amount: int, second: int) -> None:
        """Take back ``amount`` a ``hit`` counted in unix ``second`` (its request was refused)."""
        ...


def _second(clock: Clock) -> int:
    return int(clock.now().timestamp())


class _Ring:
    """60 counters indexed by ``second % 60``, each stamped with its second."""

    __slots__ = ("counts", "stamps")

    def __init__(self) -> None:
        self.counts = [0] * WINDOW_S
        self.stamps = [-1] * WINDOW_S

    def live(self, now: int) -> list[tuple[int, int]]:
        oldest = now - WINDOW_S + 1
        return [(s, n) for s, n in zip(self.stamps, self.counts, strict=True) if s >= oldest and n]

    def add(self, now: int, amount: int) -> None:
        slot = now % WINDOW_S
        if self.stamps[slot] != now:
            self.stamps[slot] = now
            self.counts[slot] = 0
        self.counts[slot] += amount


class InProcessRateLimiter:
    """Counters in this process's memory; the embedded mode's limiter and Redis' fallback.

    Every operation is a few list reads under a lock: no I/O, no await.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._rings: dict[str, _Ring] = {}
        self._lock = threading.Lock()
        self._sweep_at = 4096  # counters held before idle ones are dropped

    def check(self, key: str, limit: int, amount: int = 1, mode: int = 1) -> RateDecision:
        """The synchronous check behind ``hit`` (``mode`` as in ``decide``)."""
        now = _second(self._clock)
        with self._lock:
            ring = self._rings.get(key)
            if ring is None:
                if mode == -1:
                    return RateDecision(True, limit, 0, 0)
                if len(self._rings) >= self._sweep_at:
                    self._sweep(now)
                ring = self._rings[key] = _Ring()
            decision, add = decide(ring.live(now), now, limit, amount, mode)
            if add:
                ring.add(now, amount)
            return decision

    async def hit(self, key: str, limit: int, amount: int = 1) -> RateDecision:
        return self.check(key, limit, amount)

    async def add(self, key: str, amount: int) -> None:
        self.check(key, 0, amount, mode=0)

    async def used(self, key: str) -> int:
        return self.check(key, 0, 0, mode=-1).used

    async def refund(self, key: str, amount: int, second: int) -> None:
        self.uncount(key, amount, second)

    def uncount(self, key: str, amount: int, second: int) -> None:
        """Take back ``amount`` counted in ``second`` (never below zero; gone buckets stay gone)."""
        with self._lock:
            ring = self._rings.get(key)
            slot = second % WINDOW_S
            if ring is not None and ring.stamps[slot] == second:
                ring.counts[slot] = max(0, ring.counts[slot] - amount)

    def forget_idle(self) -> int:
        """Drop counters with nothing in the window; how many went."""
        with self._lock:
            return self._sweep(_second(self._clock))

    def _sweep(self, now: int) -> int:
        """Drop idle counters (under the lock), so memory follows active keys only."""
        idle = [k for k, ring in self._rings.items() if not ring.live(now)]
        for key in idle:
            del self._rings[key]
        self._sweep_at = max(4096, 2 * len(self._rings))
        return len(idle)


_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class RedisRateLimiter:
    """Counters in Redis, shared by every replica; one Lua round trip per check.

    On a connection error or timeout the check is answered by ``fallback``
    with ``limit // replicas_hint`` (at least 1): each replica then enforces
    its share, so the fleet as a whole stays near the limit. A warning is
    logged once per outage, ``fallback_checks`` (and ``on_fallback``) count
    each check answered that way, and Redis is tried again ``cooldown_s``
    (by the injected clock) after the last failure.
    """

    def __init__(
        self,
        redis_url: str,
        clock: Clock,
        fallback: InProcessRateLimiter,
        replicas_hint: int,
        *,
        key_prefix: str = "firebox:rate:",
        cooldown_s: float = 1.0,
        timeout_s: float = 0.25,
        on_fallback: Callable[[], None] | None = None,
    ) -> None:
        # One immediate retry (a pooled connection Redis closed is reopened), no
        # backoff: an outage must cost a check at most two timeouts, not seconds.
        self._client = ScriptClient(redis_url, timeout_s=timeout_s, connect_timeout_s=timeout_s)
        self._script = self._client.register_script(SLIDING_WINDOW)
        self._refund = self._client.register_script(REFUND)
        self.redis_url = redis_url
        self._clock = clock
        self._fallback = fallback
        self._replicas = max(1, replicas_hint)
        self._prefix = key_prefix
        self._outage = Outage(timedelta(seconds=cooldown_s))
        self._on_fallback = on_fallback
        self.fallback_checks = 0
        self.outages = 0

    @property
    def degraded(self) -> bool:
        """Whether the last attempt to reach Redis failed."""
        return self._outage.degraded

    def share(self, limit: int) -> int:
        """This replica's part of ``limit`` while Redis is unreachable."""
        return max(1, limit // self._replicas)

    async def hit(self, key: str, limit: int, amount: int = 1) -> RateDecision:
        answer = await self._run(key, limit, amount, 1)
        if answer is None:
            self._fell_back()
            return self._fallback.check(key, self.share(limit), amount)
        return answer

    async def add(self, key: str, amount: int) -> None:
        if await self._run(key, 0, amount, 0) is None:
            self._fallback.check(key, 0, amount, mode=0)

    async def used(self, key: str) -> int:
        answer = await self._run(key, 0, 0, -1)
        if answer is None:
            return self._fallback.check(key, 0, 0, mode=-1).used
        return answer.used

    async def refund(self, key: str, amount: int, second: int) -> None:
        now = self._clock.now()
        if self.available(now):
            try:
                await self._refund(keys=[self.key(key)], args=[second, amount])
            except _REDIS_DOWN as exc:
                self.went_down(exc, now)
            else:
                self.reached()
                return
        self._fallback.uncount(key, amount, second)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _run(self, key: str, limit: int, amount: int, mode: int) -> RateDecision | None:
        """The script's decision, or ``None`` when Redis is (still) unreachable."""
        now = self._clock.now()
        if not self.available(now):
            return None
        args = [int(now.timestamp()), limit, amount, WINDOW_S, KEY_TTL_S, mode]
        try:
            raw = await self._script(keys=[self.key(key)], args=args)
        except _REDIS_DOWN as exc:
            self.went_down(exc, now)
            return None
        self.reached()
        allowed, used, reset, retry = (int(x) for x in raw)
        return RateDecision(
            allowed == 1 or mode == -1, limit, used, reset, None if retry < 0 else retry
        )

    def key(self, key: str) -> str:
        """The Redis key of counter ``key``."""
        return self._prefix + key

    def available(self, now: datetime) -> bool:
        """Whether to try Redis at ``now`` (not within the cool-down of a failure)."""
        return self._outage.available(now)

    def went_down(self, exc: BaseException, now: datetime) -> None:
        """Record a failed call: warn once per outage, answer from memory for the cool-down."""
        if self._outage.failed(now):
            self.outages += 1
            log.warning(
                "Redis is unreachable for rate limiting (%s); each replica now enforces "
                "1/%d of every limit in memory until it is back.",
                exc,
                self._replicas,
            )

    def reached(self) -> None:
        """Record a successful call (ends an outage)."""
        if self._outage.reached():
            log.warning("Redis is reachable again: rate limits are shared across replicas.")

    def _fell_back(self) -> None:
        self.fallback_checks += 1
        if self._on_fallback is not None:
            self._on_fallback()
