"""The spend guard shared by every replica, with Redis as the counter.

Per account and month, one hash holds ``committed``, ``reserved`` and the
amount of each open reservation (``r:<id>``), and a sorted set holds the
open reservations scored by their expiry (ms since the epoch). Each of
reserve, settle and release is one Lua script, so it is atomic across
replicas and costs one round trip. Both keys of an account share a hash tag
(one cluster slot) and expire ~40 days after their last write.

``committed`` is seeded from the ledger's figure, passed with every call,
only when the hash is missing (``HSETNX``): after a Redis restart the count
starts again from the ledger. Usage settled but not yet written to the
ledger (the ingest queue holds it for a few milliseconds to a second) is
forgotten by such a restart, so for that short window a month may overshoot
its cap by what was in flight; it never does while Redis is up. On a snapshot
refresh ``committed`` is also raised to the ledger's figure if that is higher.

When Redis fails, the guard falls back to a per-replica
``InProcessSpendGuard`` (counted in ``fallbacks``) and tries Redis again
after ``retry_s``; the cap then holds per replica, not across them.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import timedelta

import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from firebox.clock import Clock
from firebox.limits.ports import MoneySource
from firebox.limits.spend_guard import (
    DEFAULT_TTL,
    InProcessSpendGuard,
    Refusal,
    Reservation,
    SnapshotCache,
    ledger_usage,
    period_of,
    spend_cap,
)

log = logging.getLogger(__name__)

KEY_TTL_S = 40 * 24 * 3600

_SEED = """
redis.call('HSETNX', KEYS[1], 'committed', ARGV[1])
redis.call('HSETNX', KEYS[1], 'reserved', '0')
"""

# ARGV: ledger, resync(0/1), worst, cap (-1 = none), now_ms, expiry_ms, id, key_ttl_s
RESERVE = (
    _SEED
    + """
local h, z = KEYS[1], KEYS[2]
local worst = tonumber(ARGV[3])
local cap = tonumber(ARGV[4])
if ARGV[2] == '1' and tonumber(ARGV[1]) > tonumber(redis.call('HGET', h, 'committed')) then
  redis.call('HSET', h, 'committed', ARGV[1])
end
local gone = redis.call('ZRANGEBYSCORE', z, '-inf', ARGV[5])
if #gone > 0 then
  for _, rid in ipairs(gone) do
    local m = redis.call('HGET', h, 'r:' .. rid)
    if m then
      redis.call('HDEL', h, 'r:' .. rid)
      redis.call('HINCRBY', h, 'reserved', '-' .. m)
    end
  end
  redis.call('ZREMRANGEBYSCORE', z, '-inf', ARGV[5])
end
local committed = tonumber(redis.call('HGET', h, 'committed'))
local reserved = tonumber(redis.call('HGET', h, 'reserved'))
if cap >= 0 and committed + reserved + worst > cap then
  return {0, committed, reserved, #gone}
end
redis.call('HINCRBY', h, 'reserved', ARGV[3])
redis.call('HSET', h, 'r:' .. ARGV[7], ARGV[3])
redis.call('ZADD', z, ARGV[6], ARGV[7])
redis.call('EXPIRE', h, ARGV[8])
redis.call('EXPIRE', z, ARGV[8])
return {1, committed, reserved + worst, #gone}
"""
)

# ARGV: ledger, id, actual, key_ttl_s
SETTLE = (
    _SEED
    + """
local h, z = KEYS[1], KEYS[2]
local m = redis.call('HGET', h, 'r:' .. ARGV[2])
if m then
  redis.call('HDEL', h, 'r:' .. ARGV[2])
  redis.call('ZREM', z, ARGV[2])
  redis.call('HINCRBY', h, 'reserved', '-' .. m)
end
local committed = redis.call('HINCRBY', h, 'committed', ARGV[3])
local reserved = tonumber(redis.call('HGET', h, 'reserved'))
redis.call('EXPIRE', h, ARGV[4])
return {committed, reserved}
"""
)

# ARGV: id
RELEASE = """
local m = redis.call('HGET', KEYS[1], 'r:' .. ARGV[1])
if m then
  redis.call('HDEL', KEYS[1], 'r:' .. ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'reserved', '-' .. m)
end
return 0
"""

_FAILURES = (RedisError, OSError)


class RedisSpendGuard:
    """Spend reservations in Redis, atomic across replicas; see the module docstring."""

    def __init__(
        self,
        redis_url: str,
        money: MoneySource,
        clock: Clock,
        *,
        key_prefix: str = "firebox:",
        ttl: timedelta = DEFAULT_TTL,
        retry_s: float = 5.0,
        fallback: InProcessSpendGuard | None = None,
    ) -> None:
        self._clock = clock
        self._ttl = ttl
        self._prefix = key_prefix
        self._retry_s = retry_s
        self._snapshots = SnapshotCache(money, clock)
        self._fallback = fallback or InProcessSpendGuard(
            money, clock, ttl=ttl, snapshots=self._snapshots
        )
        self._client = aioredis.Redis.from_url(
            redis_url, socket_timeout=1.0, socket_connect_timeout=1.0
        )
        self._sync = redis.Redis.from_url(redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._reserve = self._client.register_script(RESERVE)
        self._settle = self._client.register_script(SETTLE)
        self._release = self._client.register_script(RELEASE)
        self._down_until = 0.0
        self.fallbacks = 0  # Redis failures that sent calls to the per-replica fallback
        self.expired = 0  # leaked reservations dropped after their TTL

    def keys(self, account_id: str, period: str) -> tuple[str, str]:
        """The hash and sorted-set keys of one account's month."""
        tag = f"{self._prefix}spend:{{{account_id}:{period}}}"
        return tag, f"{tag}:res"

    async def reserve(self, account_id: str, worst_micros: int) -> Reservation | Refusal:
        if worst_micros < 0:
            raise ValueError("a worst-case cost cannot be negative")
        if self._is_down():
            return await self._fallback.reserve(account_id, worst_micros)
        state, refreshed = await self._snapshots.get(account_id)
        now = self._clock.now()
        period = period_of(now)
        cap, reason = spend_cap(state, period)
        reservation_id = uuid.uuid4().hex
        now_ms = int(now.timestamp() * 1000)
        args: list[str | int] = [
            ledger_usage(state, period),
            1 if refreshed else 0,
            worst_micros,
            -1 if cap is None else cap,
            now_ms,
            now_ms + int(self._ttl.total_seconds() * 1000),
            reservation_id,
            KEY_TTL_S,
        ]
        try:
            admitted, committed, reserved, expired = await self._reserve(
                keys=list(self.keys(account_id, period)), args=args
            )
        except _FAILURES as exc:
            self._went_down(exc)
            return await self._fallback.reserve(account_id, worst_micros)
        if expired:
            self.expired += int(expired)
            log.warning("%d reservation(s) of %s expired unsettled", expired, account_id)
        if not admitted:
            assert cap is not None
            hard = int(committed) + worst_micros > cap
            return Refusal(reason, cap, int(committed) + int(reserved), hard, period)
        return Reservation(reservation_id, account_id, period, worst_micros, shared=True)

    async def settle(self, reservation: Reservation, actual_micros: int) -> Refusal | None:
        if not reservation.shared or self._is_down():
            return await self._fallback.settle(reservation, actual_micros)
        if actual_micros > reservation.micros:
            log.warning(
                "usage of %d micros exceeds its reservation of %d (account %s): "
                "the worst-case estimate is wrong for this request",
                actual_micros,
                reservation.micros,
                reservation.account_id,
            )
        state = self._snapshots.peek(reservation.account_id)
        ledger = ledger_usage(state, reservation.period) if state is not None else 0
        args: list[str | int] = [ledger, reservation.id, actual_micros, KEY_TTL_S]
        try:
            committed, reserved = await self._settle(
                keys=list(self.keys(reservation.account_id, reservation.period)), args=args
            )
        except _FAILURES as exc:
            self._went_down(exc)
            return await self._fallback.settle(reservation, actual_micros)
        if state is None:
            return None
        cap, reason = spend_cap(state, reservation.period)
        if cap is not None and int(committed) >= cap:
            return Refusal(reason, cap, int(committed) + int(reserved), True, reservation.period)
        return None

    async def release(self, reservation: Reservation) -> None:
        if not reservation.shared or self._is_down():
            await self._fallback.release(reservation)
            return
        try:
            await self._release(
                keys=list(self.keys(reservation.account_id, reservation.period)),
                args=[reservation.id],
            )
        except _FAILURES as exc:
            self._went_down(exc)

    def committed(self, account_id: str) -> int | None:
        """The shared count of the month (one blocking ``HGET``; call it off the event loop)."""
        if self._is_down():
            return self._fallback.committed(account_id)
        key, _ = self.keys(account_id, period_of(self._clock.now()))
        try:
            value = self._sync.hget(key, "committed")
        except _FAILURES as exc:
            self._went_down(exc)
            return self._fallback.committed(account_id)
        return int(value) if value is not None else None

    def money_changed(self, account_id: str) -> None:
        self._snapshots.invalidate(account_id)

    async def aclose(self) -> None:
        await self._client.aclose()
        self._sync.close()

    def _is_down(self) -> bool:
        return time.monotonic() < self._down_until

    def _went_down(self, exc: BaseException) -> None:
        self.fallbacks += 1
        self._down_until = time.monotonic() + self._retry_s
        log.warning(
            "Redis spend guard failed (%s); using per-replica counters for %.0f s",
            exc,
            self._retry_s,
        )
