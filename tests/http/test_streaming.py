"""CoalescingStream: what is ready together leaves in one write, and nothing waits for company.

Driven as the ASGI server drives it: ``receive`` / ``send`` callables that
record every message, on asyncio and on uvloop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import uvloop

from firebox.http.streaming import CoalescingStream


class Client:
    """The server side of one connection: the messages sent, and a disconnect on cue."""

    def __init__(self, blocked: bool = False, fail_on_start: bool = False) -> None:
        self.messages: list[dict[str, Any]] = []
        self.gone = asyncio.Event()
        # A blocked client takes nothing until ``unblocked`` is set: a slow reader whose
        # slowness does not depend on the machine's speed.
        self.unblocked = asyncio.Event()
        if not blocked:
            self.unblocked.set()
        self.fail_on_start = fail_on_start

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if self.fail_on_start and message["type"] == "http.response.start":
            raise OSError("the client went away")
        await self.unblocked.wait()
        self.messages.append(message)

    @property
    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.messages if m["type"] == "http.response.body"]


async def until(predicate: Callable[[], bool], timeout_s: float = 60.0) -> None:
    """Yield to the loop until ``predicate`` holds; the deadline is only the failure path."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


def on_both_loops(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())
    uvloop.run(main())


async def call(response: CoalescingStream, client: Client) -> None:
    await response({"type": "http"}, client.receive, client.send)  # type: ignore[arg-type]


def test_pieces_ready_together_share_a_write_and_a_pause_splits_them() -> None:
    async def body() -> AsyncIterator[bytes]:
        for piece in (b"a", b"b", b"c"):
            yield piece  # no waiting: all three are ready together
        await asyncio.sleep(0.02)
        yield b"d"
        yield b"e"

    async def main() -> None:
        closed: list[str] = []

        async def on_close() -> None:
            closed.append("closed")

        client = Client()
        response = CoalescingStream(body(), on_close=on_close, media_type="text/event-stream")
        await call(response, client)
        assert client.messages[0]["type"] == "http.response.start"
        assert client.messages[0]["status"] == 200
        assert (b"content-type", b"text/event-stream; charset=utf-8") in client.messages[0][
            "headers"
        ]
        # The first piece leaves at once; the two that followed it without a pause go
        # together; then the two after the pause; then the end of the body.
        assert client.bodies in ([b"a", b"bc", b"de", b""], [b"abc", b"de", b""])
        assert client.messages[-1]["more_body"] is False
        assert closed == ["closed"]

    on_both_loops(main)


def test_a_disconnect_cancels_the_body_at_once_and_close_still_runs() -> None:
    async def main() -> None:
        cleaned = asyncio.Event()
        closed: list[str] = []

        async def body() -> AsyncIterator[bytes]:
            try:
                yield b"first"
                await asyncio.sleep(3600)  # an engine that would go on for an hour
                yield b"never"
            finally:
                cleaned.set()

        async def on_close() -> None:
            closed.append("closed")

        client = Client()
        task = asyncio.ensure_future(call(CoalescingStream(body(), on_close=on_close), client))
        await until(lambda: client.bodies == [b"first"])
        client.gone.set()
        await asyncio.wait_for(task, 60)  # "at once": long before the body's hour
        assert cleaned.is_set() and closed == ["closed"]
        assert client.bodies == [b"first"]  # no end of body for a client that is gone

    on_both_loops(main)


def test_close_runs_when_the_client_left_before_the_first_byte() -> None:
    async def main() -> None:
        closed: list[str] = []

        async def body() -> AsyncIterator[bytes]:
            await asyncio.sleep(3600)
            yield b"never"

        async def on_close() -> None:
            closed.append("closed")

        client = Client(fail_on_start=True)
        with pytest.raises(OSError):
            await call(CoalescingStream(body(), on_close=on_close), client)
        assert closed == ["closed"]

    on_both_loops(main)


def test_an_error_in_the_body_comes_after_what_was_made_before_it() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"one"
        await asyncio.sleep(0.01)
        yield b"two"
        raise RuntimeError("engine crashed")

    async def main() -> None:
        client = Client()
        with pytest.raises(RuntimeError, match="engine crashed"):
            await call(CoalescingStream(body()), client)
        assert b"".join(client.bodies) == b"onetwo"
        assert all(m.get("more_body", True) for m in client.messages[1:])  # never "complete"

    on_both_loops(main)


def test_a_slow_client_holds_the_producer_at_the_buffer_bound() -> None:
    async def main() -> None:
        made: list[int] = []

        async def body() -> AsyncIterator[bytes]:
            for i in range(10):
                made.append(i)
                yield b"x" * 100

        client = Client(blocked=True)
        task = asyncio.ensure_future(call(CoalescingStream(body(), max_buffered=300), client))
        await until(lambda: len(made) >= 3)
        for _ in range(100):  # every chance to make more, were it not held
            await asyncio.sleep(0)
        assert client.messages == []  # the headers are still being sent
        assert made == [0, 1, 2]  # three pieces fill the bound: the producer waits
        client.unblocked.set()
        await task
        assert b"".join(client.bodies) == b"x" * 1000
        assert max(len(b) for b in client.bodies) <= 300

    on_both_loops(main)
