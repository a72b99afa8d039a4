"""The usage ledger: writes priced usage and consumes credits, exactly once per request.

``Ledger.apply`` writes a batch in ONE transaction. It first locks the
billing row of every account in the batch, in sorted order (``SELECT … FOR
UPDATE`` on PostgreSQL; ``BEGIN IMMEDIATE`` takes SQLite's single write lock
up front), so everything below reads state no other writer can change until
commit. Under those locks it:

1. drops the records whose request id is already in ``usage_records`` (one
   indexed lookup; a replayed batch therefore changes nothing);
2. allocates credits to each new record, in the record's time order:
   earliest-expiring grant first (no expiry last; ties by creation, then
   id), skipping grants expired at the record's time, never below zero;
3. bulk-inserts the usage rows with ``credit_applied_micros`` already set
   (``billing/bulk.py``: ``COPY`` on PostgreSQL; a request id that still
   collides fails the transaction as retryable ``ledger_conflict`` instead
   of being skipped, since the credit allocation assumed it was written),
   writes ONE ``USE`` credit entry per grant drawn in the batch (the
   per-record split is each usage row's ``credit_applied_micros``), and
   updates each touched grant and each account's billing row once (one
   statement each on PostgreSQL).

A batch's ``USE`` entry for a grant has the reference
``use:{grant id}:{sha256 of the sorted request ids that drew on it}``:
deterministic, and unique because a request id is written only once, so
no two committed batches draw on a grant with the same set of ids. A replay
drops its known ids before allocating, so it writes no entry at all.

A record of a newer month than the billing row's rolls the row's period
(period usage restarts at that record); a record of an older month is
written (its month's invoice reads ``usage_records``) but leaves the current
period's usage alone. Any other writer of credit grants or balances must take
the same billing-row lock first.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from firebox.accounts.models import AccountRow
from firebox.billing.bulk import draw_grants, existing, insert_all, move_accounts
from firebox.billing.events import MoneyListener
from firebox.billing.models import (
    BillingAccountRow,
    CreditEntryRow,
    CreditGrantRow,
    UsageRecordRow,
)
from firebox.billing.price_book import PriceBook
from firebox.billing.pricing import PricedUsage
from firebox.billing.spend import effective_limit_micros
from firebox.clock import Clock
from firebox.store.database import Database

log = logging.getLogger(__name__)

USAGE = cast(Table, UsageRecordRow.__table__)
ENTRIES = cast(Table, CreditEntryRow.__table__)
GRANTS = cast(Table, CreditGrantRow.__table__)
BILLING = cast(Table, BillingAccountRow.__table__)
USAGE_COLUMNS = (
    "request_id",
    "account_id",
    "time",
    "period",
    "kind",
    "model",
    "base_model",
    "deployment",
    "prompt_tokens",
    "cached_prompt_tokens",
    "completion_tokens",
    "images",
    "steps",
    "gpu_type",
    "gpu_milliseconds",
    "training_tokens",
    "price_version",
    "unit_price_micros",
    "cached_unit_price_micros",
    "amount_micros",
    "credit_applied_micros",
    "outcome",
)
ENTRY_COLUMNS = ("account_id", "grant_id", "kind", "amount_micros", "reference", "time")


def use_reference(grant_id: str, request_ids: Sequence[str]) -> str:
    """The idempotency key of the ``USE`` entry of the records ``request_ids`` on ``grant_id``."""
    digest = hashlib.sha256("\n".join(sorted(request_ids)).encode()).hexdigest()
    return f"use:{grant_id}:{digest}"


@dataclass
class _Grant:
    id: str
    remaining: int
    expire_time: datetime | None
    used: int = 0
    request_ids: list[str] = field(default_factory=list)
    last_time: datetime | None = None


@dataclass
class _Account:
    row: BillingAccountRow
    period: str
    usage: int
    balance: int
    grants: list[_Grant]
    applied: int = 0


class Ledger:
    """Writes priced usage to the ledger; see the module docstring for the guarantees."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        listener: MoneyListener,
        book: PriceBook | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._listener = listener
        self._book = book or PriceBook.load()
        self._insert: Any = sqlite.insert if db.is_sqlite else postgresql.insert
        self.dropped_unknown_accounts = 0  # records of accounts that no longer exist

    def apply(self, batch: Sequence[PricedUsage]) -> int:
        """Write ``batch`` in one transaction; return how many records were new."""
        unique: dict[str, PricedUsage] = {}
        for priced in batch:
            unique.setdefault(priced.record.request_id, priced)
        if not unique:
            return 0
        with self._db.transaction() as session:
            if self._db.is_sqlite:
                session.connection().exec_driver_sql("BEGIN IMMEDIATE")
            written, notify = self._apply(session, list(unique.values()))
        for account_id in sorted(notify):
            try:
                self._listener.money_changed(account_id)
            except Exception:  # a listener failure must not undo or repeat a commit
                log.exception("money_changed listener failed for %s", account_id)
        return written

    def _apply(self, session: Session, batch: list[PricedUsage]) -> tuple[int, set[str]]:
        account_ids = sorted({p.record.account_id for p in batch})
        accounts = self._lock_accounts(session, account_ids, batch)
        fresh = self._new_records(session, batch, accounts)
        if not fresh:
            return 0, set()
        fresh.sort(key=lambda p: (p.record.account_id, p.record.time, p.record.request_id))
        before = {a: (s.usage, s.balance, s.period) for a, s in accounts.items()}
        rows = self._allocate(fresh, accounts)
        insert_all(session, USAGE, USAGE_COLUMNS, rows, sqlite=self._db.is_sqlite)
        entries = _use_entries(accounts)
        insert_all(session, ENTRIES, ENTRY_COLUMNS, entries, sqlite=self._db.is_sqlite)
        self._write_balances(session, accounts)
        return len(rows), self._changed(accounts, before)

    def _lock_accounts(
        self, session: Session, account_ids: list[str], batch: list[PricedUsage]
    ) -> dict[str, _Account]:
        rows = self._select_billing(session, account_ids)
        missing = [a for a in account_ids if a not in rows]
        if missing:
            existing = set(session.scalars(select(AccountRow.id).where(AccountRow.id.in_(missing))))
            now = self._clock.now()
            first_period: dict[str, str] = {}
            for priced in batch:
                known = first_period.get(priced.record.account_id)
                if known is None or priced.period < known:
                    first_period[priced.record.account_id] = priced.period
            values = [
                {
                    "account_id": a,
                    "period": first_period[a],
                    "period_usage_micros": 0,
                    "credit_balance_micros": 0,
                    "historical_spend_micros": 0,
                    "tier": 1,
                    "unlimited": False,
                    "deployment_discount_bps": 0,
                    "failed_invoices": 0,
                    "create_time": now,
                    "update_time": now,
                }
                for a in missing
                if a in existing
            ]
            if values:
                session.execute(
                    self._insert(BILLING).on_conflict_do_nothing(index_elements=["account_id"]),
                    values,
                )
                rows.update(self._select_billing(session, [str(v["account_id"]) for v in values]))
        grants = self._select_grants(session, sorted(rows))
        return {
            a: _Account(
                row=row,
                period=row.period,
                usage=int(row.period_usage_micros),
                balance=int(row.credit_balance_micros),
                grants=grants.get(a, []),
            )
            for a, row in rows.items()
        }

    def _select_billing(self, session: Session, ids: list[str]) -> dict[str, BillingAccountRow]:
        query = (
            select(BillingAccountRow)
            .where(BillingAccountRow.account_id.in_(ids))
            .order_by(BillingAccountRow.account_id)
            .execution_options(populate_existing=True)
        )
        if not self._db.is_sqlite:
            query = query.with_for_update()
        return {row.account_id: row for row in session.scalars(query)}

    def _select_grants(self, session: Session, ids: list[str]) -> dict[str, list[_Grant]]:
        grant = GRANTS.c
        found: dict[str, list[_Grant]] = {}
        if not ids:
            return found
        query = (
            select(grant.id, grant.account_id, grant.remaining_micros, grant.expire_time)
            .where(grant.account_id.in_(ids), grant.remaining_micros > 0)
            .order_by(
                grant.account_id,
                grant.expire_time.is_(None),
                grant.expire_time,
                grant.create_time,
                grant.id,
            )
        )
        if not self._db.is_sqlite:
            query = query.with_for_update()
        for grant_id, account_id, remaining, expire_time in session.execute(query):
            found.setdefault(account_id, []).append(_Grant(grant_id, int(remaining), expire_time))
        return found

    def _new_records(
        self, session: Session, batch: list[PricedUsage], accounts: dict[str, _Account]
    ) -> list[PricedUsage]:
        known = [p for p in batch if p.record.account_id in accounts]
        self.dropped_unknown_accounts += len(batch) - len(known)
        if len(known) != len(batch):
            log.warning("dropped %d usage records of unknown accounts", len(batch) - len(known))
        ids = [p.record.request_id for p in known]
        present = existing(session, USAGE.c.request_id, ids, sqlite=self._db.is_sqlite)
        return [p for p in known if p.record.request_id not in present]

    def _allocate(
        self, fresh: list[PricedUsage], accounts: dict[str, _Account]
    ) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        for priced in fresh:
            record = priced.record
            state = accounts[record.account_id]
            due = priced.amount_micros
            applied = 0
            for grant in state.grants:
                if due <= 0:
                    break
                left = grant.remaining - grant.used
                expired = grant.expire_time is not None and grant.expire_time <= record.time
                if left <= 0 or expired:
                    continue
                take = min(left, due)
                grant.used += take
                grant.request_ids.append(record.request_id)
                grant.last_time = record.time  # records come in time order per account
                due -= take
                applied += take
            state.balance -= applied
            state.applied += applied
            if priced.period > state.period:
                state.period, state.usage = priced.period, priced.amount_micros
            elif priced.period == state.period:
                state.usage += priced.amount_micros
            rows.append(_usage_row(priced, applied))
        return rows

    def _write_balances(self, session: Session, accounts: dict[str, _Account]) -> None:
        """Move each drawn grant and each changed billing row once (bulk.py)."""
        used = [(g.id, g.used) for s in accounts.values() for g in s.grants if g.used]
        draw_grants(session, GRANTS, used, sqlite=self._db.is_sqlite)
        changes = [
            (a, s.period, s.usage, s.applied)
            for a, s in accounts.items()
            if s.applied or (s.period, s.usage) != (s.row.period, s.row.period_usage_micros)
        ]
        move_accounts(session, BILLING, changes, self._clock.now(), sqlite=self._db.is_sqlite)

    def _changed(
        self, accounts: dict[str, _Account], before: dict[str, tuple[int, int, str]]
    ) -> set[str]:
        """Accounts whose credit ran out, whose usage reached the limit, or whose month rolled."""
        notify: set[str] = set()
        for account_id, state in accounts.items():
            usage, balance, period = before[account_id]
            if state.period != period:
                notify.add(account_id)
                continue
            if balance > 0 and state.balance == 0:
                notify.add(account_id)
            limit = effective_limit_micros(self._book, state.row)
            if limit is not None and usage < limit <= state.usage:
                notify.add(account_id)
        return notify


def _use_entries(accounts: dict[str, _Account]) -> list[tuple[Any, ...]]:
    """One ``USE`` entry per grant drawn in this batch (see the module docstring)."""
    return [
        (
            account_id,
            grant.id,
            "USE",
            -grant.used,
            use_reference(grant.id, grant.request_ids),
            grant.last_time,
        )
        for account_id, state in accounts.items()
        for grant in state.grants
        if grant.used
    ]


def _usage_row(priced: PricedUsage, credit_applied: int) -> tuple[Any, ...]:
    """A usage row's values in ``USAGE_COLUMNS`` order."""
    r = priced.record
    return (
        r.request_id,
        r.account_id,
        r.time,
        priced.period,
        r.kind,
        r.model,
        r.base_model,
        r.deployment,
        r.prompt_tokens,
        r.cached_prompt_tokens,
        r.completion_tokens,
        r.images,
        r.steps,
        r.gpu_type,
        r.gpu_milliseconds,
        r.training_tokens,
        priced.price_version,
        priced.unit_price_micros,
        priced.cached_unit_price_micros,
        priced.amount_micros,
        credit_applied,
        r.outcome,
    )
