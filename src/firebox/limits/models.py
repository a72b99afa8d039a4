"""Tables of the limits slice: per-account limits, quotas, suspension reasons, audit log."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from firebox.store.base import Base, UTCDateTime

BigId = BigInteger().with_variant(Integer(), "sqlite")


class AccountLimitsRow(Base):
    """Operator-set limits of one account; a NULL column means the plan's default."""

    __tablename__ = "account_limits"

    account_id: Mapped[str] = mapped_column(
        String(63), ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    requests_per_minute: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    prompt_tokens_per_minute: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    generated_tokens_per_minute: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    update_time: Mapped[datetime] = mapped_column(UTCDateTime())


class QuotaRow(Base):
    """One quota of one account: its value (NULL: the default) and what is in use.

    Claims lock this row (``SELECT … FOR UPDATE``) and move ``usage`` in the
    caller's transaction, so two concurrent creations cannot both take the
    last free unit.
    """

    __tablename__ = "quotas"

    account_id: Mapped[str] = mapped_column(
        String(63), ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    quota_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    value: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    usage: Mapped[int] = mapped_column(BigInteger, default=0)
    update_time: Mapped[datetime] = mapped_column(UTCDateTime())


class SuspensionReasonRow(Base):
    """A reason the account is suspended for; the account is active when it has none."""

    __tablename__ = "suspension_reasons"

    account_id: Mapped[str] = mapped_column(
        String(63), ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    # MONTHLY_SPEND_LIMIT_EXCEEDED | CREDIT_DEPLETED | FAILED_PAYMENTS | BLOCKED_BY_ABUSE_RULE
    reason: Mapped[str] = mapped_column(String(40), primary_key=True)
    detail: Mapped[str] = mapped_column(String(512), default="")
    # For MONTHLY_SPEND_LIMIT_EXCEEDED: the month it applies to ("YYYY-MM").
    period: Mapped[str | None] = mapped_column(String(7), nullable=True)
    since: Mapped[datetime] = mapped_column(UTCDateTime())


class AuditLogRow(Base):
    """One change of an account's enforcement state (suspension, limits, quotas)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(
        String(63), ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    time: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(128))  # "system" or accounts/{a}/users/{u}
    action: Mapped[str] = mapped_column(String(64))  # e.g. SUSPENDED, UNSUSPENDED, QUOTA_UPDATED
    detail: Mapped[str] = mapped_column(Text, default="")
