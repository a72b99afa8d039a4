"""Tables of the catalog slice."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from firebox.store.base import Base, UTCDateTime


class ModelRow(Base):
    """A model of one account: a base model, a LoRA add-on, an embedding or image model.

    An add-on points at its base by primary key, so the database itself
    refuses to delete a base that add-ons still use, on SQLite and PostgreSQL.
    """

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("account_id", "model_id", name="uq_models_account_model"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(
        String(63), ForeignKey("accounts.id", ondelete="CASCADE")
    )
    model_id: Mapped[str] = mapped_column(String(63))
    kind: Mapped[str] = mapped_column(String(32))
    display_name: Mapped[str] = mapped_column(String(64), default="")
    description: Mapped[str] = mapped_column(String(1000), default="")
    public: Mapped[bool] = mapped_column(Boolean, default=False)
    state: Mapped[str] = mapped_column(String(16), default="READY")
    context_length: Mapped[int | None] = mapped_column(Integer, nullable=True)
    supports_image_input: Mapped[bool] = mapped_column(Boolean, default=False)
    supports_tools: Mapped[bool] = mapped_column(Boolean, default=False)
    supports_lora: Mapped[bool] = mapped_column(Boolean, default=False)
    parameter_count: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    moe: Mapped[bool] = mapped_column(Boolean, default=False)
    model_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    image_variant: Mapped[str | None] = mapped_column(String(32), nullable=True)
    base_model_pk: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("models.pk", ondelete="RESTRICT"), nullable=True, index=True
    )
    lora_rank: Mapped[int | None] = mapped_column(Integer, nullable=True)
    target_modules: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    upstream_adapter: Mapped[str | None] = mapped_column(String(255), nullable=True)
    adapter_path: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    price_micro_usd: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    engine: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    upload_files: Mapped[dict[str, int] | None] = mapped_column(JSON, nullable=True)
    upload_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    status_message: Mapped[str | None] = mapped_column(String(4000), nullable=True)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    update_time: Mapped[datetime] = mapped_column(UTCDateTime())
