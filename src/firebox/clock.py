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
