"""account_limits.requests_per_minute is 64-bit, as its API bound (1e10) needs

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 05:05:00.000000

The API accepts up to 10,000,000,000 requests per minute (``MAX_LIMIT``), the
same bound as the token limits beside it, but this column was 32-bit: on
PostgreSQL a value of 2**31 or more failed the insert (a 500). SQLite stores
any integer in 64 bits; the batch operation keeps the migration portable.

It also recounts the ``deployed-models`` quota from the deployed models that
hold it: add-ons loaded by catalog files did not claim a unit before, and
usage must equal the units held (docs/invariants.md).
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
    op.execute(
        "INSERT INTO quotas (account_id, quota_id, usage, update_time) "
        "SELECT DISTINCT d.account_id, 'deployed-models', 0, CURRENT_TIMESTAMP "
        "FROM deployed_models d WHERE NOT EXISTS (SELECT 1 FROM quotas q "
        "WHERE q.account_id = d.account_id AND q.quota_id = 'deployed-models')"
    )
    op.execute(
        "UPDATE quotas SET usage = (SELECT COUNT(*) FROM deployed_models d "
        "WHERE d.account_id = quotas.account_id) WHERE quota_id = 'deployed-models'"
    )


def downgrade() -> None:
    with op.batch_alter_table("account_limits") as batch:
        batch.alter_column(
            "requests_per_minute",
            existing_type=sa.BigInteger(),
            type_=sa.Integer(),
            existing_nullable=True,
        )
