"""Tables of the deployments slice: deployments, their state changes, and deployment shapes.

A deployment row holds three kinds of columns:

* the spec the user writes (base model, accelerators, replicas, autoscaling),
  whose every change bumps ``revision`` so drivers can roll replicas;
* the control columns the service writes: ``fixed_replicas`` (an explicit
  ``:scale``, which overrides autoscaling; NULL lets the driver autoscale),
  ``suspended_replicas`` (set while the account is suspended: the count to
  restore; the deployment runs at zero meanwhile) and the quota units held;
* the observed columns the runtime (controller) writes back from the driver:
  ``state``, ``status_*``, replica counts and stats.

Soft delete: ``delete_time`` set means deleted (the quota is given back then);
the row stays until ``purge_time`` so ``:undelete`` can bring it back.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from firebox.store.base import Base, UTCDateTime


class DeploymentState(StrEnum):
    """A deployment's ``state``, the SDK's ``Deployment.state`` values."""

    CREATING = "CREATING"
    READY = "READY"
    UPDATING = "UPDATING"
    DELETING = "DELETING"
    DELETED = "DELETED"
    FAILED = "FAILED"


class DeploymentRow(Base):
    """One on-demand deployment of an account."""

    __tablename__ = "deployments"
    __table_args__ = (
        UniqueConstraint("account_id", "deployment_id", name="uq_deployments_account_id"),
        Index("ix_deployments_live", "delete_time"),
    )

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(
        String(63), ForeignKey("accounts.id", ondelete="CASCADE")
    )
    deployment_id: Mapped[str] = mapped_column(String(63))
    # -- spec ----------------------------------------------------------------
    base_model: Mapped[str] = mapped_column(String(255))  # accounts/{a}/models/{m}
    display_name: Mapped[str] = mapped_column(String(64), default="")
    description: Mapped[str] = mapped_column(String(1000), default="")
    accelerator_type: Mapped[str] = mapped_column(String(32))
    accelerator_count: Mapped[int] = mapped_column(Integer)  # per replica
    min_replica_count: Mapped[int] = mapped_column(Integer, default=0)
    max_replica_count: Mapped[int] = mapped_column(Integer, default=1)
    scale_up_window_s: Mapped[float] = mapped_column(Float)
    scale_down_window_s: Mapped[float] = mapped_column(Float)
    scale_to_zero_window_s: Mapped[float] = mapped_column(Float)
    load_targets: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    deployment_shape: Mapped[str | None] = mapped_column(String(255), nullable=True)
    enable_addons: Mapped[bool] = mapped_column(Boolean, default=False)
    max_context_length: Mapped[int | None] = mapped_column(Integer, nullable=True)
    precision: Mapped[str | None] = mapped_column(String(32), nullable=True)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    # -- control -------------------------------------------------------------
    fixed_replicas: Mapped[int | None] = mapped_column(Integer, nullable=True)
    suspended_replicas: Mapped[int | None] = mapped_column(Integer, nullable=True)
    suspended: Mapped[bool] = mapped_column(Boolean, default=False)
    quota_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    quota_units: Mapped[int] = mapped_column(Integer, default=0)  # accelerators held
    model_units: Mapped[int] = mapped_column(Integer, default=0)  # deployed-models held
    # -- observed (written by the runtime) -----------------------------------
    state: Mapped[str] = mapped_column(String(16), default=DeploymentState.CREATING.value)
    status_code: Mapped[str] = mapped_column(String(32), default="OK")
    status_message: Mapped[str] = mapped_column(String(1000), default="")
    replica_count: Mapped[int] = mapped_column(Integer, default=0)
    desired_replica_count: Mapped[int] = mapped_column(Integer, default=0)
    pending_replicas: Mapped[int] = mapped_column(Integer, default=0)
    initializing_replicas: Mapped[int] = mapped_column(Integer, default=0)
    ready_replicas: Mapped[int] = mapped_column(Integer, default=0)
    observed_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # -- times ---------------------------------------------------------------
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    update_time: Mapped[datetime] = mapped_column(UTCDateTime())
    delete_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    purge_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class DeploymentEventRow(Base):
    """A recorded change of a deployment: a state change, a scale, a spec update."""

    __tablename__ = "deployment_events"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment_pk: Mapped[int] = mapped_column(
        Integer, ForeignKey("deployments.pk", ondelete="CASCADE"), index=True
    )
    time: Mapped[datetime] = mapped_column(UTCDateTime())
    kind: Mapped[str] = mapped_column(String(32))  # STATE, SCALE, UPDATE, SUSPEND, ...
    detail: Mapped[str] = mapped_column(String(1000), default="")


class DeploymentShapeRow(Base):
    """An operator-defined deployment shape: accelerators and precision for a base model.

    Shapes of the operator's account with ``public`` set are visible to all.
    """

    __tablename__ = "deployment_shapes"
    __table_args__ = (
        UniqueConstraint("account_id", "shape_id", name="uq_deployment_shapes_account_id"),
    )

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(
        String(63), ForeignKey("accounts.id", ondelete="CASCADE")
    )
    shape_id: Mapped[str] = mapped_column(String(63))
    public: Mapped[bool] = mapped_column(Boolean, default=False)
    latest_version: Mapped[int] = mapped_column(Integer, default=1)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    update_time: Mapped[datetime] = mapped_column(UTCDateTime())


class DeploymentShapeVersionRow(Base):
    """One immutable version of a shape: the snapshot of its fields (wire names)."""

    __tablename__ = "deployment_shape_versions"
    __table_args__ = (
        UniqueConstraint("shape_pk", "version", name="uq_deployment_shape_versions_shape_pk"),
    )

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    shape_pk: Mapped[int] = mapped_column(
        Integer, ForeignKey("deployment_shapes.pk", ondelete="CASCADE")
    )
    version: Mapped[int] = mapped_column(Integer)
    base_model: Mapped[str] = mapped_column(String(255), index=True)
    snapshot: Mapped[dict[str, Any]] = mapped_column(JSON)
    validated: Mapped[bool] = mapped_column(Boolean, default=True)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())


def deployment_name(account_id: str, deployment_id: str) -> str:
    """The resource name ``accounts/{account}/deployments/{id}``."""
    return f"accounts/{account_id}/deployments/{deployment_id}"


def shape_name(account_id: str, shape_id: str) -> str:
    return f"accounts/{account_id}/deploymentShapes/{shape_id}"


def shape_version_name(account_id: str, shape_id: str, version: int) -> str:
    return f"{shape_name(account_id, shape_id)}/versions/{version}"
