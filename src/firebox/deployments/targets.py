"""From a stored deployment to what a driver runs: the rules the controller applies.

``replicas_override`` is the one place that says how ``:scale`` and a
suspension combine: a suspended deployment runs at zero whatever else is
set; otherwise an explicit ``:scale`` count holds; otherwise (None) the
driver autoscales between min and max.
"""

from __future__ import annotations

from firebox.catalog.index import ResolvedModel
from firebox.deployments.drivers.base import AutoscalingTarget, DeploymentTarget
from firebox.deployments.models import DeploymentRow, deployment_name


def replicas_override(row: DeploymentRow) -> int | None:
    if row.suspended:
        return 0
    return row.fixed_replicas


def target_ongoing_requests(load_targets: dict[str, float]) -> float:
    """Ongoing requests per replica the autoscaler aims at.

    ``concurrent_requests`` is that number directly; ``default`` is a 0-1
    utilisation fraction, read as that fraction of one request in flight
    per replica (Firebox's replicas are sized for one stream at full speed).
    """
    concurrent = load_targets.get("concurrent_requests")
    if concurrent is not None and concurrent > 0:
        return float(concurrent)
    return float(load_targets.get("default", 0.8))


def autoscaling_of(row: DeploymentRow) -> AutoscalingTarget:
    return AutoscalingTarget(
        min_replicas=row.min_replica_count,
        max_replicas=row.max_replica_count,
        scale_up_window_s=row.scale_up_window_s,
        scale_down_window_s=row.scale_down_window_s,
        scale_to_zero_window_s=row.scale_to_zero_window_s,
        target_ongoing_requests=target_ongoing_requests(dict(row.load_targets or {})),
    )


def target_of(
    row: DeploymentRow, base: ResolvedModel, addons: tuple[ResolvedModel, ...] = ()
) -> DeploymentTarget:
    """The driver's target for ``row``; ``base`` is its resolved base model."""
    return DeploymentTarget(
        name=deployment_name(row.account_id, row.deployment_id),
        account_id=row.account_id,
        deployment_id=row.deployment_id,
        base_model=base,
        addons=addons,
        accelerator_type=row.accelerator_type,
        accelerator_count=row.accelerator_count,
        autoscaling=autoscaling_of(row),
        fixed_replicas=replicas_override(row),
        max_context_length=row.max_context_length,
        revision=row.revision,
    )
