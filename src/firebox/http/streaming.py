"""A streaming response that sends together what became ready together.

Why: an SSE answer is a run of small events. Starlette's ``StreamingResponse``
sends each as its own ASGI message (one socket write each, through every
middleware's ``send`` wrapper) and, on uvicorn, watches for a disconnect with
an anyio task group per response. When one read from an upstream holds
several events (a fast engine, or a gateway that fell behind on a busy
machine) they are ready at the same moment, and one write can carry them all.

``CoalescingStream`` runs the body iterator in a producer task that appends
each piece to a buffer; the response sends whatever the buffer holds each
time it wakes. Pieces produced without the producer waiting in between
leave in one write, and nothing ever waits for company: the first piece is
sent as soon as it exists. The buffer is bounded (``max_buffered`` bytes;
the producer then waits for the send). A task waiting on ``receive()``
cancels the producer the moment the client disconnects, which closes the
body iterator and so cancels the engine. ``on_close`` runs last, whatever
happened, even when the response never started (Starlette skips a body
whose client left before the first byte).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

MAX_BUFFERED = 64 * 1024


class _Buffer:
    """What the producer made and the response has not sent yet."""

    __slots__ = ("disconnected", "done", "error", "pieces", "room", "size", "wake")

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.size = 0
        self.done = False  # the producer ended (finished, failed or was cancelled)
        self.error: Exception | None = None
        self.disconnected = False
        self.wake = asyncio.Event()  # something to send, or the producer ended
        self.room = asyncio.Event()  # the buffer is below its bound
        self.room.set()

    def take(self) -> bytes:
        body = self.pieces[0] if len(self.pieces) == 1 else b"".join(self.pieces)
        self.pieces.clear()
        self.size = 0
        self.room.set()
        return body


class CoalescingStream(Response):
    """Streams ``body``, one write per batch of ready pieces; see the module docstring."""

    def __init__(
        self,
        body: AsyncIterator[bytes],
        *,
        on_close: Callable[[], Awaitable[None]] | None = None,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
        max_buffered: int = MAX_BUFFERED,
    ) -> None:
        self.body_iterator = body
        self.status_code = status_code
        self.media_type = media_type
        self.background = None
        self.init_headers(headers)
        self._on_close = on_close
        self._max_buffered = max_buffered

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._stream(receive, send)
        finally:
            if self._on_close is not None:
                await self._on_close()

    async def _stream(self, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        buffer = _Buffer()
        producer = loop.create_task(self._produce(buffer))
        watcher = loop.create_task(_watch(receive, producer, buffer))
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            while True:
                if buffer.pieces:
                    body = buffer.take()
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                elif buffer.done:
                    break
                else:
                    await buffer.wake.wait()
                    buffer.wake.clear()
            if buffer.error is not None:
                raise buffer.error
            if not buffer.disconnected:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            if not producer.done():
                producer.cancel()
                await asyncio.wait([producer])  # it closes the body iterator

    async def _produce(self, buffer: _Buffer) -> None:
        try:
            async with aclosing(self.body_iterator):  # type: ignore[type-var]
                async for piece in self.body_iterator:
                    buffer.pieces.append(piece)
                    buffer.size += len(piece)
                    buffer.wake.set()
                    if buffer.size >= self._max_buffered:
                        buffer.room.clear()
                        await buffer.room.wait()
        except Exception as exc:  # raised by the response, after what came before is sent
            buffer.error = exc
        finally:
            buffer.done = True
            buffer.wake.set()


async def _watch(receive: Receive, producer: asyncio.Task[Any], buffer: _Buffer) -> None:
    """Cancel the producer as soon as the client disconnects."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            buffer.disconnected = True
            producer.cancel()
            return
