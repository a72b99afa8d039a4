"""When a Redis backend last failed, and whether to try it again yet.

The rate limiter and the spend guard both answer from memory for a short
cool-down after Redis fails, then try it again. Both measure that cool-down
on the injected clock (so a test's fake clock drives it, like everything
else), through this one small class.
"""

from __future__ import annotations

from datetime import datetime, timedelta


class Outage:
    """A backend's cool-down after a failure: ``failed`` starts it, ``reached`` ends it."""

    __slots__ = ("_cooldown", "_down_until")

    def __init__(self, cooldown: timedelta) -> None:
        self._cooldown = cooldown
        self._down_until: datetime | None = None

    @property
    def degraded(self) -> bool:
        """Whether the last attempt failed (and no later one succeeded)."""
        return self._down_until is not None

    def available(self, now: datetime) -> bool:
        """Whether to try the backend at ``now`` (not within the cool-down of a failure)."""
        return self._down_until is None or now >= self._down_until

    def failed(self, now: datetime) -> bool:
        """Record a failed call at ``now``; True when it starts an outage (warn once)."""
        started = self._down_until is None
        self._down_until = now + self._cooldown
        return started

    def reached(self) -> bool:
        """Record a successful call; True when it ends an outage."""
        ended = self._down_until is not None
        self._down_until = None
        return ended
