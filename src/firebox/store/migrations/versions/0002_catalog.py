"""catalog: the models table

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 12:40:34.768108
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import firebox.store.base

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(length=63), nullable=False),
        sa.Column("model_id", sa.String(length=63), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("display_name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=1000), nullable=False),
        sa.Column("public", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("context_length", sa.Integer(), nullable=True),
        sa.Column("supports_image_input", sa.Boolean(), nullable=False),
        sa.Column("supports_tools", sa.Boolean(), nullable=False),
        sa.Column("supports_lora", sa.Boolean(), nullable=False),
        sa.Column("parameter_count", sa.BigInteger(), nullable=True),
        sa.Column("moe", sa.Boolean(), nullable=False),
        sa.Column("model_type", sa.String(length=64), nullable=True),
        sa.Column("image_variant", sa.String(length=32), nullable=True),
        sa.Column("base_model_pk", sa.Integer(), nullable=True),
        sa.Column("lora_rank", sa.Integer(), nullable=True),
        sa.Column("target_modules", sa.JSON(), nullable=True),
        sa.Column("upstream_adapter", sa.String(length=255), nullable=True),
        sa.Column("price_micro_usd", sa.BigInteger(), nullable=True),
        sa.Column("engine", sa.JSON(), nullable=True),
        sa.Column("create_time", firebox.store.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("update_time", firebox.store.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_models_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["base_model_pk"],
            ["models.pk"],
            name=op.f("fk_models_base_model_pk_models"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_models")),
        sa.UniqueConstraint("account_id", "model_id", name="uq_models_account_model"),
    )
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_models_base_model_pk"), ["base_model_pk"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_models_base_model_pk"))

    op.drop_table("models")
