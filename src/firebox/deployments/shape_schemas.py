"""Wire models of deployment shapes and their versions (the SDK's ``DeploymentShape``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import ConfigDict, Field, StrictBool

from firebox.deployments.schemas import LenientRequest
from firebox.wire import WireModel

PRESET_TYPES = (
    "PRESET_TYPE_UNSPECIFIED",
    "MINIMAL",
    "FAST",
    "THROUGHPUT",
    "FULL_PRECISION",
    "AGENTIC_CODING",
    "CHAT",
    "SUMMARIZATION",
)


class ShapeSpec(LenientRequest):
    """An operator's shape (API body or a ``[[deployment_shapes]]`` table of a shapes file)."""

    base_model: str | None = Field(default=None, max_length=255)
    display_name: str | None = Field(default=None, max_length=63)
    description: str | None = Field(default=None, max_length=1000)
    accelerator_type: str | None = Field(default=None, max_length=32)
    accelerator_count: Annotated[int, Field(ge=1, le=64)] | None = None
    precision: str | None = Field(default=None, max_length=32)
    enable_addons: StrictBool | None = None
    max_context_length: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    preset_type: str | None = Field(default=None, max_length=32)
    public: StrictBool | None = None


class DeploymentShape(WireModel):
    model_config = ConfigDict(extra="allow")

    name: str
    base_model: str
    display_name: str = ""
    description: str = ""
    accelerator_type: str
    accelerator_count: int
    precision: str | None = None
    enable_addons: bool = False
    max_context_length: int | None = None
    preset_type: str | None = None
    create_time: datetime | None = None
    update_time: datetime | None = None


class DeploymentShapeList(WireModel):
    deployment_shapes: list[DeploymentShape]
    next_page_token: str = ""
    total_size: int


class DeploymentShapeVersion(WireModel):
    name: str
    create_time: datetime
    snapshot: DeploymentShape
    validated: bool = True
    public: bool = False
    latest_validated: bool = False


class DeploymentShapeVersionList(WireModel):
    deployment_shape_versions: list[DeploymentShapeVersion]
    next_page_token: str = ""
    total_size: int


class MatchDeployment(LenientRequest):
    base_model: str = Field(max_length=255)
    enable_addons: StrictBool | None = None


class MatchCreateRequest(LenientRequest):
    parent: str | None = Field(default=None, max_length=255)
    deployment: MatchDeployment


class MatchRequest(LenientRequest):
    create_deployment_request: MatchCreateRequest


def snapshot_fields(shape: DeploymentShape) -> dict[str, Any]:
    return shape.model_dump(by_alias=True, mode="json", exclude_none=True)
