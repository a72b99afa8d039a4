"""Queries of suspension and the audit log. Every function takes the caller's session.

A money reason's ``detail`` column holds JSON: the message shown to the
account and the cap in force when the reason was raised (``CapRecord``),
which a later change of money must beat to lift it. Other reasons, and rows
written before caps were recorded, hold the plain message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from firebox.accounts.models import AccountRow
from firebox.limits.hooks import Reason
from firebox.limits.models import AuditLogRow, SuspensionReasonRow
from firebox.limits.ports import SpendState
from firebox.limits.spend_guard import ledger_usage

DETAIL_MAX = 512  # the width of suspension_reasons.detail


@dataclass(frozen=True, slots=True)
class CapRecord:
    """The cap in force when a money reason was raised.

    ``MONTHLY_SPEND_LIMIT_EXCEEDED`` records the effective spend limit;
    ``CREDIT_DEPLETED`` records the credit cap (the month's usage plus the
    credit balance: usage moves money from one to the other, so only bought
    or granted credits raise it), the balance alone (what a later month's cap
    is compared with) and whether the account had a payment method.
    """

    period: str  # the month of the money position it was read from
    limit_micros: int | None = None
    credit_cap_micros: int | None = None
    credit_balance_micros: int | None = None
    payment_method: bool | None = None

    def fields(self) -> dict[str, Any]:
        """camelCase, without the fields this reason does not use (the audit log's form)."""
        named = {
            "period": self.period,
            "limitMicros": self.limit_micros,
            "creditCapMicros": self.credit_cap_micros,
            "creditBalanceMicros": self.credit_balance_micros,
            "paymentMethod": self.payment_method,
        }
        return {k: v for k, v in named.items() if v is not None}

    @classmethod
    def parse(cls, fields: Mapping[str, Any]) -> CapRecord | None:
        period = fields.get("period")
        if not isinstance(period, str):
            return None

        def number(key: str) -> int | None:
            value = fields.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        method = fields.get("paymentMethod")
        return cls(
            period=period,
            limit_micros=number("limitMicros"),
            credit_cap_micros=number("creditCapMicros"),
            credit_balance_micros=number("creditBalanceMicros"),
            payment_method=method if isinstance(method, bool) else None,
        )


def encode_detail(message: str, cap: CapRecord | None) -> str:
    """The ``detail`` column: the plain message, or JSON with the cap (fits the column)."""
    if cap is None:
        return message[:DETAIL_MAX]
    fields = cap.fields()
    text = message[:DETAIL_MAX]
    while True:  # escapes can lengthen the message: shorten until the JSON fits
        encoded = json.dumps({"message": text, "cap": fields}, ensure_ascii=False)
        if len(encoded) <= DETAIL_MAX or not text:
            return encoded
        text = text[: len(text) - (len(encoded) - DETAIL_MAX)]


def decode_detail(detail: str) -> tuple[str, CapRecord | None]:
    """The message and the recorded cap of a ``detail`` column (None when it has none)."""
    if not detail.startswith("{"):
        return detail, None
    try:
        parsed = json.loads(detail)
    except ValueError:
        return detail, None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("message"), str):
        return detail, None
    cap = parsed.get("cap")
    return parsed["message"], CapRecord.parse(cap) if isinstance(cap, dict) else None


def cap_of(reason: str, state: SpendState) -> CapRecord:
    """The cap in force for a money reason in ``state``, to record when raising it."""
    if reason == Reason.MONTHLY_SPEND_LIMIT_EXCEEDED:
        return CapRecord(state.period, limit_micros=state.spend_limit_micros)
    balance = state.credit_balance_micros
    return CapRecord(
        state.period,
        credit_cap_micros=ledger_usage(state, state.period) + balance,
        credit_balance_micros=balance,
        payment_method=state.has_payment_method,
    )


def cap_beaten(reason: str, recorded: CapRecord, state: SpendState) -> bool:
    """Whether the cap of ``state`` is above ``recorded`` (a change that lifts the reason).

    Only a raised or removed limit beats a monthly cap. A credit cap is beaten by a
    payment method, or by credits bought or granted: usage past the credits raises
    the usage, not the balance, so a balance of 0 never beats it.
    """
    limit = state.spend_limit_micros
    if reason == Reason.MONTHLY_SPEND_LIMIT_EXCEEDED:
        return limit is None or (
            recorded.limit_micros is not None and limit > recorded.limit_micros
        )
    if state.has_payment_method:
        return True
    balance = state.credit_balance_micros
    if balance <= 0:
        return False
    credit_cap = ledger_usage(state, state.period) + balance
    if state.period == recorded.period:
        return recorded.credit_cap_micros is not None and credit_cap > recorded.credit_cap_micros
    # A later month counts its own usage only: compare with the balance left then.
    return (
        recorded.credit_balance_micros is not None and credit_cap > recorded.credit_balance_micros
    )


MESSAGES = {
    Reason.FAILED_PAYMENTS: "An invoice payment failed; pay the open invoice to resume usage.",
    Reason.CREDIT_DEPLETED: "The account's credits are used up; add a payment method or "
    "buy credits.",
    Reason.MONTHLY_SPEND_LIMIT_EXCEEDED: "The monthly spend limit is reached; raise the "
    "limit or wait for next month.",
}

Adds = Mapping[str, tuple[str, str | None, CapRecord | None]]
"""reason -> (message, period, the cap recorded with it)"""


def money_changes(
    state: SpendState,
    present: Mapping[str, tuple[str | None, CapRecord | None]],
    month: str,
    committed: int,
) -> tuple[Adds, list[str], list[str]]:
    """The money reasons to add, to remove and to rewrite (lifted and reached again).

    ``present`` maps the account's reasons to their period and recorded cap;
    ``committed`` is the month's usage as the ledger or the guard counts it.
    A present money reason stays while its recorded cap holds (``lifts``);
    an absent one is raised, with the cap of ``state``, when reached.
    """
    adds: dict[str, tuple[str, str | None, CapRecord | None]] = {}
    removes: list[str] = []
    replace: list[str] = []
    failed = Reason.FAILED_PAYMENTS
    if state.failed_payments and failed not in present:
        adds[failed] = (MESSAGES[failed], None, None)
    elif not state.failed_payments and failed in present:
        removes.append(failed)
    limit = state.spend_limit_micros
    reached = {
        # No payment method and no credit left after some usage this month.
        Reason.CREDIT_DEPLETED: not state.has_payment_method
        and state.credit_balance_micros <= 0
        and ledger_usage(state, state.period) > 0,
        # The $0 limit of a failed payment is not a second reason.
        Reason.MONTHLY_SPEND_LIMIT_EXCEEDED: not state.failed_payments
        and limit is not None
        and committed >= limit,
    }
    for reason, now_reached in reached.items():
        row = present.get(reason)
        if row is not None and not lifts(reason, *row, state, month, committed):
            continue  # the recorded cap still holds
        if now_reached:
            period = month if reason == Reason.MONTHLY_SPEND_LIMIT_EXCEEDED else None
            adds[reason] = (MESSAGES[reason], period, cap_of(reason, state))
            if row is not None:
                replace.append(reason)  # record the new cap
        elif row is not None:
            removes.append(reason)
    return adds, removes, replace


def lifts(
    reason: str,
    period: str | None,
    cap: CapRecord | None,
    state: SpendState,
    month: str,
    committed: int,
) -> bool:
    """Whether the money reason lifts in ``state``: its month is over or its cap beaten.

    A row without a recorded cap (written before caps were recorded) lifts
    by the old rule: the limit is above the usage, or there is credit left.
    """
    if reason == Reason.MONTHLY_SPEND_LIMIT_EXCEEDED:
        if past(period, month) or state.spend_limit_micros is None:
            return True
        if cap is None or cap.limit_micros is None:
            return state.spend_limit_micros > committed
    elif cap is None or cap.credit_cap_micros is None:
        return state.has_payment_method or state.credit_balance_micros > 0
    return cap_beaten(reason, cap, state)


def past(period: str | None, month: str) -> bool:
    """Whether a monthly reason of ``period`` belongs to a month before ``month``."""
    return period is None or period < month


def lock_account(session: Session, account_id: str) -> AccountRow | None:
    """The account row, locked until the transaction ends (``FOR UPDATE`` on PostgreSQL).

    Every change of an account's reasons takes this lock first, so two
    replicas changing them at once are serialised and each sees the other's
    rows. SQLite serialises writers by itself.
    """
    return session.scalar(select(AccountRow).where(AccountRow.id == account_id).with_for_update())


def account_exists(session: Session, account_id: str) -> bool:
    return session.scalar(select(AccountRow.id).where(AccountRow.id == account_id)) is not None


def list_reasons(session: Session, account_id: str) -> Sequence[SuspensionReasonRow]:
    return session.scalars(
        select(SuspensionReasonRow)
        .where(SuspensionReasonRow.account_id == account_id)
        .order_by(SuspensionReasonRow.reason)
    ).all()


def delete_reason(session: Session, account_id: str, reason: str) -> None:
    session.execute(
        delete(SuspensionReasonRow).where(
            SuspensionReasonRow.account_id == account_id, SuspensionReasonRow.reason == reason
        )
    )


def add_audit(
    session: Session,
    *,
    account_id: str,
    time: datetime,
    actor: str,
    action: str,
    detail: Mapping[str, Any],
) -> AuditLogRow:
    """Write one audit row in the caller's transaction; ``detail`` is stored as JSON."""
    row = AuditLogRow(
        account_id=account_id,
        time=time,
        actor=actor,
        action=action,
        detail=json.dumps(detail, sort_keys=True, separators=(",", ":")),
    )
    session.add(row)
    return row


def list_audit(
    session: Session, account_id: str, *, before: int | None, limit: int
) -> Sequence[AuditLogRow]:
    """Newest first; ``before`` is the id the previous page ended on."""
    query = (
        select(AuditLogRow)
        .where(AuditLogRow.account_id == account_id)
        .order_by(AuditLogRow.id.desc())
        .limit(limit)
    )
    if before is not None:
        query = query.where(AuditLogRow.id < before)
    return session.scalars(query).all()


def count_audit(session: Session, account_id: str) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(AuditLogRow)
            .where(AuditLogRow.account_id == account_id)
        )
        or 0
    )
