"""deployed_models.deployment: a LoRA add-on loaded onto an on-demand deployment

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 08:30:00.000000

A deployed model with ``deployment`` set serves its add-on on that
deployment only (``accounts/{a}/deployedModels/{id}``, or
``<add-on>#accounts/{a}/deployments/{d}``); NULL keeps today's meaning,
serverless. The batch operation keeps the migration portable to SQLite.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployed_models") as batch:
        batch.add_column(sa.Column("deployment", sa.String(length=255), nullable=True))
        batch.create_index("ix_deployed_models_deployment", ["deployment"])


def downgrade() -> None:
    with op.batch_alter_table("deployed_models") as batch:
        batch.drop_index("ix_deployed_models_deployment")
        batch.drop_column("deployment")
