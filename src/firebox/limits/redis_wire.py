"""A lean, pipelined asyncio Redis connection for the limits' Lua scripts.

Why it exists: admission runs one ``EVALSHA`` per request, and its latency is
added to every request the gateway serves. redis-py's asyncio client spends
most of a loopback call in Python (pool checkout, a lock, command packing,
response callbacks): on the 2-core benchmark machine a bare ``EVALSHA``
through it had p99 0.29 ms against 0.10 ms for Redis' own C client, and the
issue's target for a whole admission is 0.3 ms. This client does only what
the scripts need, and nothing else uses it (reads off the hot path, tests and
tools keep redis-py):

- One connection per client, shared by every concurrent call. Commands are
  written in order and replies matched first in, first out (Redis answers a
  connection's commands in order), so concurrent admissions pipeline instead
  of queueing for a pooled connection.
- Replies are parsed by ``hiredis``, the C parser redis-py itself uses.
- ``EVALSHA`` by the script's SHA1; on ``NOSCRIPT`` (a restarted or flushed
  Redis) the same call is sent as ``EVAL``, which also caches the script.
- Every call has a timeout. A timeout or a broken connection fails every call
  in flight on it (their replies could no longer be matched to them), and the
  next call connects afresh. Such a call is tried once more on a new
  connection, as redis-py's ``Retry(NoBackoff(), 1)`` did: the scripts are
  idempotent by request id for exactly this retry.
- A cancelled caller (a client that went away) leaves its reply slot in the
  queue, so the replies of the others still match.

Errors are redis-py's classes (``ConnectionError``, ``TimeoutError``,
``ResponseError``, ``NoScriptError``), so callers catch them as before.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.connection import parse_url
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = str | int | bytes

_CONNECTION_FAILURES = (RedisConnectionError, RedisTimeoutError)


def pack(*parts: Arg) -> bytes:
    """One command in RESP: an array of bulk strings."""
    return b"*%d\r\n" % len(parts) + _bulks(parts)


def _bulks(parts: Sequence[Arg]) -> bytes:
    """``parts`` as RESP bulk strings (an int is sent as its decimal text)."""
    out: list[bytes] = []
    for part in parts:
        data = part if type(part) is bytes else str(part).encode()
        out += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(out)


def _error(reply: hiredis.ReplyError) -> RedisError:
    """redis-py's exception for an error reply (only the kinds the scripts can meet)."""
    message = str(reply)
    code, _, rest = message.partition(" ")
    if code == "NOSCRIPT":
        return NoScriptError(rest)
    if code == "LOADING":  # a ConnectionError: Redis is starting, callers treat it as down
        return BusyLoadingError(rest)
    if code == "READONLY":
        return ReadOnlyError(rest)
    if code in ("NOAUTH", "WRONGPASS", "NOPERM"):
        return AuthenticationError(message)
    return ResponseError(message)


class _Connection(asyncio.Protocol):
    """One socket to Redis: commands out in order, replies matched to them FIFO."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader()
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.broken = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(RedisConnectionError(f"Redis sent a malformed reply: {exc}"))
                return
            if reply is False:
                return
            if not self.waiting:
                self.fail(RedisConnectionError("Redis sent a reply nobody asked for"))
                return
            future = self.waiting.popleft()
            if not future.done():  # a cancelled caller's slot is skipped, in order
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.broken = True
        detail = f": {exc}" if exc else ""
        self._fail_waiting(RedisConnectionError(f"Redis closed the connection{detail}"))

    def send(self, payload: bytes, future: asyncio.Future[Any]) -> None:
        assert self.transport is not None
        self.waiting.append(future)
        self.transport.write(payload)

    def fail(self, error: RedisError) -> None:
        """Fail every call in flight and drop the connection (replies can't be matched now)."""
        self.broken = True
        self._fail_waiting(error)
        if self.transport is not None:
            self.transport.abort()

    def _fail_waiting(self, error: RedisError) -> None:
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)


class Script:
    """A Lua script run by ``ScriptClient``: ``await script(keys=[...], args=[...])``."""

    __slots__ = ("_client", "_evalsha", "sha", "source")

    def __init__(self, client: ScriptClient, source: str) -> None:
        self._client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self._evalsha = _bulks(("EVALSHA", self.sha))

    def command(self, keys: Sequence[Arg], args: Sequence[Arg]) -> bytes:
        """``EVALSHA`` of this script with ``keys`` and ``args``, in RESP."""
        count = 3 + len(keys) + len(args)
        return b"*%d\r\n%s%s" % (count, self._evalsha, _bulks((len(keys), *keys, *args)))

    async def __call__(self, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()) -> Any:
        return await self._client.run(self, keys, args)


class ScriptClient:
    """Runs Lua scripts on one pipelined connection; see the module docstring.

    ``url`` is a redis-py URL (``redis://``, ``rediss://``, ``unix://``,
    with user, password and db). The connection opens on the first call and
    belongs to the event loop that made it; a call from another loop (tests
    that run several) opens a new one.
    """

    def __init__(self, url: str, *, timeout_s: float, connect_timeout_s: float) -> None:
        params = parse_url(url)  # type: ignore[no-untyped-call]
        self._host = str(params.get("host", "localhost"))
        self._port = int(params.get("port", 6379))
        self._path = params.get("path")
        self._db = int(params.get("db", 0) or 0)
        self._username = params.get("username")
        self._password = params.get("password")
        self._ssl = url.startswith("rediss://")
        self._timeout = timeout_s
        self._connect_timeout = connect_timeout_s
        self._conn: _Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self.connects = 0  # connections opened (the first, and one after each failure)

    def register_script(self, source: str) -> Script:
        """A callable that runs ``source`` by its SHA1 (loading it when Redis lacks it)."""
        return Script(self, source)

    async def run(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """The script's reply; one retry on a fresh connection after a connection failure."""
        try:
            return await self._run_once(script, keys, args)
        except _CONNECTION_FAILURES:
            return await self._run_once(script, keys, args)

    async def execute(self, *command: Arg) -> Any:
        """Any one command (for tests and tools; the hot path runs scripts)."""
        return await self._call(pack(*command))

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and conn.transport is not None:
            conn.broken = True
            conn.transport.close()

    async def _run_once(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        try:
            return await self._call(script.command(keys, args))
        except NoScriptError:  # the script did not run: run it by its source (Redis caches it)
            return await self._call(pack("EVAL", script.source, len(keys), *keys, *args))

    async def _call(self, payload: bytes) -> Any:
        conn = await self._connection()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        conn.send(payload, future)
        timer = loop.call_later(self._timeout, self._expire, conn, future)
        try:
            reply = await future
        finally:
            timer.cancel()
        if isinstance(reply, hiredis.ReplyError):
            raise _error(reply)
        return reply

    def _expire(self, conn: _Connection, future: asyncio.Future[Any]) -> None:
        if not future.done():
            conn.fail(RedisTimeoutError(f"Redis did not answer within {self._timeout:g} s"))

    async def _connection(self) -> _Connection:
        loop = asyncio.get_running_loop()
        conn = self._conn
        if conn is not None and not conn.broken and self._loop is loop:
            return conn
        if self._loop is not loop or self._lock is None:
            self._loop, self._lock, self._conn = loop, asyncio.Lock(), None
        async with self._lock:
            conn = self._conn
            if conn is None or conn.broken:
                conn = self._conn = await self._open(loop)
            return conn

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        try:
            async with asyncio.timeout(self._connect_timeout):
                if self._path:
                    _, conn = await loop.create_unix_connection(_Connection, str(self._path))
                else:
                    context = ssl.create_default_context() if self._ssl else None
                    _, conn = await loop.create_connection(
                        _Connection, self._host, self._port, ssl=context
                    )
        except TimeoutError as exc:
            raise RedisTimeoutError(f"connecting to Redis timed out: {exc}") from exc
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
        self.connects += 1
        hello: list[bytes] = []
        if self._password is not None:
            auth: list[Arg] = ["AUTH"]
            if self._username:
                auth.append(self._username)
            hello.append(pack(*auth, self._password))
        if self._db:
            hello.append(pack("SELECT", self._db))
        futures = []
        for payload in hello:
            future: asyncio.Future[Any] = loop.create_future()
            conn.send(payload, future)
            futures.append(future)
        try:
            async with asyncio.timeout(self._connect_timeout):
                replies = [await f for f in futures]
        except TimeoutError as exc:
            conn.fail(RedisTimeoutError("Redis did not answer AUTH/SELECT"))
            raise RedisTimeoutError("Redis did not answer AUTH/SELECT") from exc
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                conn.fail(RedisConnectionError("connection set-up refused"))
                raise _error(reply)
        return conn
