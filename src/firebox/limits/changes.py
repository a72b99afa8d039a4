"""Tells every gateway replica that an account's admission state changed.

Admission reads three per-account caches on every request (suspension
reasons, plan limits, the money snapshot). A change made on one replica
drops that replica's entry at once; the others used to learn of it only
when their entry expired, so the entries had to be short-lived (1 s for
suspension) and every replica re-read every active account's state from the
database every second or so: with 1,000 active accounts, over 1,000 queries
a second per replica for suspension alone.

Now the replica that makes a change publishes the account id, and every
other replica drops its entries for that account before its next request
(Redis pub/sub, a few milliseconds). While the channel is up the entries can
live much longer (``TRUSTED_*_TTL_S``); the short lifetimes come back the
moment it is lost, and losing it also clears every entry, since a change may
have gone by unseen. Pub/sub is at most once, so the long lifetime is also
the bound on a message lost while the channel looked up.

``LocalChanges`` is the single-process form: every change is made in this
process, so local invalidation is already complete and nothing is sent.
With several replicas and no Redis it reports itself not connected, and the
short lifetimes stay.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Protocol

import redis

from firebox.redis_channel import listen

log = logging.getLogger(__name__)

CHANNEL = "firebox:accounts:changed"
TRUSTED_SUSPENSION_TTL_S = 15.0
TRUSTED_PLAN_TTL_S = 60.0

Listener = Callable[[str], None]


class AccountChanges(Protocol):
    """Carries "account X changed" from the replica that changed it to all the others."""

    @property
    def connected(self) -> bool:
        """Whether every change made elsewhere reaches this replica now."""
        ...

    def publish(self, account_id: str) -> None: ...

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener`` with each account changed on another replica."""
        ...

    def close(self) -> None: ...


class LocalChanges:
    """One process: nothing to send; ``connected`` says whether it is the only replica."""

    def __init__(self, only_replica: bool) -> None:
        self._only = only_replica

    @property
    def connected(self) -> bool:
        return self._only

    def publish(self, account_id: str) -> None:
        """Nothing to do: this process already dropped its own entries."""

    def subscribe(self, listener: Listener) -> None:
        """Nothing ever arrives from another process."""

    def close(self) -> None:
        pass


class RedisChanges:
    """Redis pub/sub: one channel, ``<origin>|<account id>`` messages; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        on_lost: Callable[[], None] | None = None,
        retry_s: float = 0.5,
    ) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._origin = uuid.uuid4().hex[:12]
        self._listeners: list[Listener] = []
        self.on_lost = on_lost  # called (from the channel's thread) when it breaks
        self._retry_s = retry_s
        self._subscribed = threading.Event()
        self._stop = threading.Event()
        self.published = 0
        self.received = 0
        self.lost = 0  # times the subscription broke (every entry was dropped then)
        self._thread = threading.Thread(target=self._run, name="account-changes", daemon=True)
        self._thread.start()
        self._subscribed.wait(timeout=5)

    @property
    def connected(self) -> bool:
        return self._subscribed.is_set()

    def publish(self, account_id: str) -> None:
        try:
            self._client.publish(CHANNEL, f"{self._origin}|{account_id}")
            self.published += 1
        except redis.RedisError as exc:
            log.warning(
                "could not announce a change of %s (%s): others wait out TTLs", account_id, exc
            )

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._client.close()

    def _lost(self) -> None:
        if self.on_lost is not None:
            try:
                self.on_lost()
            except Exception:
                log.exception("dropping cached admission state failed")

    def _deliver(self, data: bytes) -> None:
        origin, _, account_id = data.decode(errors="replace").partition("|")
        if origin == self._origin or not account_id:
            return
        self.received += 1
        for listener in list(self._listeners):
            try:
                listener(account_id)
            except Exception:
                log.exception("an account-change listener failed for %s", account_id)

    def _run(self) -> None:
        listen(
            self._client,
            CHANNEL,
            self._deliver,
            self._stop,
            on_subscribed=self._on_subscribed,
            on_error=self._on_error,
            retry_s=self._retry_s,
        )

    def _on_subscribed(self) -> None:
        self._subscribed.set()
        if self.lost:  # back after a loss: drop what was read while it was down
            self._lost()

    def _on_error(self, exc: redis.RedisError) -> None:
        if self._subscribed.is_set():
            self._subscribed.clear()
            self.lost += 1
            log.warning(
                "account-change channel lost (%s): cached admission state dropped, "
                "short cache lifetimes until it is back",
                exc,
            )
            self._lost()
