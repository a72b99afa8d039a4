"""finetune: the datasets table

Revision ID: 0007
Revises: 0005
Create Date: 2026-12-06 08:05:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import firebox.store.base

revision = "0007"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(length=63), nullable=False),
        sa.Column("dataset_id", sa.String(length=63), nullable=False),
        sa.Column("display_name", sa.String(length=64), nullable=False),
        sa.Column("format", sa.String(length=24), nullable=False),
        sa.Column("layout", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("status_code", sa.String(length=32), nullable=False),
        sa.Column("status_message", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=24), nullable=False),
        sa.Column("source_dataset_id", sa.String(length=200), nullable=False),
        sa.Column("source_job_name", sa.String(length=200), nullable=False),
        sa.Column("external_url", sa.String(length=1000), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("example_count", sa.BigInteger(), nullable=True),
        sa.Column("estimated_token_count", sa.BigInteger(), nullable=True),
        sa.Column("average_turn_count", sa.Float(), nullable=True),
        sa.Column("total_bytes", sa.BigInteger(), nullable=False),
        sa.Column("reserved_bytes", sa.BigInteger(), nullable=False),
        sa.Column("upload_seq", sa.Integer(), nullable=False),
        sa.Column("staging_seq", sa.Integer(), nullable=False),
        sa.Column("upload_manifest", sa.JSON(), nullable=True),
        sa.Column("problems", sa.JSON(), nullable=True),
        sa.Column("create_time", firebox.store.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("update_time", firebox.store.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_datasets_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_datasets")),
        sa.UniqueConstraint("account_id", "dataset_id", name="uq_datasets_account_id"),
    )


def downgrade() -> None:
    op.drop_table("datasets")
