"""catalog: the deployed_models table, and models.adapter_path

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 13:14:13.696626
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import firebox.store.base

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deployed_models",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(length=63), nullable=False),
        sa.Column("deployed_model_id", sa.String(length=63), nullable=False),
        sa.Column("model_pk", sa.Integer(), nullable=False),
        sa.Column("display_name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=1000), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("create_time", firebox.store.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("update_time", firebox.store.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_deployed_models_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_pk"],
            ["models.pk"],
            name=op.f("fk_deployed_models_model_pk_models"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_deployed_models")),
        sa.UniqueConstraint(
            "account_id", "deployed_model_id", name="uq_deployed_models_account_id"
        ),
        sa.UniqueConstraint("account_id", "model_pk", name="uq_deployed_models_account_model"),
    )
    with op.batch_alter_table("deployed_models", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_deployed_models_model_pk"), ["model_pk"], unique=False)

    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("adapter_path", sa.String(length=1024), nullable=True))


def downgrade() -> None:
    # The table that refers to ``models`` goes first: on SQLite, dropping the
    # column rebuilds ``models``.
    with op.batch_alter_table("deployed_models", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deployed_models_model_pk"))

    op.drop_table("deployed_models")

    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("adapter_path")
