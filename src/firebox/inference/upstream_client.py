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

import logging
from collections.abc import AsyncGenerator
from typing import Any

import httpx
import orjson

from firebox.inference.upstream_errors import (
    Failure,
    failure_from_error_chunk,
    failure_from_status,
    failure_from_stream,
    failure_from_transport,
)
from firebox.inference.upstream_http import COMMON_HEADERS, Replica
from firebox.inference.upstream_pool import ReplicaPool
from firebox.inference.upstream_sse import MalformedStream, SseDecoder, decode_object

logger = logging.getLogger(__name__)


class _AttemptFailed(Exception):
    """Carries the classified failure of one attempt to the retry loop."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.error.message)
        self.failure = failure


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
        headers = COMMON_HEADERS + (
            f"authorization: Bearer {api_key}\r\n".encode() if api_key else b""
        )
        self._pool = pool
        self._timeout = timeout_s
        self._replicas = {url: Replica(url, headers, max_connections, connect) for url in pool.urls}

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
