"""Choosing a replica of an upstream model server for each request.

An upstream model often runs as several identical servers (replicas). The
pool sends each request to the replica with the fewest requests in flight —
generation times vary by orders of magnitude, so counting outstanding work
balances better than round robin — and breaks ties round robin so idle
replicas share the load evenly.

A replica that fails (connection refused, HTTP 5xx) is *ejected*: skipped for
a base period that doubles on each failure after readmission, up to a cap,
and is forgiven on its first success. Failures that arrive while a replica is
already ejected do not escalate the period: they are the other requests that
were in flight when it went down, not fresh evidence. When every replica is
ejected the pool still answers, with the one due back soonest, so an outage
of the whole pool costs one attempt per request rather than a refusal without
trying.

The pool does no I/O and reads time from an injectable monotonic clock, so
its rules are tested without sleeping.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

_MAX_DOUBLINGS = 32  # keeps 2**n finite; the cap is reached long before


@dataclass(slots=True)
class _Replica:
    url: str
    position: int
    in_flight: int = 0
    failures: int = 0  # consecutive, since the last success
    ejected_until: float = 0.0


class ReplicaPool:
    """Least-outstanding-requests balancing with ejection of failing replicas."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        base_ejection_s: float = 1.0,
        max_ejection_s: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError("an upstream needs at least one replica URL")
        if len(set(urls)) != len(urls):
            raise ValueError(f"replica URLs must be distinct: {list(urls)}")
        if base_ejection_s <= 0 or max_ejection_s < base_ejection_s:
            raise ValueError("need 0 < base_ejection_s <= max_ejection_s")
        self._replicas = [_Replica(url, i) for i, url in enumerate(urls)]
        self._by_url = {r.url: r for r in self._replicas}
        self._base = base_ejection_s
        self._max = max_ejection_s
        self._monotonic = monotonic
        self._cursor = 0  # round-robin position for breaking ties

    @property
    def urls(self) -> list[str]:
        """The replicas' base URLs, in configuration order."""
        return [r.url for r in self._replicas]

    def acquire(self, exclude: Collection[str] = ()) -> str | None:
        """Pick a replica not in ``exclude`` and count a request on it.

        Returns ``None`` when ``exclude`` covers every replica (each was
        tried). Every URL returned must be given back with ``release``.
        """
        candidates = [r for r in self._replicas if r.url not in exclude]
        if not candidates:
            return None
        now = self._monotonic()
        healthy = [r for r in candidates if r.ejected_until <= now]
        if healthy:
            least = min(r.in_flight for r in healthy)
            count = len(self._replicas)
            chosen = min(
                (r for r in healthy if r.in_flight == least),
                key=lambda r: (r.position - self._cursor) % count,
            )
            self._cursor = chosen.position + 1
        else:
            chosen = min(candidates, key=lambda r: r.ejected_until)
        chosen.in_flight += 1
        return chosen.url

    def release(self, url: str) -> None:
        """The request counted by ``acquire`` on ``url`` is over."""
        replica = self._by_url[url]
        replica.in_flight = max(0, replica.in_flight - 1)

    def record_success(self, url: str) -> None:
        """``url`` answered well: forget its failures and readmit it."""
        replica = self._by_url[url]
        if replica.failures:
            logger.info("upstream replica %s recovered", url)
        replica.failures = 0
        replica.ejected_until = 0.0

    def record_failure(self, url: str) -> None:
        """``url`` failed: eject it, for longer each time it fails again."""
        replica = self._by_url[url]
        now = self._monotonic()
        if replica.ejected_until > now:
            return  # already out: a request that was in flight when it went down
        replica.failures += 1
        doublings = min(replica.failures - 1, _MAX_DOUBLINGS)
        period = min(self._base * 2**doublings, self._max)
        replica.ejected_until = now + period
        logger.warning(
            "upstream replica %s ejected for %.1fs after %d consecutive failure(s)",
            url,
            period,
            replica.failures,
        )

    def in_flight(self, url: str) -> int:
        """Requests now outstanding on ``url``."""
        return self._by_url[url].in_flight

    def is_ejected(self, url: str) -> bool:
        """Whether ``url`` is skipped now while a healthy replica remains."""
        return self._by_url[url].ejected_until > self._monotonic()
