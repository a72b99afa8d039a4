"""The wire form of a deployment row (and the records ``filter``/``orderBy`` read)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from firebox.deployments import durations
from firebox.deployments.models import DeploymentEventRow, DeploymentRow, deployment_name
from firebox.deployments.schemas import (
    AutoscalingPolicy,
    Deployment,
    DeploymentEvent,
    DeploymentStatus,
    ReplicaStats,
)


def view(row: DeploymentRow, events: Sequence[DeploymentEventRow] = ()) -> Deployment:
    return Deployment(
        name=deployment_name(row.account_id, row.deployment_id),
        base_model=row.base_model,
        display_name=row.display_name,
        description=row.description,
        accelerator_type=row.accelerator_type,
        accelerator_count=row.accelerator_count,
        min_replica_count=row.min_replica_count,
        max_replica_count=row.max_replica_count,
        autoscaling_policy=AutoscalingPolicy(
            scale_up_window=durations.emit(row.scale_up_window_s),
            scale_down_window=durations.emit(row.scale_down_window_s),
            scale_to_zero_window=durations.emit(row.scale_to_zero_window_s),
            load_targets=dict(row.load_targets or {}),
        ),
        deployment_shape=row.deployment_shape,
        enable_addons=row.enable_addons,
        max_context_length=row.max_context_length,
        precision=row.precision,
        state=row.state,  # a DeploymentState value
        status=DeploymentStatus(code=row.status_code, message=row.status_message),
        replica_count=row.replica_count,
        desired_replica_count=row.desired_replica_count,
        replica_stats=ReplicaStats(
            pending_scheduling_replica_count=row.pending_replicas,
            initializing_replica_count=row.initializing_replicas,
            ready_replica_count=row.ready_replicas,
        ),
        create_time=row.create_time,
        update_time=row.update_time,
        delete_time=row.delete_time,
        purge_time=row.purge_time,
        fixed_replica_count=row.fixed_replicas,
        suspended=row.suspended,
        recent_events=[DeploymentEvent(time=e.time, kind=e.kind, detail=e.detail) for e in events],
    )


def record(row: DeploymentRow) -> dict[str, Any]:
    """The fields ``filter`` and ``orderBy`` read, by snake_case name."""
    return {
        "name": deployment_name(row.account_id, row.deployment_id),
        "deployment_id": row.deployment_id,
        "display_name": row.display_name,
        "description": row.description,
        "base_model": row.base_model,
        "accelerator_type": row.accelerator_type,
        "accelerator_count": row.accelerator_count,
        "min_replica_count": row.min_replica_count,
        "max_replica_count": row.max_replica_count,
        "replica_count": row.replica_count,
        "desired_replica_count": row.desired_replica_count,
        "deployment_shape": row.deployment_shape,
        "enable_addons": row.enable_addons,
        "precision": row.precision,
        "state": row.state,
        "create_time": row.create_time,
        "update_time": row.update_time,
        "delete_time": row.delete_time,
        "pk": row.pk,
        "row": row,
    }
