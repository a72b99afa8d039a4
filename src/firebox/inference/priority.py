"""Interactive traffic first: what batch work watches to yield the engines to it.

Serving counts the interactive (non-batch) requests in flight in this process,
from admission to their usage record; a batch job's runner starts its next
request only once that count is zero (``lull``), so batch work fills the
engines' idle time. A batch request already running is not preempted: it
ends at its own ``max_tokens``, which bounds what an interactive request that
arrives meanwhile shares the engine with.
"""

from __future__ import annotations

import threading
import time

import anyio

POLL_S = 0.01  # how often a waiting batch request looks again


class InteractiveTraffic:
    """Counts interactive requests in flight (any thread; ``lull`` on an event loop)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight = 0
        self.admitted = 0  # interactive requests counted so far (tests, benchmarks)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def enter(self) -> None:
        """An interactive request was admitted and is about to run."""
        with self._lock:
            self._in_flight += 1
            self.admitted += 1

    def leave(self) -> None:
        """An interactive request ended (its usage record was emitted)."""
        with self._lock:
            self._in_flight = max(self._in_flight - 1, 0)

    async def lull(self, max_wait_s: float) -> bool:
        """Wait until no interactive request is in flight; False if ``max_wait_s`` passed first.

        The bound keeps a batch job from starving under uninterrupted
        interactive load: it then runs one request at a time beside it.
        """
        deadline = time.monotonic() + max_wait_s
        while self._in_flight > 0:
            if time.monotonic() >= deadline:
                return False
            await anyio.sleep(POLL_S)
        return True
