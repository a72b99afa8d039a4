"""Wire models of deployments, field for field with the ``fireworks-ai`` SDK's ``Deployment``.

Requests ignore fields Firebox does not use (``placement``, ``autoTune``,
``expireTime``, the training SDK's proto-only fields ...) rather than refuse
them, as the reference asks; every field it uses is validated. Durations are
accepted as ``"600s"``, ``"10m"``, ``"1h"`` or a number of seconds and always
answered as ``"<n>s"``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StrictBool

from firebox.wire import RequestModel, WireModel

PRECISIONS = (
    "PRECISION_UNSPECIFIED",
    "FP16",
    "FP8",
    "FP8_MM",
    "FP8_AR",
    "FP8_MM_KV_ATTN",
    "FP8_KV",
    "FP8_MM_V2",
    "FP8_V2",
    "FP8_MM_KV_ATTN_V2",
    "NF4",
    "FP4",
    "BF16",
    "FP4_BLOCKSCALED_MM",
    "FP4_MX_MOE",
)

DurationIn = Annotated[str | float | int, Field(union_mode="left_to_right")]
Count = Annotated[int, Field(ge=0, le=1000)]


class LenientRequest(RequestModel):
    """A request body whose unknown fields are ignored (the SDK sends many we do not use)."""

    model_config = ConfigDict(extra="ignore")


class AutoscalingPolicySpec(LenientRequest):
    scale_up_window: DurationIn | None = None
    scale_down_window: DurationIn | None = None
    scale_to_zero_window: DurationIn | None = None
    load_targets: dict[Annotated[str, Field(max_length=64)], float] | None = Field(
        default=None, max_length=16
    )


class DeploymentSpec(LenientRequest):
    """The body of a create (``POST``) or a change (``PATCH``)."""

    base_model: str | None = Field(default=None, max_length=255)
    display_name: str | None = Field(default=None, max_length=63)
    description: str | None = Field(default=None, max_length=1000)
    accelerator_type: str | None = Field(default=None, max_length=32)
    accelerator_count: Annotated[int, Field(ge=1, le=64)] | None = None
    min_replica_count: Count | None = None
    max_replica_count: Count | None = None
    autoscaling_policy: AutoscalingPolicySpec | None = None
    deployment_shape: str | None = Field(default=None, max_length=255)
    enable_addons: StrictBool | None = None
    max_context_length: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    precision: str | None = Field(default=None, max_length=32)


class ScaleRequest(LenientRequest):
    replica_count: Count = 0  # proto3: an absent count is zero ("scale to zero")


class UndeleteRequest(LenientRequest):
    pass


class AutoscalingPolicy(WireModel):
    scale_up_window: str
    scale_down_window: str
    scale_to_zero_window: str
    load_targets: dict[str, float]


class DeploymentStatus(WireModel):
    code: str = "OK"
    message: str = ""


class ReplicaStats(WireModel):
    pending_scheduling_replica_count: int = 0
    downloading_model_replica_count: int = 0
    initializing_replica_count: int = 0
    ready_replica_count: int = 0


class DeploymentEvent(WireModel):
    time: datetime
    kind: str
    detail: str


State = Literal["CREATING", "READY", "UPDATING", "DELETING", "DELETED", "FAILED"]


class Deployment(WireModel):
    """A deployment as the SDK's ``Deployment`` type reads it."""

    name: str
    base_model: str
    display_name: str
    description: str
    accelerator_type: str
    accelerator_count: int
    min_replica_count: int
    max_replica_count: int
    autoscaling_policy: AutoscalingPolicy
    deployment_shape: str | None = None
    enable_addons: bool
    max_context_length: int | None = None
    precision: str | None = None
    state: State
    status: DeploymentStatus
    replica_count: int
    desired_replica_count: int
    replica_stats: ReplicaStats
    create_time: datetime
    update_time: datetime
    delete_time: datetime | None = None
    purge_time: datetime | None = None
    # Firebox: an explicit ``:scale`` in force (None: autoscaling), and recent changes.
    fixed_replica_count: int | None = None
    suspended: bool = False
    recent_events: list[DeploymentEvent] = Field(default_factory=list)


class DeploymentList(WireModel):
    deployments: list[Deployment]
    next_page_token: str = ""
    total_size: int
