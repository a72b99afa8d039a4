"""The in-memory cache that makes key lookup on the request path O(1).

A hit costs one dict lookup under a lock; a miss costs one indexed query.
Entries live at most ``ttl_s`` and are dropped at once when the revocation
bus says so.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from firebox.accounts.principal import Principal


class KeyCache:
    """A bounded, TTL'd map from key hash to the principal it resolves to."""

    def __init__(self, ttl_s: float, max_entries: int = 100_000) -> None:
        self._ttl = ttl_s
        self._max = max_entries
        self._entries: OrderedDict[str, tuple[float, Principal]] = OrderedDict()
        self._lock = threading.Lock()
        self._epoch = 0  # bumped by every invalidation

    def epoch(self) -> int:
        """Read before a miss is loaded from the database; pass it to ``put``."""
        return self._epoch

    def get(self, key_hash: str) -> Principal | None:
        with self._lock:
            entry = self._entries.get(key_hash)
            if entry is None:
                return None
            if entry[0] < time.monotonic():
                del self._entries[key_hash]
                return None
            return entry[1]

    def put(self, principal: Principal, epoch: int) -> None:
        """Cache ``principal`` unless an invalidation happened since ``epoch`` was read.

        Without this check a lookup racing a revocation could cache the key
        it read just before the revocation committed.
        """
        if self._ttl <= 0:
            return
        with self._lock:
            if epoch != self._epoch:
                return
            self._entries[principal.key_hash] = (time.monotonic() + self._ttl, principal)
            self._entries.move_to_end(principal.key_hash)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def invalidate(self, key_hash: str) -> None:
        with self._lock:
            self._epoch += 1
            self._entries.pop(key_hash, None)

    def clear(self) -> None:
        with self._lock:
            self._epoch += 1
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
