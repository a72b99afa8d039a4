"""A deployment's complete spec: defaults filled in, every field checked, bounds applied.

``build`` turns a create body (or a stored row with a PATCH applied) into a
``FullSpec``; the service then checks what needs the database (the base
model, the plan, the quota). Bounds follow Fireworks (SPEC §7): replicas
between ``minReplicaCount`` (default 0) and ``maxReplicaCount`` (default
max(min, 1)); scale-up and scale-down windows at most 1 h; the scale-to-zero
window at least the operator's floor (``FIREBOX_DEPLOYMENT_MIN_SCALE_TO_ZERO_S``,
5 min by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from firebox.deployments import durations
from firebox.deployments.accelerators import ACCELERATOR_TYPES, DEFAULT_TYPE
from firebox.deployments.models import DeploymentRow
from firebox.deployments.schemas import PRECISIONS, AutoscalingPolicySpec, DeploymentSpec
from firebox.errors import InvalidArgument

DEFAULT_UP_S = 30.0
DEFAULT_DOWN_S = 600.0
DEFAULT_TO_ZERO_S = 3600.0
MAX_WINDOW_S = 3600.0
MAX_TO_ZERO_S = 30 * 86400.0
DEFAULT_LOAD_TARGETS = {"default": 0.8}
LOAD_TARGET_KEYS = (
    "default",
    "tokens_generated_per_second",
    "prompt_tokens_per_second",
    "requests_per_second",
    "concurrent_requests",
)


@dataclass(frozen=True, slots=True)
class SpecBounds:
    """Operator settings that bound a spec."""

    min_scale_to_zero_s: float = 300.0


@dataclass(frozen=True, slots=True)
class FullSpec:
    base_model: str
    display_name: str
    description: str
    accelerator_type: str
    accelerator_count: int
    min_replica_count: int
    max_replica_count: int
    scale_up_window_s: float
    scale_down_window_s: float
    scale_to_zero_window_s: float
    load_targets: dict[str, float] = field(default_factory=dict)
    deployment_shape: str | None = None
    enable_addons: bool = False
    max_context_length: int | None = None
    precision: str | None = None

    def accelerators_held(self, fixed_replicas: int | None) -> int:
        """Accelerators the deployment reserves: count x the most replicas it may run."""
        return self.accelerator_count * max(self.max_replica_count, fixed_replicas or 0)

    def runtime_differs(self, other: FullSpec) -> bool:
        """Whether running replicas must change (anything but the names)."""
        return replace(self, display_name="", description="") != replace(
            other, display_name="", description=""
        )


SPEC_FIELDS = (
    "base_model",
    "display_name",
    "description",
    "accelerator_type",
    "accelerator_count",
    "min_replica_count",
    "max_replica_count",
    "autoscaling_policy",
    "deployment_shape",
    "enable_addons",
    "max_context_length",
    "precision",
)
POLICY_FIELDS = ("scale_up_window", "scale_down_window", "scale_to_zero_window", "load_targets")


def of_row(row: DeploymentRow) -> FullSpec:
    return FullSpec(
        base_model=row.base_model,
        display_name=row.display_name,
        description=row.description,
        accelerator_type=row.accelerator_type,
        accelerator_count=row.accelerator_count,
        min_replica_count=row.min_replica_count,
        max_replica_count=row.max_replica_count,
        scale_up_window_s=row.scale_up_window_s,
        scale_down_window_s=row.scale_down_window_s,
        scale_to_zero_window_s=row.scale_to_zero_window_s,
        load_targets=dict(row.load_targets or {}),
        deployment_shape=row.deployment_shape,
        enable_addons=row.enable_addons,
        max_context_length=row.max_context_length,
        precision=row.precision,
    )


def write_row(row: DeploymentRow, spec: FullSpec) -> None:
    row.base_model = spec.base_model
    row.display_name = spec.display_name
    row.description = spec.description
    row.accelerator_type = spec.accelerator_type
    row.accelerator_count = spec.accelerator_count
    row.min_replica_count = spec.min_replica_count
    row.max_replica_count = spec.max_replica_count
    row.scale_up_window_s = spec.scale_up_window_s
    row.scale_down_window_s = spec.scale_down_window_s
    row.scale_to_zero_window_s = spec.scale_to_zero_window_s
    row.load_targets = dict(spec.load_targets)
    row.deployment_shape = spec.deployment_shape
    row.enable_addons = spec.enable_addons
    row.max_context_length = spec.max_context_length
    row.precision = spec.precision


def for_create(body: DeploymentSpec, shape: dict[str, Any] | None, bounds: SpecBounds) -> FullSpec:
    """The spec a create body asks for; a shape's snapshot fills what the body leaves out."""
    if not body.base_model:
        raise InvalidArgument(
            "Missing required field 'baseModel': the model to deploy, as "
            "accounts/<account>/models/<model>.",
            code="missing_field",
            param="baseModel",
        )
    shape = shape or {}
    minimum = body.min_replica_count if body.min_replica_count is not None else 0
    maximum = body.max_replica_count
    policy = body.autoscaling_policy or AutoscalingPolicySpec()
    spec = FullSpec(
        base_model=body.base_model,
        display_name=body.display_name or "",
        description=body.description or "",
        accelerator_type=body.accelerator_type or shape.get("acceleratorType") or DEFAULT_TYPE,
        accelerator_count=body.accelerator_count or int(shape.get("acceleratorCount") or 1),
        min_replica_count=minimum,
        max_replica_count=maximum if maximum is not None else max(minimum, 1),
        scale_up_window_s=_window(policy.scale_up_window, DEFAULT_UP_S, "scaleUpWindow"),
        scale_down_window_s=_window(policy.scale_down_window, DEFAULT_DOWN_S, "scaleDownWindow"),
        scale_to_zero_window_s=_window(
            policy.scale_to_zero_window, DEFAULT_TO_ZERO_S, "scaleToZeroWindow"
        ),
        load_targets=dict(policy.load_targets or DEFAULT_LOAD_TARGETS),
        deployment_shape=None,
        enable_addons=bool(
            body.enable_addons if body.enable_addons is not None else shape.get("enableAddons")
        ),
        max_context_length=body.max_context_length or shape.get("maxContextLength"),
        precision=body.precision or shape.get("precision"),
    )
    check(spec, bounds)
    return spec


def with_changes(
    current: FullSpec, body: DeploymentSpec, paths: set[str], bounds: SpecBounds
) -> FullSpec:
    """``current`` with the fields named in ``paths`` taken from ``body`` (absent: defaults)."""
    changes: dict[str, Any] = {}
    policy = body.autoscaling_policy or AutoscalingPolicySpec()
    simple = {
        "display_name": body.display_name or "",
        "description": body.description or "",
        "accelerator_type": body.accelerator_type or DEFAULT_TYPE,
        "accelerator_count": body.accelerator_count or 1,
        "min_replica_count": body.min_replica_count or 0,
        "max_replica_count": body.max_replica_count,
        "deployment_shape": body.deployment_shape or None,
        "enable_addons": bool(body.enable_addons),
        "max_context_length": body.max_context_length,
        "precision": body.precision or None,
    }
    for name, value in simple.items():
        if name in paths:
            changes[name] = value
    if "max_replica_count" in changes and changes["max_replica_count"] is None:
        minimum = changes.get("min_replica_count", current.min_replica_count)
        changes["max_replica_count"] = max(minimum, 1)
    windows = (
        ("scale_up_window", "scale_up_window_s", DEFAULT_UP_S, "scaleUpWindow"),
        ("scale_down_window", "scale_down_window_s", DEFAULT_DOWN_S, "scaleDownWindow"),
        ("scale_to_zero_window", "scale_to_zero_window_s", DEFAULT_TO_ZERO_S, "scaleToZeroWindow"),
    )
    for wire, attr, default, param in windows:
        if f"autoscaling_policy.{wire}" in paths:
            changes[attr] = _window(getattr(policy, wire), default, param)
    if "autoscaling_policy.load_targets" in paths:
        changes["load_targets"] = dict(policy.load_targets or DEFAULT_LOAD_TARGETS)
    spec = replace(current, **changes)
    check(spec, bounds)
    return spec


def replace_shape(spec: FullSpec, shape_version: str) -> FullSpec:
    """``spec`` deployed from ``shape_version`` (the stored name is the version's)."""
    return replace(spec, deployment_shape=shape_version)


def check(spec: FullSpec, bounds: SpecBounds) -> None:
    """Refuse a spec outside the bounds, naming the field and the bound."""
    if spec.accelerator_type not in ACCELERATOR_TYPES:
        raise InvalidArgument(
            f"acceleratorType {spec.accelerator_type!r} is not one Firebox knows; use one of "
            f"{', '.join(ACCELERATOR_TYPES)}.",
            code="invalid_accelerator_type",
            param="acceleratorType",
        )
    if spec.precision is not None and spec.precision not in PRECISIONS:
        raise InvalidArgument(
            f"precision {spec.precision!r} is not one of {', '.join(PRECISIONS)}.",
            code="invalid_precision",
            param="precision",
        )
    if spec.min_replica_count > spec.max_replica_count:
        raise InvalidArgument(
            f"minReplicaCount ({spec.min_replica_count}) is above maxReplicaCount "
            f"({spec.max_replica_count}); raise maxReplicaCount or lower minReplicaCount.",
            code="invalid_replica_counts",
            param="minReplicaCount",
        )
    for value, param in (
        (spec.scale_up_window_s, "scaleUpWindow"),
        (spec.scale_down_window_s, "scaleDownWindow"),
    ):
        if value > MAX_WINDOW_S:
            raise InvalidArgument(
                f"autoscalingPolicy.{param} is {durations.emit(value)}; it must be at most 1h.",
                code="invalid_autoscaling_window",
                param=f"autoscalingPolicy.{param}",
            )
    floor = bounds.min_scale_to_zero_s
    if not floor <= spec.scale_to_zero_window_s <= MAX_TO_ZERO_S:
        raise InvalidArgument(
            f"autoscalingPolicy.scaleToZeroWindow is {durations.emit(spec.scale_to_zero_window_s)};"
            f" it must be at least {durations.emit(floor)} (the operator's floor) and at most "
            f"{durations.emit(MAX_TO_ZERO_S)}.",
            code="invalid_autoscaling_window",
            param="autoscalingPolicy.scaleToZeroWindow",
        )
    for key, target in spec.load_targets.items():
        if key not in LOAD_TARGET_KEYS:
            raise InvalidArgument(
                f"autoscalingPolicy.loadTargets has an unknown key {key!r}; the keys are "
                f"{', '.join(LOAD_TARGET_KEYS)}.",
                code="invalid_load_target",
                param="autoscalingPolicy.loadTargets",
            )
        too_high = key == "default" and target > 1
        if not math.isfinite(target) or target <= 0 or too_high or target > 1e9:
            bound = "in (0, 1]" if key == "default" else "above 0"
            raise InvalidArgument(
                f"autoscalingPolicy.loadTargets.{key} is {target}; it must be {bound}.",
                code="invalid_load_target",
                param=f"autoscalingPolicy.loadTargets.{key}",
            )


def _window(value: object, default: float, param: str) -> float:
    if value is None or value == "":
        return default
    return durations.parse(value, f"autoscalingPolicy.{param}")
