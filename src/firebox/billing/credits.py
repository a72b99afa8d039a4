"""Credit grants: the free $1, purchases, operator grants, and their expiry (SPEC §3).

A grant is a pot of prepaid money. Every movement of a grant is an
append-only ``credit_entries`` row: +amount when granted (GRANT), -use when
the ledger consumes it (USE, written by ``ledger.py``), -remaining when it
expires (EXPIRE). ``credit_grants.remaining_micros`` and
``billing_accounts.credit_balance_micros`` are caches of those sums, moved
in the same transaction as the entry, so the balance always equals the sum
of the account's entries.

Each grant has a unique ``reference`` that makes it idempotent: the free
grant is ``free:{account}`` (an account gets it exactly once, however often
``open_account`` runs), a purchase's is ``purchase:{payment id}``, an
operator grant's ``operator:{account}:{key}``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from firebox.billing import repository as repo
from firebox.billing.models import BillingAccountRow, CreditEntryRow, CreditGrantRow
from firebox.billing.money import format_usd
from firebox.billing.pricing import period_of
from firebox.errors import InvalidArgument

FREE_GRANT_MICROS = 1_000_000  # SPEC §3: a new account gets $1 of free credit
MAX_OPERATOR_GRANT_MICROS = 1_000_000 * 1_000_000  # $1,000,000 at once


def new_id(prefix: str) -> str:
    """A random resource id such as ``cg-3f2a9c0d1e4b5a69`` (URL-safe, lowercase)."""
    return f"{prefix}-{secrets.token_hex(8)}"


@dataclass(frozen=True, slots=True)
class CreditGrant:
    """One grant of credit and what is left of it."""

    id: str
    account_id: str
    source: str  # FREE | PURCHASE | OPERATOR
    amount_micros: int
    remaining_micros: int
    reason: str
    expire_time: datetime | None
    create_time: datetime

    @classmethod
    def of(cls, row: CreditGrantRow) -> CreditGrant:
        return cls(
            id=row.id,
            account_id=row.account_id,
            source=row.source,
            amount_micros=int(row.amount_micros),
            remaining_micros=int(row.remaining_micros),
            reason=row.reason,
            expire_time=row.expire_time,
            create_time=row.create_time,
        )


def free_reference(account_id: str) -> str:
    return f"free:{account_id}"


def ensure_account(session: Session, account_id: str, now: datetime) -> BillingAccountRow:
    """The account's billing row and its free grant, each created if missing.

    The ledger may have created the row first (usage written before any
    billing call); the free grant is then added here, still exactly once:
    its reference is unique. Two first calls racing both insert; one fails
    on a unique key and the caller retries it.
    """
    row = repo.get_billing(session, account_id)
    if row is None:
        row = BillingAccountRow(
            account_id=account_id,
            period=period_of(now),
            period_usage_micros=0,
            credit_balance_micros=0,
            historical_spend_micros=0,
            tier=1,
            custom_spend_limit_micros=None,
            unlimited=False,
            account_spend_limit_micros=None,
            deployment_discount_bps=0,
            failed_invoices=0,
            create_time=now,
            update_time=now,
        )
        session.add(row)
        session.flush()
    if repo.grant_by_reference(session, free_reference(account_id)) is None:
        add_grant(
            session,
            account_id,
            source="FREE",
            micros=FREE_GRANT_MICROS,
            reason="Free credit for new accounts",
            reference=free_reference(account_id),
            expire_time=None,
            now=now,
        )
    return row


def add_grant(
    session: Session,
    account_id: str,
    *,
    source: str,
    micros: int,
    reason: str,
    reference: str,
    expire_time: datetime | None,
    now: datetime,
) -> CreditGrantRow:
    """Insert a grant, its GRANT entry, and raise the cached balance (one transaction).

    The account's billing row is locked first, as every writer of its money
    does, so the ledger never consumes a half-written grant.
    """
    repo.lock_billing(session, account_id)
    grant = CreditGrantRow(
        id=new_id("cg"),
        account_id=account_id,
        source=source,
        amount_micros=micros,
        remaining_micros=micros,
        reason=reason,
        reference=reference,
        expire_time=expire_time,
        create_time=now,
    )
    session.add(grant)
    session.flush()
    session.add(
        CreditEntryRow(
            account_id=account_id,
            grant_id=grant.id,
            kind="GRANT",
            amount_micros=micros,
            reference=f"grant:{grant.id}",
            time=now,
        )
    )
    session.flush()
    repo.add_credit(session, account_id, micros, now)
    return grant


def validate_operator_grant(
    micros: int, reason: str, expire_time: datetime | None, now: datetime
) -> None:
    """Refuse an operator grant that is empty, huge, unexplained or already expired."""
    if micros <= 0 or micros > MAX_OPERATOR_GRANT_MICROS:
        raise InvalidArgument(
            f"Invalid grant amount {format_usd(micros)}: give more than 0.00 and at most "
            f"{format_usd(MAX_OPERATOR_GRANT_MICROS)} USD.",
            code="invalid_amount",
            param="amount",
        )
    if len(reason) > 256:
        raise InvalidArgument(
            "The reason is too long: use at most 256 characters.",
            code="invalid_reason",
            param="reason",
        )
    if expire_time is not None and (expire_time.tzinfo is None or expire_time <= now):
        raise InvalidArgument(
            "expireTime must be a time in the future, with a time zone (RFC 3339), or "
            "left out for credit that never expires.",
            code="invalid_expire_time",
            param="expireTime",
        )


def expire_grant(session: Session, account_id: str, grant_id: str, now: datetime) -> int:
    """Expire one grant if it is due and still holds credit; return the amount expired.

    Runs under the account's billing lock, re-reading the grant, so it never
    races the ledger consuming the same grant: whatever is left at that
    moment is written off with one EXPIRE entry (``expire:{grant}``).
    """
    repo.lock_billing(session, account_id)
    grant = repo.lock_grant(session, grant_id)
    if grant is None or grant.expire_time is None or grant.expire_time > now:
        return 0
    left = int(grant.remaining_micros)
    if left <= 0:
        return 0
    session.add(
        CreditEntryRow(
            account_id=account_id,
            grant_id=grant.id,
            kind="EXPIRE",
            amount_micros=-left,
            reference=f"expire:{grant.id}",
            time=grant.expire_time,
        )
    )
    grant.remaining_micros = 0
    session.flush()
    repo.add_credit(session, account_id, -left, now)
    return left
