"""Tables of the accounts slice."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from firebox.store.base import Base, UTCDateTime


class AccountRow(Base):
    """A customer account: the unit of billing, limits and isolation."""

    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(64), default="")
    email: Mapped[str] = mapped_column(String(254), default="")
    plan: Mapped[str] = mapped_column(String(16), default="DEVELOPER")
    state: Mapped[str] = mapped_column(String(16), default="READY")
    suspend_state: Mapped[str] = mapped_column(String(32), default="UNSUSPENDED")
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    update_time: Mapped[datetime] = mapped_column(UTCDateTime())


class UserRow(Base):
    """A member of one account. The same email may be a member of several."""

    __tablename__ = "users"
    __table_args__ = (
        UniqueConstraint("account_id", "user_id", name="uq_users_account_user"),
        UniqueConstraint("account_id", "email", name="uq_users_account_email"),
    )

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(
        String(63), ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[str] = mapped_column(String(63))
    role: Mapped[str] = mapped_column(String(16))
    display_name: Mapped[str] = mapped_column(String(64), default="")
    email: Mapped[str | None] = mapped_column(String(254), nullable=True)
    service_account: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(16), default="READY")
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    update_time: Mapped[datetime] = mapped_column(UTCDateTime())


class ApiKeyRow(Base):
    """An API key. Only the SHA-256 of the secret is kept."""

    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    account_id: Mapped[str] = mapped_column(
        String(63), ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    user_pk: Mapped[int] = mapped_column(
        Integer, ForeignKey("users.pk", ondelete="CASCADE"), index=True
    )
    display_name: Mapped[str] = mapped_column(String(64), default="default")
    is_operator: Mapped[bool] = mapped_column(Boolean, default=False)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    expire_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoke_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
