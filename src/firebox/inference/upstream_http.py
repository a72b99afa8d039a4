"""HTTP/1.1 keep-alive connections to one upstream replica, on asyncio and httptools.

``Replica`` keeps a small pool of ``Connection``s (most recently used
reused first, each dropped after 4 s idle or when the replica closes it) and
hands one out per request; ``upstream_client`` decides which replica to ask
and what a failure means. Errors are raised as httpx's exception types,
which ``upstream_errors`` classifies.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

import httptools
import httpx

KEEPALIVE_EXPIRY_S = 4.0
_HIGH_WATER = 1 << 20  # bytes of answer buffered before reading from the socket pauses
JSON_HEADERS = b"content-type: application/json\r\naccept: application/json\r\n"
STREAM_HEADERS = b"content-type: application/json\r\naccept: text/event-stream\r\n"
COMMON_HEADERS = (
    b"accept-encoding: identity\r\nuser-agent: firebox\r\n"  # compression holds chunks back
)


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: one request at a time, its answer parsed by httptools."""

    def __init__(self, loop: asyncio.AbstractEventLoop, lost: Callable[[Connection], None]) -> None:
        self.loop, self._lost = loop, lost
        self.transport: asyncio.Transport | None = None
        self.closed = self.discarded = self.busy = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.headers_done = self.complete = self.received = self.keep_alive = False
        self.error: Exception | None = None
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol and httptools callbacks ---------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if not self.busy:  # nothing was asked: an idle connection cannot be trusted any more
            self.close()
            return
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"Malformed HTTP answer: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.busy and not self.complete:
            delimited = {"content-length", "transfer-encoding"} & set(self.headers)
            if self.headers_done and not delimited:
                self.complete = True  # a body delimited by the end of the connection
                self._wake()
            else:
                where = "in the middle of its answer" if self.received else "before answering"
                self._fail(httpx.RemoteProtocolError(f"The server closed the connection {where}."))
        self._lost(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()  # not known after the body
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    # -- used by the pool and the client ------------------------------------

    def send(self, data: bytes) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise httpx.RemoteProtocolError("The server closed the connection before answering.")
        self._reset()
        self.busy = True
        self.transport.write(data)

    async def head(self, timeout: float) -> None:
        """Wait for the status line and headers of the answer."""
        while not self.headers_done:
            await self._wait(timeout)

    async def next_body(self, timeout: float) -> bytes | None:
        """The body bytes received since the last call (waiting for some); None at its end."""
        while not self._chunks:
            if self.complete:
                return None
            await self._wait(timeout)
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    async def read_all(self, timeout: float) -> bytes:
        parts = []
        while (data := await self.next_body(timeout)) is not None:
            parts.append(data)
        return b"".join(parts)

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            with contextlib.suppress(RuntimeError):  # its event loop is already closed
                self.transport.close()

    async def _wait(self, timeout: float) -> None:
        if self.error is None:
            waiter = self._waiter = self.loop.create_future()
            timer = self.loop.call_later(timeout, _expire, waiter, httpx.ReadTimeout)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        if self.error is not None:
            raise self.error

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        self._wake()


def _expire(waiter: asyncio.Future[None], error: type[httpx.TimeoutException]) -> None:
    if not waiter.done():
        waiter.set_exception(error("Timed out waiting for the model server."))


class Replica:
    """The keep-alive connections to one replica, at most ``limit`` open at once."""

    def __init__(self, url: str, headers: bytes, limit: int, connect_timeout_s: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"An upstream URL must be http:// or https://, not {url!r}.")
        secure = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if secure else 80)
        self._ssl = ssl.create_default_context() if secure else None
        self._base = parts.path.rstrip("/")
        self._headers = b"host: " + parts.netloc.rpartition("@")[2].encode() + b"\r\n" + headers
        self._heads: dict[tuple[str, bool], bytes] = {}
        self._limit, self._connect_timeout = limit, connect_timeout_s
        self._idle: deque[Connection] = deque()
        self._open = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._closed = False

    async def request(
        self, path: str, content: bytes, *, streaming: bool, timeout: float
    ) -> Connection:
        """POST ``content`` to ``path``; the connection, once the answer's headers arrived."""
        head = self._heads.get((path, streaming))
        if head is None:
            line = f"POST {self._base}/{path.lstrip('/')} HTTP/1.1\r\n".encode()
            kind = STREAM_HEADERS if streaming else JSON_HEADERS
            head = self._heads[(path, streaming)] = line + self._headers + kind
        data = b"%bcontent-length: %d\r\n\r\n%b" % (head, len(content), content)
        for attempt in range(2):
            conn, reused = await self._acquire(timeout)
            try:
                conn.send(data)
                await conn.head(timeout)
                return conn
            except httpx.RemoteProtocolError:
                self.release(conn, reuse=False)
                if attempt or not reused or conn.received:
                    raise
            except BaseException:
                self.release(conn, reuse=False)
                raise
        raise AssertionError("unreachable")

    def release(self, conn: Connection, reuse: bool) -> None:
        """Give ``conn`` back: kept for the next request if its answer was read whole."""
        conn.busy = False
        if reuse and conn.reusable and not self._closed:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
            self._notify()
        else:
            self._discard(conn)

    def close(self) -> None:
        self._closed = True
        while self._idle:
            self._discard(self._idle.pop())

    async def _acquire(self, timeout: float) -> tuple[Connection, bool]:
        loop = asyncio.get_running_loop()
        while True:
            now = time.monotonic()
            while self._idle and now - self._idle[0].idle_since >= KEEPALIVE_EXPIRY_S:
                self._discard(self._idle.popleft())
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed and conn.loop is loop:
                    return conn, True
                self._discard(conn)
            if self._open < self._limit:
                break
            waiter = loop.create_future()
            self._waiters.append(waiter)
            timer = loop.call_later(timeout, _expire, waiter, httpx.PoolTimeout)
            try:
                await waiter
            finally:
                timer.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
        self._open += 1
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(loop, self._on_lost),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except BaseException as exc:
            self._open -= 1
            self._notify()
            if isinstance(exc, TimeoutError):
                raise httpx.ConnectTimeout("Connecting to the model server timed out.") from exc
            if isinstance(exc, OSError):
                raise httpx.ConnectError(f"Could not connect to the model server: {exc}") from exc
            raise
        return conn, False

    def _on_lost(self, conn: Connection) -> None:
        if not conn.busy and conn in self._idle:  # the replica closed an idle connection
            self._idle.remove(conn)
            self._discard(conn)

    def _discard(self, conn: Connection) -> None:
        if not conn.discarded:
            conn.discarded = True
            self._open -= 1
            conn.close()
            self._notify()

    def _notify(self) -> None:
        """Wake every request waiting for a connection; each looks again."""
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()
