"""deployments: the deployments, deployment_events, deployment_shapes and
deployment_shape_versions tables

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 08:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import firebox.store.base

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _time(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, firebox.store.base.UTCDateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(length=63), nullable=False),
        sa.Column("deployment_id", sa.String(length=63), nullable=False),
        sa.Column("base_model", sa.String(length=255), nullable=False),
        sa.Column("display_name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=1000), nullable=False),
        sa.Column("accelerator_type", sa.String(length=32), nullable=False),
        sa.Column("accelerator_count", sa.Integer(), nullable=False),
        sa.Column("min_replica_count", sa.Integer(), nullable=False),
        sa.Column("max_replica_count", sa.Integer(), nullable=False),
        sa.Column("scale_up_window_s", sa.Float(), nullable=False),
        sa.Column("scale_down_window_s", sa.Float(), nullable=False),
        sa.Column("scale_to_zero_window_s", sa.Float(), nullable=False),
        sa.Column("load_targets", sa.JSON(), nullable=False),
        sa.Column("deployment_shape", sa.String(length=255), nullable=True),
        sa.Column("enable_addons", sa.Boolean(), nullable=False),
        sa.Column("max_context_length", sa.Integer(), nullable=True),
        sa.Column("precision", sa.String(length=32), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("fixed_replicas", sa.Integer(), nullable=True),
        sa.Column("suspended_replicas", sa.Integer(), nullable=True),
        sa.Column("suspended", sa.Boolean(), nullable=False),
        sa.Column("quota_id", sa.String(length=32), nullable=True),
        sa.Column("quota_units", sa.Integer(), nullable=False),
        sa.Column("model_units", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("status_code", sa.String(length=32), nullable=False),
        sa.Column("status_message", sa.String(length=1000), nullable=False),
        sa.Column("replica_count", sa.Integer(), nullable=False),
        sa.Column("desired_replica_count", sa.Integer(), nullable=False),
        sa.Column("pending_replicas", sa.Integer(), nullable=False),
        sa.Column("initializing_replicas", sa.Integer(), nullable=False),
        sa.Column("ready_replicas", sa.Integer(), nullable=False),
        _time("observed_time", nullable=True),
        _time("create_time"),
        _time("update_time"),
        _time("delete_time", nullable=True),
        _time("purge_time", nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_deployments_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_deployments")),
        sa.UniqueConstraint("account_id", "deployment_id", name="uq_deployments_account_id"),
    )
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.create_index("ix_deployments_live", ["delete_time"], unique=False)

    op.create_table(
        "deployment_events",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("deployment_pk", sa.Integer(), nullable=False),
        _time("time"),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.String(length=1000), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_pk"],
            ["deployments.pk"],
            name=op.f("fk_deployment_events_deployment_pk_deployments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_deployment_events")),
    )
    with op.batch_alter_table("deployment_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_deployment_events_deployment_pk"), ["deployment_pk"], unique=False
        )

    op.create_table(
        "deployment_shapes",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(length=63), nullable=False),
        sa.Column("shape_id", sa.String(length=63), nullable=False),
        sa.Column("public", sa.Boolean(), nullable=False),
        sa.Column("latest_version", sa.Integer(), nullable=False),
        _time("create_time"),
        _time("update_time"),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_deployment_shapes_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_deployment_shapes")),
        sa.UniqueConstraint("account_id", "shape_id", name="uq_deployment_shapes_account_id"),
    )

    op.create_table(
        "deployment_shape_versions",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("shape_pk", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("base_model", sa.String(length=255), nullable=False),
        sa.Column("snapshot", sa.JSON(), nullable=False),
        sa.Column("validated", sa.Boolean(), nullable=False),
        _time("create_time"),
        sa.ForeignKeyConstraint(
            ["shape_pk"],
            ["deployment_shapes.pk"],
            name=op.f("fk_deployment_shape_versions_shape_pk_deployment_shapes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_deployment_shape_versions")),
        sa.UniqueConstraint("shape_pk", "version", name="uq_deployment_shape_versions_shape_pk"),
    )
    with op.batch_alter_table("deployment_shape_versions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_deployment_shape_versions_base_model"), ["base_model"], unique=False
        )


def downgrade() -> None:
    op.drop_table("deployment_shape_versions")
    op.drop_table("deployment_shapes")
    op.drop_table("deployment_events")
    op.drop_table("deployments")
