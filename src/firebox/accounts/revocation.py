"""Broadcast of key revocations to every gateway replica's key cache.

Each replica keeps resolved keys in memory (see ``key_cache``). When a key is
deleted or its owner's role changes, the replica that did it publishes the
key's hash; every replica drops it from its cache before answering the next
request. In-process for the embedded mode; Redis pub/sub for many replicas.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Protocol

import redis

from firebox.redis_channel import listen

log = logging.getLogger("firebox.accounts.revocation")

CHANNEL = "firebox:api-keys:revoked"

Listener = Callable[[str], None]


class RevocationBus(Protocol):
    """Carries revoked key hashes to every replica."""

    def publish(self, key_hash: str) -> None: ...

    def subscribe(self, listener: Listener) -> None: ...

    def close(self) -> None: ...


class InProcessRevocationBus:
    """Delivers revocations to listeners in this process only (embedded mode)."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def publish(self, key_hash: str) -> None:
        for listener in list(self._listeners):
            listener(key_hash)

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def close(self) -> None:
        self._listeners.clear()


class RedisRevocationBus:
    """Redis pub/sub with acknowledgements: revocation is synchronous across replicas.

    ``publish`` sends ``{hash, nonce}`` on one channel; Redis answers with the
    number of subscribers that received it. Each replica's listener drops the
    key from its cache and then pushes an ack onto a per-nonce list, and
    ``publish`` waits (BLPOP) for that many acks, up to ``ack_timeout_s``. So
    when the ``:delete`` call returns, every live replica has already dropped
    the key: the next request, anywhere, is refused. A replica that does not
    ack in time is logged; the cache TTL bounds how long it may lag.
    """

    def __init__(
        self,
        url: str,
        *,
        on_disconnect: Callable[[], None] | None = None,
        ack_timeout_s: float = 2.0,
    ) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        self._client.ping()  # fail fast at start if Redis is unreachable
        self._listeners: list[Listener] = []
        self._on_disconnect = on_disconnect
        self._ack_timeout = ack_timeout_s
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="key-revocations", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=5)

    def publish(self, key_hash: str) -> None:
        for listener in list(self._listeners):
            listener(key_hash)
        nonce = uuid.uuid4().hex
        try:
            receivers = int(
                self._client.publish(CHANNEL, json.dumps({"hash": key_hash, "nonce": nonce}))
            )
            self._await_acks(nonce, receivers)
        except redis.RedisError:
            log.warning("could not broadcast a key revocation; other replicas rely on the TTL")

    def _await_acks(self, nonce: str, expected: int) -> None:
        deadline = time.monotonic() + self._ack_timeout
        ack_key = _ack_key(nonce)
        for _ in range(expected):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._client.blpop([ack_key], timeout=remaining) is None:
                log.warning(
                    "a replica did not confirm a key revocation within %ss", self._ack_timeout
                )
                return

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _deliver(self, data: bytes | str) -> None:
        try:
            message = json.loads(data)
            key_hash, nonce = str(message["hash"]), str(message["nonce"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed revocation message")
            return
        for listener in list(self._listeners):
            listener(key_hash)
        ack_key = _ack_key(nonce)
        pipe = self._client.pipeline()
        pipe.rpush(ack_key, "1")
        pipe.expire(ack_key, 60)
        pipe.execute()

    def _run(self) -> None:
        listen(
            self._client,
            CHANNEL,
            self._deliver,
            self._stop,
            on_subscribed=self._ready.set,
            on_error=self._channel_lost,
        )

    def _channel_lost(self, exc: redis.RedisError) -> None:
        log.warning("revocation channel lost; reconnecting")
        if self._on_disconnect is not None:
            self._on_disconnect()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._client.close()


def _ack_key(nonce: str) -> str:
    return f"firebox:api-keys:revoked:ack:{nonce}"
