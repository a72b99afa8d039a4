"""HTTP to the replicas of one OpenAI-compatible upstream: pooling, retries, errors.

One ``httpx.AsyncClient`` per replica, created once: HTTP/1.1 keep-alive
connections are reused across requests, so a request costs no TCP handshake.
Idle connections are dropped after 4 s, before the 5 s idle timeout of
uvicorn (which vLLM and SGLang run on) can close them under a new request.
Proxy environment variables are ignored: the upstream is a host the operator
named, usually on a private network.

A request goes to the replica the ``ReplicaPool`` picks; if that attempt
fails in a way another replica may not (see ``upstream_errors``) and nothing
has been passed on yet, it is tried on the next replica, each replica at
most once. Once a chunk was passed on, a failure ends the stream with an
error: replaying the request elsewhere would duplicate text the user already
has.

Closing a ``stream`` iterator early closes its HTTP response, and with it the
connection (a half-read HTTP/1.1 response cannot be reused), which is how the
upstream learns to abort the generation.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
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
from firebox.inference.upstream_pool import ReplicaPool
from firebox.inference.upstream_sse import MalformedStream, SseDecoder, decode_object

logger = logging.getLogger(__name__)

_KEEPALIVE_EXPIRY_S = 4.0
_JSON = {"content-type": "application/json", "accept": "application/json"}
_STREAM = {
    "content-type": "application/json",
    "accept": "text/event-stream",
    "accept-encoding": "identity",  # compression would hold chunks back
}


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
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=_KEEPALIVE_EXPIRY_S,
        )
        self._pool = pool
        self._clients = {
            url: httpx.AsyncClient(
                base_url=url,
                headers=headers,
                timeout=httpx.Timeout(timeout_s, connect=connect),
                limits=limits,
                trust_env=False,
            )
            for url in pool.urls
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
            sent = False
            try:
                client = self._clients[url]
                async with client.stream("POST", path, content=content, headers=_STREAM) as resp:
                    if resp.status_code != 200:
                        body_bytes = await resp.aread()
                        raise _AttemptFailed(
                            failure_from_status(resp.status_code, body_bytes, resp.headers)
                        )
                    async with aclosing(_sse_chunks(resp)) as chunks:
                        async for chunk in chunks:
                            sent = True
                            yield chunk
                self._pool.record_success(url)
                return
            except _AttemptFailed as exc:
                failure = exc.failure
            except httpx.HTTPError as exc:
                failure = failure_from_transport(exc)
            except MalformedStream as exc:
                failure = failure_from_stream(exc)
            finally:
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
            try:
                resp = await self._clients[url].post(path, content=content, headers=_JSON)
                if resp.status_code != 200:
                    raise _AttemptFailed(
                        failure_from_status(resp.status_code, resp.content, resp.headers)
                    )
                answer = decode_object(resp.content)
                self._pool.record_success(url)
                return answer
            except _AttemptFailed as exc:
                failure = exc.failure
            except httpx.HTTPError as exc:
                failure = failure_from_transport(exc)
            except MalformedStream as exc:
                failure = failure_from_stream(exc)
            finally:
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
        """Close every replica's connections."""
        for client in self._clients.values():
            await client.aclose()


async def _sse_chunks(response: httpx.Response) -> AsyncGenerator[dict[str, Any], None]:
    """The chunks of an SSE response, read to its end so the connection is reused."""
    decoder = SseDecoder()
    async for raw in response.aiter_bytes():
        for payload in decoder.feed(raw):
            yield _checked(payload)
    for payload in decoder.close():
        yield _checked(payload)


def _checked(payload: bytes) -> dict[str, Any]:
    chunk = decode_object(payload)
    failure = failure_from_error_chunk(chunk)
    if failure is not None:
        raise _AttemptFailed(failure)
    return chunk
