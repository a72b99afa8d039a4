"""Spend reservations: the guard that makes overshooting a spend limit impossible.

Before a request runs, admission reserves its worst-case cost; when it ends,
the reservation is settled to the actual cost (or released). An account's
month is ``committed`` (settled usage) plus ``reserved`` (open reservations),
and a reservation is refused when ``committed + reserved + worst`` would pass
the cap. Once what is left of the month (cap - committed) cannot pay for a
request's worst case, a request whose ``floor`` (its prompt plus one
generated token) still fits is admitted holding all the room left, and
admission caps its completion to what that room pays for; while the month
could still pay for it, a request only held out by the requests in flight
is refused softly (admission waits for room), never capped. The cap is
the effective spend limit (SPEC §3) and, for an account without a payment
method, also the usage at which its credits run out. Since no request is
admitted unless what it can cost fits, the settled usage of a month can
never pass the cap, however many requests race.

A refusal is ``hard`` only when the floor does not fit beside the settled
usage alone (nothing in flight could change that); otherwise other
requests' reservations are in the way, and every settlement and release
wakes the admissions waiting for room (``room_signal.RoomSignal``).

``committed`` starts from the ledger's usage of the month the first time the
guard sees the account, and is moved up to the ledger's figure whenever the
cached money snapshot is refreshed (usage settled on another replica, or
written by a path that never reserved). Reservations a caller leaks (never
settled nor released) expire after ``ttl``.

Two backends share these rules: ``InProcessSpendGuard`` (one process, the
embedded mode and the fallback) and ``RedisSpendGuard`` (shared by every
replica, in ``redis_spend_guard.py``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from firebox.clock import Clock
from firebox.limits.hooks import Reason
from firebox.limits.ports import MoneySource, SpendState
from firebox.limits.refresh_ahead import RefreshAhead
from firebox.limits.room_signal import RoomSignal
from firebox.money_state import period_of

log = logging.getLogger(__name__)

DEFAULT_TTL = timedelta(minutes=15)
SNAPSHOT_MAX_AGE = timedelta(seconds=2)


@dataclass(frozen=True, slots=True)
class Reservation:
    """Money held for one admitted request until it is settled or released.

    ``shared`` tells the Redis guard the reservation lives in Redis (not in
    its per-replica fallback).
    """

    id: str
    account_id: str
    period: str  # "YYYY-MM"
    micros: int
    shared: bool = False


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a reservation was refused, or which limit a settlement reached.

    ``hard`` means the limit is reached even with nothing else in flight
    (``committed + floor > limit``: the room left cannot pay for the
    request's prompt plus one token): the caller raises ``reason`` as a
    suspension reason (for ``period``). A soft refusal (only other open
    reservations make it not fit) suspends nothing: admission waits for room
    and then answers 429 ``spend_reserved``. ``used_micros`` counts settled
    and reserved money. ``oversized`` means the request could never fit: its
    floor alone is more than the cap while some of the cap is still left; the
    caller refuses it without suspending (a smaller request would still be
    admitted).
    """

    reason: Reason
    limit_micros: int
    used_micros: int
    hard: bool
    period: str
    oversized: bool = False


def refusal(
    reason: Reason, cap: int, committed: int, reserved: int, floor: int, period: str
) -> Refusal:
    """The refusal of a reservation whose ``floor`` did not fit (both backends)."""
    oversized = floor > cap and committed < cap
    return Refusal(reason, cap, committed + reserved, committed + floor > cap, period, oversized)


def floor_of(worst_micros: int, floor_micros: int | None) -> int:
    """The least a reservation may hold: ``floor_micros`` (never above the worst case)."""
    if worst_micros < 0 or (floor_micros is not None and floor_micros < 0):
        raise ValueError("a worst-case cost cannot be negative")
    return worst_micros if floor_micros is None else min(floor_micros, worst_micros)


class SpendGuard(Protocol):
    """Reserves worst-case cost before a request and settles it afterwards."""

    async def reserve(
        self, account_id: str, worst_micros: int, floor_micros: int | None = None
    ) -> Reservation | Refusal:
        """Hold ``worst_micros`` for a request, or say why it does not fit.

        With ``floor_micros`` (the cost of the request's prompt and one token),
        a request whose worst case is more than what is left of the month but
        whose floor fits beside the requests in flight is admitted holding the
        room left (``Reservation.micros`` < worst).
        """
        ...

    def room_version(self, account_id: str) -> int:
        """A counter that moves whenever room may have been freed (read before reserving)."""
        ...

    async def wait_for_room(self, account_id: str, since: int, timeout_s: float) -> None:
        """Return when room may have been freed since ``since``, or after ``timeout_s``."""
        ...

    async def settle(self, reservation: Reservation, actual_micros: int) -> Refusal | None:
        """Replace the hold by the actual cost; returns the limit this reached, if any."""
        ...

    async def release(self, reservation: Reservation) -> None:
        """Drop the hold (the request used nothing)."""
        ...

    def committed(self, account_id: str) -> int | None:
        """Settled usage of the current month as the guard counts it; None if unknown."""
        ...

    def money_changed(self, account_id: str) -> None:
        """Forget the cached money snapshot of the account (limit, credits changed)."""
        ...


def spend_cap(state: SpendState, period: str) -> tuple[int | None, Reason]:
    """The most the month may reach, and the reason to give once it does.

    The spend limit caps usage with credits included (SPEC §3). Without a
    payment method, usage also stops where the credits run out: the ledger's
    usage plus its remaining balance, read in one transaction. A snapshot
    still of an earlier month counts no usage of this one.
    """
    cap = state.spend_limit_micros
    reason = Reason.MONTHLY_SPEND_LIMIT_EXCEEDED
    if not state.has_payment_method:
        usage = state.period_usage_micros if state.period == period else 0
        credit_cap = usage + max(state.credit_balance_micros, 0)
        if cap is None or credit_cap < cap:
            cap, reason = credit_cap, Reason.CREDIT_DEPLETED
    return cap, reason


def ledger_usage(state: SpendState, period: str) -> int:
    """The ledger's usage of ``period`` (0 when the snapshot is of another month)."""
    return state.period_usage_micros if state.period == period else 0


@dataclass
class _Snapshot:
    state: SpendState
    fetched: datetime
    unseen: bool = False  # read in the background; the next ``get`` reports it as just read


class SnapshotCache:
    """``money.spend_state`` cached per account: at most one read every ``max_age``.

    The read runs in a worker thread so the event loop never waits on the
    database. ``invalidate`` (on ``money_changed``) forces the next read; a
    read that was already running when the account was invalidated is used
    but not cached, so it cannot hide the change. A snapshot in use is re-read
    in the background past 3/4 of its age (``refresh_ahead``); the first ``get``
    after that re-read reports it as just read, as a blocking read would.
    """

    def __init__(
        self, money: MoneySource, clock: Clock, max_age: timedelta = SNAPSHOT_MAX_AGE
    ) -> None:
        self._money = money
        self._clock = clock
        self._max_age = max_age
        self._snapshots: dict[str, _Snapshot] = {}
        self._generations: dict[str, int] = {}
        self._lock = threading.Lock()
        self.refresh = RefreshAhead("money snapshot")

    def peek(self, account_id: str) -> SpendState | None:
        """The cached snapshot however old it is, without reading."""
        with self._lock:
            cached = self._snapshots.get(account_id)
        return cached.state if cached else None

    async def get(self, account_id: str) -> tuple[SpendState, bool]:
        """The snapshot, and whether it was just read from the ledger."""
        now = self._clock.now()
        with self._lock:
            cached = self._snapshots.get(account_id)
            generation = self._generations.get(account_id, 0)
            if cached is not None and now - cached.fetched < self._max_age:
                unseen, cached.unseen = cached.unseen, False
                age = (now - cached.fetched).total_seconds()
                if self.refresh.due(age, self._max_age.total_seconds()):
                    self.refresh.start(account_id, lambda: self._reread(account_id))
                return cached.state, unseen
        state = await asyncio.to_thread(self._money.spend_state, account_id)
        with self._lock:
            if self._generations.get(account_id, 0) == generation:
                self._snapshots[account_id] = _Snapshot(state, now)
        return state, True

    def _reread(self, account_id: str) -> None:
        """The background re-read (a worker thread): cached unless invalidated meanwhile."""
        now = self._clock.now()
        with self._lock:
            generation = self._generations.get(account_id, 0)
        state = self._money.spend_state(account_id)
        with self._lock:
            if self._generations.get(account_id, 0) == generation:
                self._snapshots[account_id] = _Snapshot(state, now, unseen=True)

    def invalidate(self, account_id: str) -> None:
        with self._lock:
            self._snapshots.pop(account_id, None)
            self._generations[account_id] = self._generations.get(account_id, 0) + 1


@dataclass
class _Month:
    """One account's counters for one month."""

    period: str
    committed: int
    reserved: int = 0
    # reservation id -> (micros, expiry); insertion order is expiry order (one TTL).
    open: OrderedDict[str, tuple[int, datetime]] = field(default_factory=OrderedDict)


class InProcessSpendGuard:
    """The spend guard of one process: counters in memory, under one lock.

    Every call is O(1) (amortised: an expired reservation is dropped once),
    and the lock is never held across the database read of a snapshot.
    """

    def __init__(
        self,
        money: MoneySource,
        clock: Clock,
        *,
        ttl: timedelta = DEFAULT_TTL,
        snapshots: SnapshotCache | None = None,
    ) -> None:
        self._clock = clock
        self._ttl = ttl
        self._snapshots = snapshots or SnapshotCache(money, clock)
        self._months: dict[str, _Month] = {}
        self._lock = threading.Lock()
        self.room = RoomSignal()
        self.expired = 0  # leaked reservations dropped after their TTL

    async def reserve(
        self, account_id: str, worst_micros: int, floor_micros: int | None = None
    ) -> Reservation | Refusal:
        floor = floor_of(worst_micros, floor_micros)
        state, refreshed = await self._snapshots.get(account_id)
        now = self._clock.now()
        period = period_of(now)
        cap, reason = spend_cap(state, period)
        with self._lock:
            month = self._month(account_id, period, state, refreshed)
            self._purge(month, now)
            held = worst_micros
            if cap is not None:
                left = cap - month.committed
                room = left - month.reserved
                if room < held:
                    if held <= left or room < floor:
                        return refusal(reason, cap, month.committed, month.reserved, floor, period)
                    held = room  # the month cannot pay the worst case: hold all there is
            reservation = Reservation(uuid.uuid4().hex, account_id, period, held)
            month.open[reservation.id] = (held, now + self._ttl)
            month.reserved += held
            return reservation

    def room_version(self, account_id: str) -> int:
        return self.room.version(account_id)

    async def wait_for_room(self, account_id: str, since: int, timeout_s: float) -> None:
        await self.room.wait(account_id, since, timeout_s)

    async def settle(self, reservation: Reservation, actual_micros: int) -> Refusal | None:
        if actual_micros > reservation.micros:
            log.warning(
                "usage of %d micros exceeds its reservation of %d (account %s): "
                "the worst-case estimate is wrong for this request",
                actual_micros,
                reservation.micros,
                reservation.account_id,
            )
        with self._lock:
            month = self._months.get(reservation.account_id)
            if month is None or month.period != reservation.period:
                # The month rolled over (or this process never held it): the
                # ledger alone counts this usage now.
                return None
            held = month.open.pop(reservation.id, None)
            if held is not None:
                month.reserved -= held[0]
            month.committed += actual_micros
            committed, reserved = month.committed, month.reserved
        self.room.notify(reservation.account_id)
        return self._reached(reservation.account_id, reservation.period, committed, reserved)

    async def release(self, reservation: Reservation) -> None:
        with self._lock:
            month = self._months.get(reservation.account_id)
            if month is None or month.period != reservation.period:
                return
            held = month.open.pop(reservation.id, None)
            if held is not None:
                month.reserved -= held[0]
        self.room.notify(reservation.account_id)

    def committed(self, account_id: str) -> int | None:
        period = period_of(self._clock.now())
        with self._lock:
            month = self._months.get(account_id)
            return month.committed if month is not None and month.period == period else None

    def money_changed(self, account_id: str) -> None:
        self._snapshots.invalidate(account_id)

    def reserved(self, account_id: str) -> int:
        """Money held by open reservations this month (for tests and metrics)."""
        with self._lock:
            month = self._months.get(account_id)
            return month.reserved if month is not None else 0

    def _reached(
        self, account_id: str, period: str, committed: int, reserved: int
    ) -> Refusal | None:
        state = self._snapshots.peek(account_id)
        if state is None:
            return None
        cap, reason = spend_cap(state, period)
        if cap is not None and committed >= cap:
            return Refusal(reason, cap, committed + reserved, True, period)
        return None

    def _month(self, account_id: str, period: str, state: SpendState, refreshed: bool) -> _Month:
        month = self._months.get(account_id)
        ledger = ledger_usage(state, period)
        if month is None or month.period != period:
            month = _Month(period=period, committed=ledger)
            self._months[account_id] = month
        elif refreshed:
            month.committed = max(month.committed, ledger)
        return month

    def _purge(self, month: _Month, now: datetime) -> None:
        while month.open:
            reservation_id, (micros, expiry) = next(iter(month.open.items()))
            if expiry > now:
                return
            del month.open[reservation_id]
            month.reserved -= micros
            self.expired += 1
            log.warning("reservation %s expired unsettled after its TTL", reservation_id)
