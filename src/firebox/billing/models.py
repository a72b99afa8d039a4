"""Tables of the billing slice: the usage ledger, credits, payments, invoices.

Money is integer micro-USD (``*_micros``, BIGINT) everywhere. The ledger is
append-only: ``usage_records`` (one row per billable request, unique by its
request id), ``credit_entries`` (every movement of a credit grant: +grant,
-use, -expiry) and ``payments`` (every charge attempt). ``billing_accounts``
and ``credit_grants.remaining_micros`` are caches of sums over those rows,
updated in the same transaction, so each can be recomputed from the ledger
(the invariant tests do exactly that).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from firebox.store.base import Base, UTCDateTime

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL wants BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class BillingAccountRow(Base):
    """The money state of one account: cached sums over its ledger rows."""

    __tablename__ = "billing_accounts"

    account_id: Mapped[str] = mapped_column(
        String(63), ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    # The month whose usage ``period_usage_micros`` holds, "YYYY-MM" (UTC).
    period: Mapped[str] = mapped_column(String(7))
    period_usage_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    credit_balance_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    historical_spend_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    # Usage tier 1-4 (SPEC §3); only ever rises.
    tier: Mapped[int] = mapped_column(Integer, default=1)
    # Operator-set monthly limit (custom tier); ``unlimited`` wins over it.
    custom_spend_limit_micros: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    unlimited: Mapped[bool] = mapped_column(Boolean, default=False)
    # The account's own, lower, limit.
    account_spend_limit_micros: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Discount on on-demand deployment usage only, in basis points (SPEC §2).
    deployment_discount_bps: Mapped[int] = mapped_column(Integer, default=0)
    failed_invoices: Mapped[int] = mapped_column(Integer, default=0)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    update_time: Mapped[datetime] = mapped_column(UTCDateTime())


class UsageRecordRow(Base):
    """One billable event, immutable; ``request_id`` is its idempotency key."""

    __tablename__ = "usage_records"
    __table_args__ = (Index("ix_usage_records_account_period", "account_id", "period"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(160), unique=True)
    account_id: Mapped[str] = mapped_column(
        String(63), ForeignKey("accounts.id", ondelete="CASCADE")
    )
    time: Mapped[datetime] = mapped_column(UTCDateTime())
    period: Mapped[str] = mapped_column(String(7))
    # chat | completion | embedding | image | deployment | fine_tuning
    kind: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(255))
    base_model: Mapped[str] = mapped_column(String(255))
    deployment: Mapped[str | None] = mapped_column(String(255), nullable=True)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    images: Mapped[int] = mapped_column(Integer, default=0)
    steps: Mapped[int] = mapped_column(Integer, default=0)
    gpu_type: Mapped[str | None] = mapped_column(String(32), nullable=True)
    gpu_milliseconds: Mapped[int] = mapped_column(BigInteger, default=0)
    training_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    # The price book version and unit prices applied (micro-USD per 1M units,
    # per step or per GPU-hour, by kind), so past usage is never repriced.
    price_version: Mapped[str] = mapped_column(String(32))
    unit_price_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_unit_price_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    # How much of ``amount_micros`` credits paid; the rest goes on the invoice.
    credit_applied_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    outcome: Mapped[str] = mapped_column(String(16), default="completed")


class CreditGrantRow(Base):
    """A grant of credit: the free $1, a purchase, or an operator grant."""

    __tablename__ = "credit_grants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(
        String(63), ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    source: Mapped[str] = mapped_column(String(16))  # FREE | PURCHASE | OPERATOR
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    remaining_micros: Mapped[int] = mapped_column(BigInteger)  # cache of its entries
    reason: Mapped[str] = mapped_column(String(256), default="")
    # Idempotency key: "free:{account}", the purchase's payment id, a caller's key.
    reference: Mapped[str] = mapped_column(String(160), unique=True)
    expire_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())


class CreditEntryRow(Base):
    """A movement of one grant: +amount at grant, -use, -expiry. Append-only."""

    __tablename__ = "credit_entries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(
        String(63), ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    grant_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("credit_grants.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))  # GRANT | USE | EXPIRE
    amount_micros: Mapped[int] = mapped_column(BigInteger)  # signed
    reference: Mapped[str] = mapped_column(String(200), unique=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime())


class PaymentMethodRow(Base):
    """A payment method on file, as the payment provider knows it."""

    __tablename__ = "payment_methods"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(
        String(63), ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    provider: Mapped[str] = mapped_column(String(16))  # test | stripe
    provider_ref: Mapped[str] = mapped_column(String(255))
    brand: Mapped[str] = mapped_column(String(32), default="")
    last4: Mapped[str] = mapped_column(String(4), default="")
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    delete_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class PaymentRow(Base):
    """One charge attempt (a credit purchase or an invoice payment)."""

    __tablename__ = "payments"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(
        String(63), ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    purpose: Mapped[str] = mapped_column(String(16))  # CREDIT_PURCHASE | INVOICE
    invoice_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    payment_method_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))  # SUCCEEDED | FAILED
    provider_ref: Mapped[str] = mapped_column(String(255), default="")
    failure_code: Mapped[str] = mapped_column(String(64), default="")
    failure_message: Mapped[str] = mapped_column(String(512), default="")
    idempotency_key: Mapped[str] = mapped_column(String(160), unique=True)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())


class InvoiceRow(Base):
    """The invoice of one account for one closed month."""

    __tablename__ = "invoices"
    __table_args__ = (UniqueConstraint("account_id", "period", name="uq_invoices_account_period"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(
        String(63), ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    period: Mapped[str] = mapped_column(String(7))
    # DRAFT | OPEN | PAID | PAYMENT_FAILED | VOID
    state: Mapped[str] = mapped_column(String(16))
    usage_micros: Mapped[int] = mapped_column(BigInteger)
    credits_applied_micros: Mapped[int] = mapped_column(BigInteger)
    total_micros: Mapped[int] = mapped_column(BigInteger)
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    last_failure: Mapped[str] = mapped_column(String(512), default="")
    next_attempt_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    update_time: Mapped[datetime] = mapped_column(UTCDateTime())
    paid_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class InvoiceLineRow(Base):
    """One line of an invoice: a model and usage kind, with quantities and amount."""

    __tablename__ = "invoice_lines"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    invoice_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("invoices.id", ondelete="CASCADE"), index=True
    )
    model: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16))
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    images: Mapped[int] = mapped_column(BigInteger, default=0)
    steps: Mapped[int] = mapped_column(BigInteger, default=0)
    gpu_milliseconds: Mapped[int] = mapped_column(BigInteger, default=0)
    training_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    amount_micros: Mapped[int] = mapped_column(BigInteger)
    credit_applied_micros: Mapped[int] = mapped_column(BigInteger, default=0)


class PriceOverrideRow(Base):
    """Enterprise custom pricing: an account's own unit price for a price class or model."""

    __tablename__ = "price_overrides"
    __table_args__ = (
        UniqueConstraint("account_id", "target", "effective_from", name="uq_price_overrides"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(
        String(63), ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    # A price class (``TEXT_DENSE_UP_TO_16B``) or a full model name.
    target: Mapped[str] = mapped_column(String(255))
    unit_price_micros: Mapped[int] = mapped_column(BigInteger)
    effective_from: Mapped[datetime] = mapped_column(UTCDateTime())
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
