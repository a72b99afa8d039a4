"""Wakes admissions waiting for room under an account's spend cap.

A request refused only because other requests' reservations fill the cap
waits a little for one of them to settle or be released, instead of being
refused at once (``limits.admission``). Every settlement and release of an
account calls ``notify``; a waiter reads ``version`` *before* it tries to
reserve and passes it to ``wait``, which returns at once if a notification
came in between, so a wake-up is never lost.

Waiters may sit on any event loop (a TestClient runs its own), and
``notify`` may be called from any thread, so a waiter is a future woken
through its own loop's ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading


class RoomSignal:
    """Per-account change counter with waiters; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[str, int] = {}
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = {}

    def version(self, account_id: str) -> int:
        """How many times room was freed for ``account_id`` (compare, never interpret)."""
        with self._lock:
            return self._versions.get(account_id, 0)

    def notify(self, account_id: str) -> None:
        """Room may have been freed for ``account_id``: wake everyone waiting for it."""
        with self._lock:
            self._versions[account_id] = self._versions.get(account_id, 0) + 1
            waiters = self._waiters.pop(account_id, set())
        for loop, future in waiters:
            # A closed loop raises RuntimeError: nobody is waiting there any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_wake, future)

    def waiting(self, account_id: str) -> int:
        """How many admissions wait for room of ``account_id`` now (tests, metrics)."""
        with self._lock:
            return len(self._waiters.get(account_id, ()))

    async def wait(self, account_id: str, since: int, timeout_s: float) -> bool:
        """Wait until ``version`` passes ``since``, at most ``timeout_s``; whether it did."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        entry = (loop, future)
        with self._lock:
            if self._versions.get(account_id, 0) != since:
                return True
            self._waiters.setdefault(account_id, set()).add(entry)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout=max(timeout_s, 0.0))
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                waiting = self._waiters.get(account_id)
                if waiting is not None:
                    waiting.discard(entry)
                    if not waiting:
                        del self._waiters[account_id]


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
