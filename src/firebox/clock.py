"""Time as an injectable dependency.

Anything that bills, limits or expires asks a ``Clock`` for the time, so
tests (and the operator's test clock) can move time without sleeping.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """A source of timezone-aware UTC time."""

    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        ...


class SystemClock:
    """The real wall clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FakeClock:
    """A clock that only moves when told to; thread-safe."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta) -> datetime:
        """Move forward by ``delta``; time never moves backwards."""
        if delta < timedelta(0):
            raise ValueError("a clock cannot move backwards")
        with self._lock:
            self._now += delta
            return self._now

    def set(self, when: datetime) -> datetime:
        """Jump to ``when``, which must not be earlier than now."""
        with self._lock:
            if when.tzinfo is None:
                raise ValueError("time must be timezone-aware")
            if when < self._now:
                raise ValueError("a clock cannot move backwards")
            self._now = when.astimezone(UTC)
            return self._now


class OffsetClock:
    """The wall clock shifted by an offset the operator can only move forward.

    This is the platform's test clock (``FIREBOX_TEST_CLOCK=1``), like
    Stripe's test clocks: ``advance_to`` jumps the platform into the future
    (to cross a month end, say) while time keeps flowing from there, so rate
    windows and timeouts still work on a running server.
    """

    def __init__(self, base: Clock | None = None) -> None:
        self._base = base or SystemClock()
        self._offset = timedelta(0)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            offset = self._offset
        return self._base.now() + offset

    def advance_to(self, when: datetime) -> datetime:
        """Move the clock to ``when``; moving backwards is refused with ``ValueError``."""
        if when.tzinfo is None:
            raise ValueError("time must be timezone-aware")
        with self._lock:
            current = self._base.now() + self._offset
            if when < current:
                raise ValueError("a clock cannot move backwards")
            self._offset += when.astimezone(UTC) - current
            return current + (when.astimezone(UTC) - current)

    @property
    def offset(self) -> timedelta:
        with self._lock:
            return self._offset
