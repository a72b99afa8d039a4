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

Every script is idempotent by reservation id, because the client retries a
call once after a timeout even when Redis already ran it: a reserve whose
``r:<id>`` exists answers "admitted" and holds nothing more; settle and
release change nothing once the reservation is gone. So a settlement that
comes after its reservation expired (a request running past the TTL) or
after a Redis restart is counted by the ledger, not here: the next snapshot
refresh (at most ``SNAPSHOT_MAX_AGE`` later) raises ``committed`` to it.

``reserve_checked`` is admission's single round trip when the rate limiter
shares this Redis: ``redis_scripts.ADMIT`` checks the rate counters, reserves,
and counts the rate only if the reservation was made.

An admission waiting for room (``wait_for_room``) is woken by a settlement
or release on this replica, and otherwise polls every ``ROOM_POLL_S``.

``defer`` runs a settlement after the answer is sent (admission's
``EnforcedTicket.settle_soon``), so its round trip is off the response path;
until it runs the reservation still holds the worst case, which only makes
the cap stricter. ``aclose`` waits for the deferred ones (a settlement that
never runs expires with its reservation's TTL; its usage is in the ledger).

When Redis fails, the guard falls back to a per-replica
``InProcessSpendGuard`` (counted in ``fallbacks``) and tries Redis again
after ``retry_s`` (on the injected clock); the cap then holds per replica,
not across them.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis
from redis.exceptions import RedisError

from firebox.clock import Clock
from firebox.limits.hooks import Reason
from firebox.limits.outage import Outage
from firebox.limits.ports import MoneySource, SpendState
from firebox.limits.rate_limiter import (
    KEY_TTL_S as RATE_KEY_TTL_S,
)
from firebox.limits.rate_limiter import (
    WINDOW_S,
    RateCheck,
    RateDecision,
    RedisRateLimiter,
)
from firebox.limits.redis_scripts import ADMIT, RESERVE
from firebox.limits.redis_wire import ScriptClient
from firebox.limits.room_signal import RoomSignal
from firebox.limits.spend_guard import (
    DEFAULT_TTL,
    InProcessSpendGuard,
    Refusal,
    Reservation,
    SnapshotCache,
    floor_of,
    ledger_usage,
    refusal,
    spend_cap,
)
from firebox.money_state import period_of

log = logging.getLogger(__name__)

KEY_TTL_S = 40 * 24 * 3600
# How often an admission waiting for room asks Redis again: room freed by another
# replica's settlement wakes no one here.
ROOM_POLL_S = 0.1

_SEED = """
redis.call('HSETNX', KEYS[1], 'committed', ARGV[1])
redis.call('HSETNX', KEYS[1], 'reserved', '0')
"""

# ARGV: ledger, id, actual, key_ttl_s. Counts only while the reservation is open, so a
# retried call (the client retries once after a timeout, even if the script ran)
# counts the cost once; see the module docstring for a reservation already gone.
SETTLE = (
    _SEED
    + """
local h, z = KEYS[1], KEYS[2]
local m = redis.call('HGET', h, 'r:' .. ARGV[2])
if not m then
  local committed = tonumber(redis.call('HGET', h, 'committed'))
  return {committed, tonumber(redis.call('HGET', h, 'reserved'))}
end
redis.call('HDEL', h, 'r:' .. ARGV[2])
redis.call('ZREM', z, ARGV[2])
redis.call('HINCRBY', h, 'reserved', '-' .. m)
local committed = redis.call('HINCRBY', h, 'committed', ARGV[3])
local reserved = tonumber(redis.call('HGET', h, 'reserved'))
redis.call('EXPIRE', h, ARGV[4])
return {committed, reserved}
"""
)

# ARGV: id. Does nothing once the reservation is gone (so a retry releases once).
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


@dataclass(frozen=True, slots=True)
class Admitted:
    """The answer of ``reserve_checked``: rate decisions and the spend's.

    ``refused`` is the index of the first check that refused (then ``decisions``
    holds only its decision, ``held`` is None, and nothing was counted nor
    reserved); otherwise ``held`` is the spend's answer and ``decisions`` has
    one decision per check when it is a ``Reservation`` (none when refused:
    then nothing was counted).
    """

    decisions: list[RateDecision]
    refused: int | None
    held: Reservation | Refusal | None


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
        self._snapshots = SnapshotCache(money, clock)
        self._fallback = fallback or InProcessSpendGuard(
            money, clock, ttl=ttl, snapshots=self._snapshots
        )
        # One pipelined connection serves a process (calls are one round trip each);
        # a failed call is retried once at once on a new one, never with a backoff.
        self._client = ScriptClient(redis_url, timeout_s=1.0, connect_timeout_s=1.0)
        self._sync = redis.Redis.from_url(redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._reserve = self._client.register_script(RESERVE)
        self._settle = self._client.register_script(SETTLE)
        self._release = self._client.register_script(RELEASE)
        self._admit = self._client.register_script(ADMIT)
        self.redis_url = redis_url
        self._outage = Outage(timedelta(seconds=retry_s))
        self._deferred: set[asyncio.Task[None]] = set()  # strong references until done
        # Settlements on this replica wake its waiters at once (the fallback's shares it);
        # room freed on another replica is seen by polling every ``ROOM_POLL_S``.
        self.room: RoomSignal = self._fallback.room
        self.fallbacks = 0  # Redis failures that sent calls to the per-replica fallback
        self.expired = 0  # leaked reservations dropped after their TTL

    def keys(self, account_id: str, period: str) -> tuple[str, str]:
        """The hash and sorted-set keys of one account's month."""
        tag = f"{self._prefix}spend:{{{account_id}:{period}}}"
        return tag, f"{tag}:res"

    async def reserve(
        self, account_id: str, worst_micros: int, floor_micros: int | None = None
    ) -> Reservation | Refusal:
        floor = floor_of(worst_micros, floor_micros)
        if self._is_down():
            return await self._fallback.reserve(account_id, worst_micros, floor)
        state, refreshed = await self._snapshots.get(account_id)
        now = self._clock.now()
        period = period_of(now)
        cap, reason = spend_cap(state, period)
        reservation_id = uuid.uuid4().hex
        args = self._reserve_args(state, refreshed, worst_micros, floor, cap, now, reservation_id)
        try:
            answer = await self._reserve(keys=list(self.keys(account_id, period)), args=args)
        except _FAILURES as exc:
            self._went_down(exc)
            return await self._fallback.reserve(account_id, worst_micros, floor)
        return self._held(account_id, period, floor, cap, reason, reservation_id, answer)

    async def reserve_checked(
        self,
        account_id: str,
        worst_micros: int,
        checks: Sequence[RateCheck],
        limiter: RedisRateLimiter,
        floor_micros: int | None = None,
    ) -> Admitted | None:
        """``checks`` on ``limiter``'s counters and the reservation, in one ``ADMIT`` call.

        The counters are written only when every check passes and the money
        fits (atomically, in Redis). ``None`` when Redis is unreachable for
        either (the caller then asks each on its own, which fall back).
        """
        floor = floor_of(worst_micros, floor_micros)
        if self._is_down() or not limiter.available(self._clock.now()):
            return None
        state, refreshed = await self._snapshots.get(account_id)
        now = self._clock.now()
        period = period_of(now)
        cap, reason = spend_cap(state, period)
        reservation_id = uuid.uuid4().hex
        args = self._reserve_args(state, refreshed, worst_micros, floor, cap, now, reservation_id)
        args += [int(now.timestamp()), WINDOW_S, RATE_KEY_TTL_S]
        for check in checks:
            args += [check.limit, check.amount]
        keys = [*self.keys(account_id, period), *(limiter.key(c.key) for c in checks)]
        try:
            raw = await self._admit(keys=keys, args=args)
        except _FAILURES as exc:
            self._went_down(exc)
            limiter.went_down(exc, now)
            return None
        limiter.reached()
        values = [int(x) for x in raw]
        if values[0] == 0:
            index, used, reset, retry = values[1:5]
            check = checks[index - 1]
            refused = RateDecision(False, check.limit, used, reset, None if retry < 0 else retry)
            return Admitted([refused], index - 1, None)
        spend = values[1:6]
        held = self._held(account_id, period, floor, cap, reason, reservation_id, spend)
        if isinstance(held, Refusal):  # nothing was counted
            return Admitted([], None, held)
        decisions = [
            RateDecision(True, check.limit, *values[6 + 3 * i : 9 + 3 * i])
            for i, check in enumerate(checks)
        ]
        return Admitted(decisions, None, held)

    def _reserve_args(
        self,
        state: SpendState,
        refreshed: bool,
        worst_micros: int,
        floor_micros: int,
        cap: int | None,
        now: datetime,
        reservation_id: str,
    ) -> list[str | int]:
        """ARGV[1..9] of ``RESERVE`` and ``ADMIT``."""
        now_ms = int(now.timestamp() * 1000)
        return [
            ledger_usage(state, period_of(now)),
            1 if refreshed else 0,
            worst_micros,
            -1 if cap is None else cap,
            now_ms,
            now_ms + int(self._ttl.total_seconds() * 1000),
            reservation_id,
            KEY_TTL_S,
            floor_micros,
        ]

    def _held(
        self,
        account_id: str,
        period: str,
        floor_micros: int,
        cap: int | None,
        reason: Reason,
        reservation_id: str,
        answer: Sequence[int | bytes],
    ) -> Reservation | Refusal:
        """The reservation, or the refusal, that a ``reserve_spend`` answer says."""
        admitted, committed, reserved, expired, held = (int(x) for x in answer)
        if expired:
            self.expired += expired
            log.warning("%d reservation(s) of %s expired unsettled", expired, account_id)
        if not admitted:
            assert cap is not None
            return refusal(reason, cap, committed, reserved, floor_micros, period)
        return Reservation(reservation_id, account_id, period, held, shared=True)

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
        self.room.notify(reservation.account_id)
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
        self.room.notify(reservation.account_id)

    def room_version(self, account_id: str) -> int:
        return self.room.version(account_id)

    async def wait_for_room(self, account_id: str, since: int, timeout_s: float) -> None:
        """Wait for a settlement here, or at most ``ROOM_POLL_S`` (one on another replica)."""
        await self.room.wait(account_id, since, min(timeout_s, ROOM_POLL_S))

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

    def defer(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` (a settlement, which never raises) as a task; ``aclose`` awaits it."""
        task = asyncio.get_running_loop().create_task(work)
        self._deferred.add(task)
        task.add_done_callback(self._deferred.discard)

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait until every deferred settlement is done (at most ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while self._deferred and (left := deadline - time.monotonic()) > 0:
            await asyncio.wait(set(self._deferred), timeout=left)
        if self._deferred:
            log.warning("%d deferred settlement(s) still running", len(self._deferred))

    async def aclose(self) -> None:
        await self.drain()
        await self._client.aclose()
        self._sync.close()

    def _is_down(self) -> bool:
        return not self._outage.available(self._clock.now())

    def _went_down(self, exc: BaseException) -> None:
        self.fallbacks += 1
        self._outage.failed(self._clock.now())
        log.warning("Redis spend guard failed (%s); using per-replica counters for now", exc)
