"""Wire models of deployed models, shaped as the ``fireworks-ai`` SDK's ``lora`` resource.

The SDK's ``DeployedModel`` fields throughout. An add-on is served
serverless (``deployment`` empty, ``serverless`` true) or on one on-demand
deployment (``deployment`` its name, ``serverless`` false).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from firebox.catalog.deployed_models import DeployedModelRow, DeployedState, deployed_name
from firebox.wire import RequestModel, WireModel


class DeployedModelSpec(RequestModel):
    """The body of a load (``POST``) or a change (``PATCH``), as the SDK sends it.

    ``model`` names the add-on to load; on a PATCH it may only repeat it.
    ``serverless`` and ``default`` are accepted and have no effect (every
    add-on is served serverless, and there is only one place it is served).
    """

    model: str | None = Field(default=None, max_length=200)
    deployment: str | None = Field(default=None, max_length=200)
    display_name: str | None = Field(default=None, max_length=63)
    description: str | None = Field(default=None, max_length=999)
    public: bool | None = None
    serverless: bool | None = None
    default: bool | None = None


class DeployedModel(WireModel):
    """A deployed model as the SDK's ``DeployedModel`` type reads it."""

    name: str
    model: str
    display_name: str
    description: str
    state: DeployedState
    deployment: str | None = None
    serverless: bool = True
    default: bool = True
    public: bool = Field(description="True when every account may call it through this load.")
    create_time: datetime
    update_time: datetime

    @classmethod
    def of(cls, row: DeployedModelRow, model: str, *, public: bool) -> DeployedModel:
        """The answer for ``row``, which loads the add-on called ``model``."""
        return cls(
            name=deployed_name(row.account_id, row.deployed_model_id),
            model=model,
            display_name=row.display_name,
            description=row.description,
            state=DeployedState(row.state),
            deployment=row.deployment,
            serverless=row.deployment is None,
            public=public,
            create_time=row.create_time,
            update_time=row.update_time,
        )


class DeployedModelList(WireModel):
    deployed_models: list[DeployedModel]
    next_page_token: str = ""
    total_size: int
