"""account_limits.requests_per_minute is 64-bit, as its API bound (1e10) needs

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 05:05:00.000000

The API accepts up to 10,000,000,000 requests per minute (``MAX_LIMIT``), the
same bound as the token limits beside it, but this column was 32-bit: on
PostgreSQL a value of 2**31 or more failed the insert (a 500). SQLite stores
any integer in 64 bits; the batch operation keeps the migration portable.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("account_limits") as batch:
        batch.alter_column(
            "requests_per_minute",
            existing_type=sa.Integer(),
            type_=sa.BigInteger(),
            existing_nullable=True,
        )


def downgrade() -> None:
    with op.batch_alter_table("account_limits") as batch:
        batch.alter_column(
            "requests_per_minute",
            existing_type=sa.BigInteger(),
            type_=sa.Integer(),
            existing_nullable=True,
        )
