"""A bounded thread pool for prompt work (templating, tokenizing, detokenizing), shared fairly.

Tokenizing takes time in proportion to the text: a few megabytes cost
seconds. Run on the event loop, that stalls every other request of the
process (health checks included); run on an unbounded pool, one account
sending large prompts in a loop would take every thread. So jobs run on
``threads`` worker threads, and an account runs at most ``account_share`` of
them at once: its further jobs wait, in order, without holding a thread,
and past ``account_queue`` waiting jobs it is told to slow down (429).

The Rust tokenizers release the GIL while they encode, so a worker thread
tokenizing megabytes leaves the event loop free to run.

Small jobs (under ``inline_bytes`` of input) run on the caller's thread:
they cost microseconds, less than the hop to a worker. The per-account
bookkeeping lives on the event loop's thread (a worker's end is passed back
with ``call_soon_threadsafe``), so one pool serves one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from firebox.errors import RateLimited, ServiceUnavailable

T = TypeVar("T")

INLINE_BYTES = 4096  # inputs up to this size are tokenized in place (tens of microseconds)


@dataclass
class _Share:
    """One account's use of the pool: jobs running, and jobs waiting for a slot."""

    running: int = 0
    waiting: deque[asyncio.Future[None]] = field(default_factory=deque)


class TokenizerPool:
    """Runs blocking prompt work off the event loop, at most ``account_share`` jobs per account."""

    def __init__(
        self,
        threads: int = 4,
        account_share: int = 2,
        account_queue: int = 16,
        inline_bytes: int = INLINE_BYTES,
    ) -> None:
        if threads < 1 or account_share < 1 or account_queue < 0:
            raise ValueError("threads and account_share must be at least 1, account_queue >= 0")
        self.threads = threads
        self.account_share = min(account_share, threads)
        self.account_queue = account_queue
        self.inline_bytes = inline_bytes
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="firebox-tokenizer")
        self._accounts: dict[str, _Share] = {}
        self._closed = False

    def busy(self, account_id: str) -> int:
        """Jobs of ``account_id`` running or waiting now (for tests and metrics)."""
        share = self._accounts.get(account_id)
        return 0 if share is None else share.running + len(share.waiting)

    async def run(self, account_id: str, size: int, job: Callable[[], T]) -> T:
        """``job()``'s result; on a worker thread when ``size`` (bytes of input) is large.

        Raises ``RateLimited`` when the account already has ``account_share``
        jobs running and ``account_queue`` more waiting.
        """
        if size <= self.inline_bytes:
            return job()
        if self._closed:
            raise ServiceUnavailable(
                "The server is shutting down and takes no new requests; retry on another replica.",
                code="shutting_down",
            )
        loop = asyncio.get_running_loop()
        await self._acquire(account_id, loop)
        try:
            submitted: Future[T] = self._executor.submit(job)
        except RuntimeError:  # the executor was shut down meanwhile
            self._release(account_id)
            raise ServiceUnavailable(
                "The server is shutting down and takes no new requests; retry on another replica.",
                code="shutting_down",
            ) from None

        def finished(_: Future[T]) -> None:
            # The slot is given back when the thread is done, not when the caller
            # stops waiting: a client that hangs up cannot free its share early.
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(self._release, account_id)

        submitted.add_done_callback(finished)
        return await asyncio.wrap_future(submitted)

    async def _acquire(self, account_id: str, loop: asyncio.AbstractEventLoop) -> None:
        share = self._accounts.setdefault(account_id, _Share())
        if share.running < self.account_share and not share.waiting:
            share.running += 1
            return
        if len(share.waiting) >= self.account_queue:
            raise RateLimited(
                f"This account already has {share.running} large prompts being tokenized and "
                f"{len(share.waiting)} waiting; wait for them to finish, send fewer at once, "
                "or send shorter prompts.",
                code="tokenizer_busy",
                headers={"Retry-After": "1"},
            )
        waiter: asyncio.Future[None] = loop.create_future()
        share.waiting.append(waiter)
        try:
            await waiter  # _release hands the slot over (running already counts it)
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(account_id)  # granted, then cancelled: pass the slot on
            else:
                with contextlib.suppress(ValueError):
                    share.waiting.remove(waiter)
                self._forget_if_idle(account_id)
            raise

    def _release(self, account_id: str) -> None:
        share = self._accounts.get(account_id)
        if share is None:
            return
        share.running -= 1
        while share.waiting:
            waiter = share.waiting.popleft()
            if not waiter.done():
                share.running += 1
                waiter.set_result(None)
                return
        self._forget_if_idle(account_id)

    def _forget_if_idle(self, account_id: str) -> None:
        share = self._accounts.get(account_id)
        if share is not None and share.running <= 0 and not share.waiting:
            del self._accounts[account_id]

    def close(self) -> None:
        """Take no more jobs; queued ones are dropped, running ones finish on their own."""
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
