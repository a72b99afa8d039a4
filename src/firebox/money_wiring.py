"""Builds the billing and limits slices of one process and connects them.

``billing`` and ``limits`` never import each other; this is the one place
that knows both. Billing announces money changes to a ``MoneyFanout``; the
spend guard (to drop its cached limit) and suspension (to re-evaluate the
account's reasons) listen. Limits reads money through billing's
``MoneySource`` methods. Accounts announce new accounts and rate-limit
changes through ``AccountEvents``. Every change of an account's admission
state is announced to the other replicas (``limits/changes.py``), which drop
their cached view of it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from firebox.accounts.principal import Principal
from firebox.billing.ingest import UsageIngest
from firebox.billing.journal import Journal, Recovered
from firebox.billing.ledger import Ledger
from firebox.billing.overrides import DbOverrides
from firebox.billing.payments.provider import PaymentProvider
from firebox.billing.payments.stripe_provider import StripePaymentProvider
from firebox.billing.payments.test_provider import TestPaymentProvider
from firebox.billing.period import PeriodCloseJob
from firebox.billing.price_book import PriceBook
from firebox.billing.pricing import Pricer
from firebox.billing.service import BillingService
from firebox.clock import Clock
from firebox.inference.admission import Admission, OpenAdmission
from firebox.limits.admission import Enforcement
from firebox.limits.audit import AuditLogService
from firebox.limits.changes import (
    TRUSTED_PLAN_TTL_S,
    TRUSTED_SUSPENSION_TTL_S,
    AccountChanges,
    LocalChanges,
    RedisChanges,
)
from firebox.limits.hooks import SuspensionHooks
from firebox.limits.plans import PlanLimits
from firebox.limits.quotas import QuotaService
from firebox.limits.rate_limiter import InProcessRateLimiter, RateLimiter, RedisRateLimiter
from firebox.limits.redis_spend_guard import RedisSpendGuard
from firebox.limits.spend_guard import InProcessSpendGuard, SpendGuard
from firebox.limits.suspension import SuspensionService
from firebox.settings import Settings
from firebox.store.database import Database
from firebox.telemetry.metrics import Metrics

log = logging.getLogger("firebox.wiring")


class MoneyFanout:
    """A ``MoneyListener`` that passes each change to every subscriber, never raising."""

    def __init__(self) -> None:
        self._subscribers: list[Callable[[str], None]] = []
        self._lock = threading.Lock()

    def subscribe(self, callback: Callable[[str], None]) -> None:
        with self._lock:
            self._subscribers.append(callback)

    def money_changed(self, account_id: str) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(account_id)
            except Exception:  # one listener failing must not hide the change from the rest
                log.exception("money listener failed for account %s", account_id)


class HoldRecovery:
    """Closes the holds of requests a dead process left in flight, on the app's loop.

    The ingest's writer thread reports them (``submit``); admission's
    ``recover`` is async (the Redis guard's connection lives on the event
    loop), so they are kept until the app's lifespan ``start``s this (the
    first replay runs before uvicorn does) and then run as tasks there.
    """

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[Recovered] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = 0  # holds handed to admission.recover

    def submit(self, entries: list[Recovered]) -> None:
        """Any thread: close the holds of ``entries`` (now, or once ``start`` ran)."""
        with self._lock:
            loop = self._loop
            if loop is None:
                self._pending.extend(entries)
                return
        try:
            loop.call_soon_threadsafe(self._spawn, entries)
        except RuntimeError:  # the loop closed (shutting down): the reservations expire
            log.warning("%d in-flight hold(s) left to expire at shutdown", len(entries))

    def start(self) -> None:
        """On the event loop: run what was submitted so far, and all that comes later."""
        with self._lock:
            self._loop = asyncio.get_running_loop()
            pending, self._pending = self._pending, []
        if pending:
            self._spawn(pending)

    def _spawn(self, entries: list[Recovered]) -> None:
        task = asyncio.get_running_loop().create_task(self._close(entries))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close(self, entries: list[Recovered]) -> None:
        for entry in entries:
            if entry.hold is not None:
                await self._admission.recover(entry.hold, entry.usage)
                self.closed += 1

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=10)


class AccountEvents:
    """The accounts slice's listener: opens the books, routes the operator's rate limit."""

    def __init__(self, billing: BillingService, plans: PlanLimits) -> None:
        self._billing = billing
        self._plans = plans

    def account_created(self, account_id: str) -> None:
        self._billing.open_account(account_id)

    def rate_limit_changed(
        self, principal: Principal, account_id: str, requests_per_minute: int | None
    ) -> None:
        self._plans.set_account_limits(
            principal, account_id, requests_per_minute=requests_per_minute
        )

    def plan_changed(self, account_id: str) -> None:
        self._plans.changed(account_id)  # the plan sets the default rate limit and quotas


@dataclass
class MoneyServices:
    """Billing and limits of one process."""

    billing: BillingService
    pricer: Pricer
    overrides: DbOverrides
    ingest: UsageIngest
    period_job: PeriodCloseJob
    fanout: MoneyFanout
    plans: PlanLimits
    rate_limiter: RateLimiter
    spend_guard: SpendGuard
    suspension: SuspensionService
    hooks: SuspensionHooks
    audit: AuditLogService
    quotas: QuotaService
    admission: Admission
    account_events: AccountEvents
    changes: AccountChanges
    holds: HoldRecovery

    async def aclose(self) -> None:
        await self.holds.aclose()  # before the guard closes its connection
        # The guard first: its deferred settlements still count generated tokens.
        for closable in (self.spend_guard, self.rate_limiter):
            aclose = getattr(closable, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    log.exception("closing %s failed", type(closable).__name__)

    def close(self) -> None:
        """Stop the period job, drain the usage queue into the ledger, leave the change channel."""
        self.period_job.stop()
        self.ingest.close()
        self.changes.close()


def payment_provider(settings: Settings) -> PaymentProvider:
    if settings.payment_provider == "stripe":
        assert settings.stripe_api_key  # the settings validator insists on it
        return StripePaymentProvider(settings.stripe_api_key)
    return TestPaymentProvider()


def build_money(settings: Settings, db: Database, clock: Clock, metrics: Metrics) -> MoneyServices:
    """Billing, the ledger writer and enforcement for ``settings``."""
    book = PriceBook.load(settings.price_book_file)
    # Other replicas change overrides too: reload within a minute.
    overrides = DbOverrides(db, clock, max_age=timedelta(seconds=60))
    pricer = Pricer(book, overrides, clock=clock)
    fanout = MoneyFanout()
    billing = BillingService(
        db,
        clock,
        pricer,
        payment_provider(settings),
        fanout,
        period_grace=timedelta(seconds=settings.period_close_grace_s),
    )
    ledger = Ledger(db, clock, fanout, book=book)
    spool_dir = settings.resolved_spool_dir()
    ingest = UsageIngest(
        pricer,
        ledger,
        spool_dir,
        batch_size=settings.ledger_batch_size,
        max_delay_s=settings.ledger_max_delay_s,
        journal=Journal(spool_dir, clock, interval_s=settings.inflight_journal_interval_s),
    )
    period_job = PeriodCloseJob(
        billing.closer,
        billing.invoices,
        clock,
        interval_s=settings.period_close_interval_s,
        extra=billing.housekeeping,  # credit expiry, purchases left pending by a crash
    )
    changes: AccountChanges = (
        RedisChanges(settings.redis_url)
        if settings.redis_url
        else LocalChanges(only_replica=settings.replicas <= 1)
    )
    plans = PlanLimits(
        db,
        clock,
        trusted=lambda: changes.connected,
        trusted_ttl_s=TRUSTED_PLAN_TTL_S,
        on_change=changes.publish,
    )
    local_limiter = InProcessRateLimiter(clock)
    rate_limiter: RateLimiter = local_limiter
    spend_guard: SpendGuard
    if settings.redis_url:
        rate_limiter = RedisRateLimiter(
            settings.redis_url,
            clock,
            local_limiter,
            settings.replicas,
            on_fallback=metrics.limits_redis_fallbacks.inc,
        )
        spend_guard = RedisSpendGuard(settings.redis_url, billing, clock)
    else:
        spend_guard = InProcessSpendGuard(billing, clock)
    hooks = SuspensionHooks()
    suspension = SuspensionService(
        db,
        clock,
        billing,
        hooks,
        committed=spend_guard.committed,
        trusted=lambda: changes.connected,
        trusted_ttl_s=TRUSTED_SUSPENSION_TTL_S,
        on_change=changes.publish,
    )
    fanout.subscribe(spend_guard.money_changed)
    fanout.subscribe(suspension.money_changed)
    fanout.subscribe(changes.publish)  # the other replicas drop their view of the account
    changes.subscribe(_forget(plans, suspension, spend_guard))
    if isinstance(changes, RedisChanges):
        changes.on_lost = _forget_all(plans, suspension)
    metrics.ledger_queue_depth.set_function(lambda: ingest.queue_depth)
    metrics.ledger_records_written.set_function(lambda: ingest.written)
    admission: Admission = OpenAdmission()
    if settings.enforcement:
        admission = Enforcement(
            plans,
            rate_limiter,
            spend_guard,
            suspension,
            billing,
            clock,
            metrics=metrics,
            spend_wait_s=settings.spend_wait_s,
        )
    holds = HoldRecovery(admission)
    ingest.on_recovered = holds.submit
    return MoneyServices(
        billing=billing,
        pricer=pricer,
        overrides=overrides,
        ingest=ingest,
        period_job=period_job,
        fanout=fanout,
        plans=plans,
        rate_limiter=rate_limiter,
        spend_guard=spend_guard,
        suspension=suspension,
        hooks=hooks,
        audit=AuditLogService(db),
        quotas=QuotaService(db, clock, plans, rate_limiter),
        admission=admission,
        account_events=AccountEvents(billing, plans),
        changes=changes,
        holds=holds,
    )


def _forget(
    plans: PlanLimits, suspension: SuspensionService, guard: SpendGuard
) -> Callable[[str], None]:
    """What a replica does when another one changed an account: drop its cached view."""

    def forget(account_id: str) -> None:
        plans.invalidate(account_id)
        suspension.forget(account_id)
        guard.money_changed(account_id)  # drops the money snapshot only

    return forget


def _forget_all(plans: PlanLimits, suspension: SuspensionService) -> Callable[[], None]:
    def forget_all() -> None:
        plans.forget_all()
        suspension.forget_all()

    return forget_all
