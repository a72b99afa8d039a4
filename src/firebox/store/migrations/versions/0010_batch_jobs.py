"""finetune: batch inference jobs, their per-line results, OpenAI-shaped batch files

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 08:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import firebox.store.base

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_TIME = firebox.store.base.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "batch_jobs",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("uid", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=63), nullable=False),
        sa.Column("job_id", sa.String(length=63), nullable=False),
        sa.Column("api", sa.String(length=16), nullable=False),
        sa.Column("display_name", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=True),
        sa.Column("input_dataset", sa.String(length=200), nullable=False),
        sa.Column("output_dataset", sa.String(length=200), nullable=False),
        sa.Column("input_file_id", sa.String(length=64), nullable=False),
        sa.Column("output_file_id", sa.String(length=64), nullable=False),
        sa.Column("error_file_id", sa.String(length=64), nullable=False),
        sa.Column("endpoint", sa.String(length=64), nullable=False),
        sa.Column("completion_window", sa.String(length=16), nullable=False),
        sa.Column("input_keys", sa.JSON(), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("job_metadata", sa.JSON(), nullable=True),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("status_code", sa.String(length=32), nullable=False),
        sa.Column("status_message", sa.Text(), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("completed", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=False),
        sa.Column("lease_until", _TIME(), nullable=True),
        sa.Column("create_time", _TIME(), nullable=False),
        sa.Column("update_time", _TIME(), nullable=False),
        sa.Column("start_time", _TIME(), nullable=True),
        sa.Column("end_time", _TIME(), nullable=True),
        sa.Column("expire_time", _TIME(), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_batch_jobs_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_batch_jobs")),
        sa.UniqueConstraint("account_id", "job_id", name="uq_batch_jobs_account_id"),
        sa.UniqueConstraint("uid", name=op.f("uq_batch_jobs_uid")),
    )
    op.create_table(
        "batch_results",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("job_pk", sa.Integer(), nullable=False),
        sa.Column("line", sa.BigInteger(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("output", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_pk"],
            ["batch_jobs.pk"],
            name=op.f("fk_batch_results_job_pk_batch_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_results")),
        sa.UniqueConstraint("job_pk", "line", name="uq_batch_results_job_pk"),
    )
    op.create_index(op.f("ix_batch_results_job_pk"), "batch_results", ["job_pk"])
    op.create_table(
        "batch_files",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=63), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("create_time", _TIME(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_batch_files_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_files")),
    )
    op.create_index(op.f("ix_batch_files_account_id"), "batch_files", ["account_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_batch_files_account_id"), table_name="batch_files")
    op.drop_table("batch_files")
    op.drop_index(op.f("ix_batch_results_job_pk"), table_name="batch_results")
    op.drop_table("batch_results")
    op.drop_table("batch_jobs")
