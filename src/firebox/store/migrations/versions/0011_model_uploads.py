"""models carry their uploaded files and the outcome of their last validation

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 08:10:00.000000

``upload_files`` is the file set registered by ``:getUploadEndpoint``
(name -> declared size), ``upload_bytes`` its total (the per-account storage
quota sums it), ``status_message`` why the last ``:validateUpload`` refused
the files (null when it passed or never ran).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("upload_files", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("upload_bytes", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("status_message", sa.String(length=4000), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("status_message")
        batch.drop_column("upload_bytes")
        batch.drop_column("upload_files")
