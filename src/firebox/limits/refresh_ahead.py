"""Re-reads admission's cached entries in the background before they go stale.

Admission reads three per-account caches on every request: the suspension
reasons, the plan limits and the money snapshot. Each entry lives a short
while (1 to 5 s) so that a change made on another replica is seen soon. When
an entry expired, the request that found it used to wait for a database read
in a worker thread (about 0.5 ms on SQLite, more on PostgreSQL under load),
and those reads were most of admission's slowest 1 %.

Now, once an entry is past ``early`` (3/4) of its lifetime, the first request to
see it starts one background re-read and goes on with the entry, which is
still within its lifetime; the re-read replaces it long before it expires.
An entry is never used past its lifetime, so how stale a replica may be is
unchanged. Only an account idle for longer than the lifetime meets an
expired entry and waits, as before.

Each cache guards its store with a generation number, so a re-read that
started before a change on this replica cannot overwrite the change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


class RefreshAhead:
    """Starts at most one background re-read per key at a time."""

    def __init__(self, what: str, early: float = 0.75) -> None:
        if not 0 < early < 1:
            raise ValueError("early is a fraction of the lifetime, between 0 and 1")
        self._what = what
        self._early = early
        self._running: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # strong references until done
        self.started = 0  # re-reads started
        self.failed = 0  # re-reads that raised (the entry then expires as before)

    def due(self, age_s: float, lifetime_s: float) -> bool:
        """Whether an entry of this age should be re-read now."""
        return age_s >= lifetime_s * self._early

    def start(self, key: str, read: Callable[[], object]) -> None:
        """Run ``read`` (blocking; it stores what it read) in a worker thread.

        Does nothing when a re-read of ``key`` is already running, or when no
        event loop runs (a synchronous caller simply reads when the entry expires).
        """
        if key in self._running:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._running.add(key)
        self.started += 1
        task = loop.create_task(self._run(key, read))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the re-reads in flight (tests, shutdown)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def _run(self, key: str, read: Callable[[], object]) -> None:
        try:
            await asyncio.to_thread(read)
        except Exception:
            self.failed += 1
            log.warning("re-reading the %s of %s failed", self._what, key, exc_info=True)
        finally:
            self._running.discard(key)
