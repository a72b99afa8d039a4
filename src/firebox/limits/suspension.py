"""Suspension (SPEC §4): an account's reasons, kept in the database and cached per replica.

An account is suspended while it has at least one reason. Each change of
its reasons is one transaction: the ``suspension_reasons`` rows, the
account's ``suspend_state`` column and an audit row per reason added or
lifted. The hooks run after the commit, once per flip of the suspended flag.

Billing calls ``money_changed`` after every change of money (purchase,
payment method, invoice, limit, usage batch, period roll); the service then
re-reads the account's money position and raises or lifts the money reasons
so that suspension lifts by itself as soon as every reason is gone.

A money reason records the cap in force when raised and lifts only once that
cap is beaten (``suspension_repository.money_changes``), never because usage
moved: a spend refusal suspends although usage may stay just under the cap
(the request's worst case did not fit). ``MONTHLY_SPEND_LIMIT_EXCEEDED``
lifts when its month is over (also lazily, on the first read in the new
month) or the limit rises; ``CREDIT_DEPLETED`` when a payment method is added
or credits are bought or granted. ``FAILED_PAYMENTS`` is there exactly while
a payment has failed. Only the operator raises or lifts ``BLOCKED_BY_ABUSE_RULE``.

Admission reads ``reasons_cached`` (no I/O) on the hot path, else ``reasons_async``:
the database in a worker thread (one indexed query, once per ``cache_ttl_s``).
An entry in use is re-read in the background before it expires
(``refresh_ahead``), so a busy account's requests never wait for that query.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError, OperationalError

from firebox.accounts.principal import Principal
from firebox.clock import Clock
from firebox.errors import NotFound
from firebox.limits import suspension_repository as repo
from firebox.limits.hooks import Reason, SuspensionHooks
from firebox.limits.models import SuspensionReasonRow
from firebox.limits.ports import MoneySource
from firebox.limits.refresh_ahead import RefreshAhead
from firebox.limits.spend_guard import ledger_usage
from firebox.limits.suspension_repository import (
    CapRecord,
    cap_beaten,
    cap_of,
    decode_detail,
    encode_detail,
)
from firebox.money_state import period_of
from firebox.store.database import Database
from firebox.wire import WireModel

log = logging.getLogger(__name__)

UNSUSPENDED = "UNSUSPENDED"
_ORDER = {reason.value: i for i, reason in enumerate(Reason)}
_MONEY = (Reason.MONTHLY_SPEND_LIMIT_EXCEEDED, Reason.CREDIT_DEPLETED)


@dataclass(frozen=True, slots=True)
class ActiveReason:
    """One reason an account is suspended for."""

    reason: str
    detail: str
    period: str | None  # the month of a MONTHLY_SPEND_LIMIT_EXCEEDED
    since: datetime
    cap: CapRecord | None = None  # money reasons: the cap a change must beat to lift it


def ordered(reasons: Iterable[str]) -> tuple[str, ...]:
    """Reasons most important first (the order of ``Reason``)."""
    return tuple(sorted(reasons, key=lambda r: (_ORDER.get(r, len(_ORDER)), r)))


def suspend_state(reasons: tuple[str, ...]) -> str:
    """The ``accounts.suspend_state`` value: its first reason, or UNSUSPENDED.

    The column holds a reason rather than a bare "SUSPENDED" because the
    account's wire model (``suspendState``, as the Fireworks SDK has it)
    accepts exactly UNSUSPENDED or a reason name.
    """
    return reasons[0] if reasons else UNSUSPENDED


def actor_of(principal: Principal) -> str:
    return f"accounts/{principal.account_id}/users/{principal.user_id}"


class SuspensionReasonView(WireModel):
    reason: str
    detail: str
    period: str | None
    since: datetime


class AccountSuspension(WireModel):
    """An account's suspension as the API shows it."""

    name: str
    suspend_state: str
    reasons: list[SuspensionReasonView]


@dataclass
class _Cached:
    reasons: tuple[ActiveReason, ...]
    fetched: datetime


class SuspensionService:
    """Raises and lifts suspension reasons; see the module docstring."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        money: MoneySource,
        hooks: SuspensionHooks,
        cache_ttl_s: float = 1.0,
        committed: Callable[[str], int | None] | None = None,
        *,
        trusted: Callable[[], bool] | None = None,
        trusted_ttl_s: float = 1.0,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._money = money
        self._hooks = hooks
        self._ttl = timedelta(seconds=cache_ttl_s)
        # While ``trusted()`` (every change made elsewhere is announced, see
        # ``limits/changes.py``), entries may live ``trusted_ttl_s``.
        self._trusted = trusted
        self._trusted_ttl = timedelta(seconds=trusted_ttl_s)
        self._on_change = on_change
        self._committed = committed
        self._cache: dict[str, _Cached] = {}
        self._generations: dict[str, int] = {}  # bumped by every change stored
        self._epoch = 0  # bumped by forget_all
        self._lock = threading.Lock()
        self.refresh = RefreshAhead("suspension reasons")

    # -- reading -----------------------------------------------------------

    def reasons_cached(self, account_id: str) -> tuple[str, ...] | None:
        """The account's reasons if this replica knows them fresh; never does I/O."""
        active = self._fresh(account_id)
        return None if active is None else tuple(a.reason for a in active)

    def reasons(self, account_id: str) -> tuple[str, ...]:
        """The account's reasons, most important first; reads the database on a miss."""
        return tuple(a.reason for a in self.active(account_id))

    async def reasons_async(self, account_id: str) -> tuple[str, ...]:
        """``reasons`` for the event loop: cached, or read in a worker thread."""
        cached = self.reasons_cached(account_id)
        if cached is not None:
            return cached
        return await asyncio.to_thread(self.reasons, account_id)

    def active(self, account_id: str) -> tuple[ActiveReason, ...]:
        """The account's reasons with their detail; lifts a monthly reason of a past month."""
        cached = self._fresh(account_id)
        if cached is not None:
            return cached
        return self._load(account_id)

    def _load(self, account_id: str) -> tuple[ActiveReason, ...]:
        """Read the reasons (lifting a past month's) and cache them unless a change came first."""
        with self._lock:
            generation = (self._epoch, self._generations.get(account_id, 0))
        fetched = self._clock.now()
        active = self._read(account_id)
        monthly = _find(active, Reason.MONTHLY_SPEND_LIMIT_EXCEEDED)
        if monthly is not None and repo.past(monthly.period, self._month()):
            outcome = self._apply(
                account_id,
                removes=[Reason.MONTHLY_SPEND_LIMIT_EXCEEDED],
                actor="system",
                note="the month rolled over",
            )
            if outcome is not None:
                return outcome[0]
        with self._lock:
            if (self._epoch, self._generations.get(account_id, 0)) == generation:
                self._cache[account_id] = _Cached(active, fetched)
        return active

    # -- changing ----------------------------------------------------------

    def raise_reason(
        self,
        account_id: str,
        reason: str,
        detail: str = "",
        period: str | None = None,
        actor: str = "system",
        cap_micros: int | None = None,
    ) -> bool:
        """Add ``reason`` (idempotent); True when it was not there already.

        A money reason records the cap in force now, read from the ledger.
        ``cap_micros`` is the cap a spend refusal was judged against (the guard's
        snapshot may be seconds old): when the ledger's cap is already higher
        (limit raised, credits bought) the refusal was stale: nothing is raised.
        """
        if reason == Reason.MONTHLY_SPEND_LIMIT_EXCEEDED and period is None:
            period = self._month()
        cached = self._fresh(account_id)
        if cached is not None:
            present = _find(cached, reason)
            if present is not None and present.period == period:
                return False  # the hot path: admission refusing again, no write
        cap = None
        if reason in _MONEY:
            state = self._money.spend_state(account_id)
            cap = cap_of(reason, state)
            judged = CapRecord(cap.period, cap_micros, cap_micros, cap_micros)
            if cap_micros is not None and cap_beaten(reason, judged, state):
                log.info("not suspending %s for %s: the cap rose since", account_id, reason)
                return False
        outcome = self._apply(account_id, adds={reason: (detail, period, cap)}, actor=actor)
        return outcome is not None and outcome[1]

    def lift(self, account_id: str, reason: str, actor: str = "system") -> bool:
        """Remove ``reason`` (idempotent); True when it was there."""
        outcome = self._apply(account_id, removes=[reason], actor=actor)
        return outcome is not None and outcome[1]

    def money_changed(self, account_id: str) -> None:
        """Re-evaluate the money reasons from the ledger (billing calls this after commits)."""
        try:
            self._reevaluate(account_id)
        except Exception:
            log.exception("re-evaluating the suspension of %s failed", account_id)

    # -- operator ------------------------------------------------------------

    def block(self, principal: Principal, account_id: str, detail: str) -> AccountSuspension:
        """Suspend an account for abuse (operator only); only ``unblock`` lifts it."""
        principal.require_operator()
        self._require_account(account_id)
        self.raise_reason(
            account_id, Reason.BLOCKED_BY_ABUSE_RULE, detail, actor=actor_of(principal)
        )
        return self.view(account_id)

    def unblock(self, principal: Principal, account_id: str) -> AccountSuspension:
        principal.require_operator()
        self._require_account(account_id)
        self.lift(account_id, Reason.BLOCKED_BY_ABUSE_RULE, actor=actor_of(principal))
        return self.view(account_id)

    def view(self, account_id: str) -> AccountSuspension:
        active = self.active(account_id)
        return AccountSuspension(
            name=f"accounts/{account_id}",
            suspend_state=suspend_state(tuple(a.reason for a in active)),
            reasons=[
                SuspensionReasonView(
                    reason=a.reason, detail=a.detail, period=a.period, since=a.since
                )
                for a in active
            ],
        )

    # -- internals -----------------------------------------------------------

    def _reevaluate(self, account_id: str) -> None:
        state = self._money.spend_state(account_id)
        active = self._read(account_id)
        committed = ledger_usage(state, self._month())
        guard = self._committed(account_id) if self._committed is not None else None
        if guard is not None:
            committed = max(committed, guard)
        present = {a.reason: (a.period, a.cap) for a in active}
        adds, removes, replace = repo.money_changes(state, present, self._month(), committed)
        if adds or removes:
            self._apply(account_id, adds=adds, removes=removes, replace=replace, actor="system")
        else:
            self._store(account_id, active)

    def _apply(
        self,
        account_id: str,
        *,
        adds: repo.Adds | None = None,
        removes: Iterable[str] = (),
        replace: Iterable[str] = (),
        actor: str,
        note: str = "",
    ) -> tuple[tuple[ActiveReason, ...], bool] | None:
        """Make the changes in one transaction (retried when a concurrent writer won).

        Returns the reasons after it and whether anything changed; None when
        the account does not exist.
        """
        for attempt in range(3):
            try:
                return self._apply_once(
                    account_id,
                    adds=adds or {},
                    removes=removes,
                    replace=frozenset(replace),
                    actor=actor,
                    note=note,
                )
            except (IntegrityError, OperationalError):
                if attempt == 2:
                    raise
                log.info("suspension change of %s raced another writer; retrying", account_id)
        return None

    def _apply_once(
        self,
        account_id: str,
        *,
        adds: repo.Adds,
        removes: Iterable[str],
        replace: frozenset[str],
        actor: str,
        note: str,
    ) -> tuple[tuple[ActiveReason, ...], bool] | None:
        now = self._clock.now()
        with self._db.transaction() as session:
            account = repo.lock_account(session, account_id)
            if account is None:
                return None
            rows = {row.reason: row for row in repo.list_reasons(session, account_id)}
            before = ordered(rows)
            audits: list[tuple[str, dict[str, Any]]] = []
            for reason, (detail, period, cap) in adds.items():
                row = rows.get(reason)
                if row is not None and row.period == period and reason not in replace:
                    continue
                was_empty = not rows
                if row is None:
                    row = SuspensionReasonRow(account_id=account_id, reason=reason, since=now)
                    session.add(row)
                    rows[reason] = row
                row.detail, row.period, row.since = encode_detail(detail, cap), period, now
                action = "SUSPENDED" if was_empty else "REASON_ADDED"
                fields: dict[str, Any] = {"reason": reason, "detail": detail, "period": period}
                if cap is not None:
                    fields["cap"] = cap.fields()
                audits.append((action, fields))
            for reason in removes:
                if rows.pop(reason, None) is None:
                    continue
                repo.delete_reason(session, account_id, reason)
                action = "UNSUSPENDED" if not rows else "REASON_LIFTED"
                audits.append((action, {"reason": reason}))
            after = ordered(rows)
            for action, fields in audits:
                fields.update(reasonsBefore=list(before), reasonsAfter=list(after))
                if note:
                    fields["note"] = note
                repo.add_audit(
                    session,
                    account_id=account_id,
                    time=now,
                    actor=actor,
                    action=action,
                    detail=fields,
                )
            if before != after:
                account.suspend_state = suspend_state(after)
            active = _snapshot(rows, after)
        self._store(account_id, active)
        if before != after and self._on_change is not None:
            try:
                self._on_change(account_id)  # other replicas drop their cached reasons
            except Exception:
                log.exception("announcing the suspension change of %s failed", account_id)
        if bool(before) != bool(after):
            self._hooks.notify(account_id, bool(after), after)
        return active, bool(audits)

    def _read(self, account_id: str) -> tuple[ActiveReason, ...]:
        with self._db.transaction() as session:
            rows = {row.reason: row for row in repo.list_reasons(session, account_id)}
            return _snapshot(rows, ordered(rows))

    def _require_account(self, account_id: str) -> None:
        with self._db.transaction() as session:
            if not repo.account_exists(session, account_id):
                raise NotFound(f"Account {account_id!r} was not found.", code="account_not_found")

    def _fresh(self, account_id: str) -> tuple[ActiveReason, ...] | None:
        now = self._clock.now()
        with self._lock:
            cached = self._cache.get(account_id)
        if cached is None:
            return None
        age = now - cached.fetched
        ttl = self._trusted_ttl if self._trusted is not None and self._trusted() else self._ttl
        if age >= ttl:
            return None
        monthly = _find(cached.reasons, Reason.MONTHLY_SPEND_LIMIT_EXCEEDED)
        if monthly is not None and repo.past(monthly.period, period_of(now)):
            return None  # the month rolled over: the next read lifts it
        if self.refresh.due(age.total_seconds(), ttl.total_seconds()):
            self.refresh.start(account_id, lambda: self._load(account_id))
        return cached.reasons

    def forget(self, account_id: str) -> None:
        """Drop the cached reasons of ``account_id`` (changed on another replica)."""
        with self._lock:
            self._cache.pop(account_id, None)
            self._generations[account_id] = self._generations.get(account_id, 0) + 1

    def forget_all(self) -> None:
        """Drop every cached entry (changes from other replicas may have been missed)."""
        with self._lock:
            self._cache.clear()
            self._epoch += 1

    def _store(self, account_id: str, active: tuple[ActiveReason, ...]) -> None:
        """Cache reasons just written or checked (a re-read already running won't replace them)."""
        with self._lock:
            self._cache[account_id] = _Cached(active, self._clock.now())
            self._generations[account_id] = self._generations.get(account_id, 0) + 1

    def _month(self) -> str:
        return period_of(self._clock.now())


def _snapshot(
    rows: Mapping[str, SuspensionReasonRow], order: tuple[str, ...]
) -> tuple[ActiveReason, ...]:
    active = []
    for r in order:
        row = rows[r]
        detail, cap = decode_detail(row.detail)
        active.append(ActiveReason(r, detail, row.period, row.since, cap))
    return tuple(active)


def _find(active: Iterable[ActiveReason], reason: str) -> ActiveReason | None:
    return next((a for a in active if a.reason == reason), None)
