"""Per-account prices (enterprise custom pricing) and deployment discounts, in memory.

Pricing runs on the request path (``UsageIngest.record``) and must not query
the database per record, so ``DbOverrides`` loads the whole
``price_overrides`` table and every non-zero ``deployment_discount_bps`` in one
read, and answers from memory. Whoever writes either calls ``refresh()``
after the commit; ``max_age`` (optional) bounds how stale another replica's
copy may get. Lookups never wait for the database after the very first
load: a stale snapshot is still served while ONE background thread reloads
it, and a failed reload is logged and keeps the old snapshot (tried again
after ``max_age``), so pricing on the event loop neither blocks nor fails.

An override's ``target`` is a model name, a price class name, a GPU type
(on-demand deployments, per GPU-hour) or ``fine_tuning:<price class>``. The
override with the latest ``effective_from`` at or before the usage's time
applies; a model-name override wins over a class override.
"""

from __future__ import annotations

import bisect
import logging
import threading
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import select

from firebox.billing.models import BillingAccountRow, PriceOverrideRow
from firebox.clock import Clock
from firebox.store.database import Database

log = logging.getLogger(__name__)


class OverrideSource(Protocol):
    """Where the pricer finds an account's own prices and discounts."""

    def unit_price(
        self, account_id: str, model: str | None, price_class: str | None, at: datetime
    ) -> int | None:
        """The account's unit price (micro-USD) for ``model`` / ``price_class`` at ``at``."""
        ...

    def deployment_discount_bps(self, account_id: str) -> int:
        """The account's discount on on-demand deployment usage, in basis points."""
        ...


class NoOverrides:
    """No account has its own prices (tests, and pricing before any override exists)."""

    def unit_price(
        self, account_id: str, model: str | None, price_class: str | None, at: datetime
    ) -> int | None:
        return None

    def deployment_discount_bps(self, account_id: str) -> int:
        return 0


@dataclass
class _Timeline:
    """The overrides of one (account, target), ordered by ``effective_from``."""

    starts: list[datetime] = field(default_factory=list)
    prices: list[int] = field(default_factory=list)

    def at(self, when: datetime) -> int | None:
        index = bisect.bisect_right(self.starts, when) - 1
        return self.prices[index] if index >= 0 else None


@dataclass(frozen=True)
class _Snapshot:
    prices: dict[tuple[str, str], _Timeline]
    discounts: dict[str, int]
    loaded_at: datetime | None


class DbOverrides:
    """``OverrideSource`` over the database, cached; ``refresh()`` after each change."""

    def __init__(
        self, db: Database, clock: Clock | None = None, max_age: timedelta | None = None
    ) -> None:
        self._db = db
        self._clock = clock
        self._max_age = max_age
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()  # held while a background refresh runs
        self._snapshot: _Snapshot | None = None

    def refresh(self) -> None:
        """Reload every override and discount (one read of two small tables)."""
        prices: dict[tuple[str, str], _Timeline] = {}
        with self._db.transaction() as session:
            rows = session.execute(
                select(
                    PriceOverrideRow.account_id,
                    PriceOverrideRow.target,
                    PriceOverrideRow.effective_from,
                    PriceOverrideRow.unit_price_micros,
                ).order_by(PriceOverrideRow.effective_from)
            ).all()
            discount_rows = session.execute(
                select(
                    BillingAccountRow.account_id, BillingAccountRow.deployment_discount_bps
                ).where(BillingAccountRow.deployment_discount_bps != 0)
            ).all()
        for account_id, target, start, micros in rows:
            timeline = prices.setdefault((account_id, target), _Timeline())
            timeline.starts.append(start)
            timeline.prices.append(int(micros))
        discounts = {account_id: int(bps) for account_id, bps in discount_rows}
        loaded_at = self._clock.now() if self._clock is not None else None
        with self._lock:
            self._snapshot = _Snapshot(prices, discounts, loaded_at)

    def _current(self) -> _Snapshot:
        snapshot = self._snapshot
        stale = (
            snapshot is not None
            and self._max_age is not None
            and self._clock is not None
            and snapshot.loaded_at is not None
            and self._clock.now() - snapshot.loaded_at > self._max_age
        )
        if snapshot is None:
            self.refresh()  # the very first lookup of the process
            snapshot = self._snapshot
            assert snapshot is not None
        elif stale:
            self._refresh_in_background()
        return snapshot

    def _refresh_in_background(self) -> None:
        if not self._refreshing.acquire(blocking=False):
            return  # a refresh is already under way

        def run() -> None:
            try:
                self.refresh()
            except Exception:
                log.warning("price override refresh failed; serving the old ones", exc_info=True)
                with self._lock:  # try again after max_age, not on every lookup
                    if self._snapshot is not None and self._clock is not None:
                        self._snapshot = replace(self._snapshot, loaded_at=self._clock.now())
            finally:
                self._refreshing.release()

        threading.Thread(target=run, name="price-overrides-refresh", daemon=True).start()

    def unit_price(
        self, account_id: str, model: str | None, price_class: str | None, at: datetime
    ) -> int | None:
        snapshot = self._current()
        if not snapshot.prices:
            return None
        for target in (model, price_class):
            if target is None:
                continue
            timeline = snapshot.prices.get((account_id, target))
            if timeline is not None:
                price = timeline.at(at)
                if price is not None:
                    return price
        return None

    def deployment_discount_bps(self, account_id: str) -> int:
        return self._current().discounts.get(account_id, 0)
