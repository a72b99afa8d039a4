"""HTTP to the replicas of one OpenAI-compatible upstream: pooling, retries, errors.

Each replica has a small pool of HTTP/1.1 keep-alive connections, so a
request costs no TCP handshake: at most ``max_connections`` open at once,
the most recently used reused first, each dropped after 4 s idle (before
the 5 s idle timeout of uvicorn, which vLLM and SGLang run on, can close it
under a new request) or as soon as the replica closes it. Proxy environment
variables are ignored: the upstream is a host the operator named, usually on
a private network.

The client is a lean one on asyncio and httptools rather than httpx: under
load httpx and httpcore took about 40 % of the gateway's CPU (request
objects, cookies, URL merging, a poll of every idle connection per request,
the head and the body written separately), this one a few per cent (see
docs/benchmarks.md, "Gateway overhead"). It raises httpx's exception types,
which ``upstream_errors`` classifies.

A request goes to the replica the ``ReplicaPool`` picks; if that attempt
fails in a way another replica may not (see ``upstream_errors``) and nothing
has been passed on yet, it is tried on the next replica, each replica at
most once. Once a chunk was passed on, a failure ends the stream with an
error: replaying the request elsewhere would duplicate text the user already
has. An idle connection the replica closed just as it was reused, before
any byte of an answer, is replaced by a new one at once.

Closing a ``stream`` iterator early closes its connection (a half-read
HTTP/1.1 response cannot be reused), which is how the upstream learns to
abort the generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
import httpx
import orjson

from firebox.inference.upstream_errors import (
    Failure,
    failure_from_error_chunk,
    failure_from_status,
    failure_from_stream,
    failure_from_transport,
)
from firebox.inference.upstream_pool import ReplicaPool
from firebox.inference.upstream_sse import MalformedStream, SseDecoder, decode_object

logger = logging.getLogger(__name__)

_KEEPALIVE_EXPIRY_S = 4.0
_HIGH_WATER = 1 << 20  # bytes of answer buffered before reading from the socket pauses
_JSON = b"content-type: application/json\r\naccept: application/json\r\n"
_STREAM = b"content-type: application/json\r\naccept: text/event-stream\r\n"
_COMMON = b"accept-encoding: identity\r\nuser-agent: firebox\r\n"  # compression holds chunks back


class _AttemptFailed(Exception):
    """Carries the classified failure of one attempt to the retry loop."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.error.message)
        self.failure = failure


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: one request at a time, its answer parsed by httptools."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, lost: Callable[[_Connection], None]
    ) -> None:
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


class _Replica:
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
        self._idle: deque[_Connection] = deque()
        self._open = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._closed = False

    async def request(
        self, path: str, content: bytes, *, streaming: bool, timeout: float
    ) -> _Connection:
        """POST ``content`` to ``path``; the connection, once the answer's headers arrived."""
        head = self._heads.get((path, streaming))
        if head is None:
            line = f"POST {self._base}/{path.lstrip('/')} HTTP/1.1\r\n".encode()
            kind = _STREAM if streaming else _JSON
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

    def release(self, conn: _Connection, reuse: bool) -> None:
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

    async def _acquire(self, timeout: float) -> tuple[_Connection, bool]:
        loop = asyncio.get_running_loop()
        while True:
            now = time.monotonic()
            while self._idle and now - self._idle[0].idle_since >= _KEEPALIVE_EXPIRY_S:
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
                    lambda: _Connection(loop, self._on_lost),
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

    def _on_lost(self, conn: _Connection) -> None:
        if not conn.busy and conn in self._idle:  # the replica closed an idle connection
            self._idle.remove(conn)
            self._discard(conn)

    def _discard(self, conn: _Connection) -> None:
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


class UpstreamClient:
    """Sends OpenAI API calls to the replicas of one upstream, with failover."""

    def __init__(
        self,
        pool: ReplicaPool,
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        connect_timeout_s: float | None = None,
        max_connections: int = 512,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        connect = connect_timeout_s if connect_timeout_s is not None else min(timeout_s, 5.0)
        headers = _COMMON + (f"authorization: Bearer {api_key}\r\n".encode() if api_key else b"")
        self._pool = pool
        self._timeout = timeout_s
        self._replicas = {
            url: _Replica(url, headers, max_connections, connect) for url in pool.urls
        }

    @property
    def pool(self) -> ReplicaPool:
        """The replica pool (in-flight counts, ejections), for metrics and tests."""
        return self._pool

    async def stream(self, path: str, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        """POST ``body`` to ``path`` and yield the SSE chunks of the answer as they arrive."""
        content = orjson.dumps(body)
        tried: list[str] = []
        failure: Failure | None = None
        while (url := self._pool.acquire(tried)) is not None:
            tried.append(url)
            replica, conn, reuse, sent = self._replicas[url], None, False, False
            try:
                conn = await replica.request(path, content, streaming=True, timeout=self._timeout)
                if conn.status != 200:
                    answer = await conn.read_all(self._timeout)
                    reuse = True
                    raise _AttemptFailed(failure_from_status(conn.status, answer, conn.headers))
                decoder = SseDecoder()
                while (raw := await conn.next_body(self._timeout)) is not None:
                    for payload in decoder.feed(raw):
                        chunk = _checked(payload)
                        sent = True
                        yield chunk
                for payload in decoder.close():
                    chunk = _checked(payload)
                    sent = True
                    yield chunk
                reuse = True  # read to its end: the connection serves the next request
                self._pool.record_success(url)
                return
            except _AttemptFailed as exc:
                failure = exc.failure
            except httpx.HTTPError as exc:
                failure = failure_from_transport(exc)
            except MalformedStream as exc:
                failure = failure_from_stream(exc)
            finally:
                if conn is not None:
                    replica.release(conn, reuse)
                self._pool.release(url)
            self._note(url, failure)
            if sent or not failure.retryable:
                raise failure.error from failure.cause
        assert failure is not None  # the pool has at least one replica
        raise failure.error from failure.cause

    async def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``path`` and return the JSON object answered."""
        content = orjson.dumps(body)
        tried: list[str] = []
        failure: Failure | None = None
        while (url := self._pool.acquire(tried)) is not None:
            tried.append(url)
            replica, conn, reuse = self._replicas[url], None, False
            try:
                conn = await replica.request(path, content, streaming=False, timeout=self._timeout)
                raw = await conn.read_all(self._timeout)
                reuse = True
                if conn.status != 200:
                    raise _AttemptFailed(failure_from_status(conn.status, raw, conn.headers))
                answer = decode_object(raw)
                self._pool.record_success(url)
                return answer
            except _AttemptFailed as exc:
                failure = exc.failure
            except httpx.HTTPError as exc:
                failure = failure_from_transport(exc)
            except MalformedStream as exc:
                failure = failure_from_stream(exc)
            finally:
                if conn is not None:
                    replica.release(conn, reuse)
                self._pool.release(url)
            self._note(url, failure)
            if not failure.retryable:
                raise failure.error from failure.cause
        assert failure is not None
        raise failure.error from failure.cause

    def _note(self, url: str, failure: Failure) -> None:
        if failure.replica_fault:
            logger.warning("upstream replica %s failed: %s", url, failure.error.message)
            self._pool.record_failure(url)
        else:
            logger.debug("upstream replica %s refused: %s", url, failure.error.message)

    async def close(self) -> None:
        """Close every replica's idle connections (busy ones close when released)."""
        for replica in self._replicas.values():
            replica.close()


def _checked(payload: bytes) -> dict[str, Any]:
    chunk = decode_object(payload)
    failure = failure_from_error_chunk(chunk)
    if failure is not None:
        raise _AttemptFailed(failure)
    return chunk
