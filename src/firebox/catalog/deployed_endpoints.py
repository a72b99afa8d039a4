"""Routes of deployed models under ``/v1/accounts/{account}/deployedModels``.

The ``fireworks-ai`` SDK's ``lora`` resource: ``load`` (POST), ``list``,
``get``, ``update`` (PATCH) and ``unload`` (DELETE). Loading and unloading
tell the engine serving the add-on's base, so those two handlers are async;
the others are plain ``def`` handlers, run in the thread pool.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request

from firebox.catalog.deployed_schemas import DeployedModel, DeployedModelList, DeployedModelSpec
from firebox.catalog.deployed_service import AdapterHooks, DeployedModelService
from firebox.catalog.endpoints import ReadMask
from firebox.http.auth import CurrentPrincipal
from firebox.http.pagination import Listing

router = APIRouter(prefix="/v1/accounts/{account}/deployedModels", tags=["deployedModels"])

_DUMP: dict[str, Any] = {"response_model_by_alias": True}


def _deployed(request: Request) -> DeployedModelService:
    service: DeployedModelService = request.app.state.services.catalog.deployed_models
    return service


def _engines(request: Request) -> AdapterHooks:
    """The engine router: it tells the engine serving an add-on's base to load or drop it."""
    hooks: AdapterHooks = request.app.state.services.engines
    return hooks


@router.post("", response_model=DeployedModel, **_DUMP)
async def load_lora(
    request: Request,
    principal: CurrentPrincipal,
    account: str,
    body: Annotated[DeployedModelSpec, Body()],
    replace_merged_addon: Annotated[bool, Query(alias="replaceMergedAddon")] = False,
) -> DeployedModel:
    """Load the LoRA add-on ``body.model`` for serving in ``account``."""
    return await _deployed(request).load(
        principal, account, body, _engines(request), replace_merged_addon=replace_merged_addon
    )


@router.get("", response_model=DeployedModelList, **_DUMP)
def list_loras(
    request: Request, principal: CurrentPrincipal, account: str, listing: Listing
) -> DeployedModelList:
    return _deployed(request).list(principal, account, listing.page_size, listing.page_token)


@router.get("/{deployed_model}", response_model=DeployedModel, **_DUMP)
def get_lora(
    request: Request,
    principal: CurrentPrincipal,
    account: str,
    deployed_model: str,
    _: ReadMask,
) -> DeployedModel:
    return _deployed(request).get(principal, account, deployed_model)


@router.patch("/{deployed_model}", response_model=DeployedModel, **_DUMP)
def update_lora(
    request: Request,
    principal: CurrentPrincipal,
    account: str,
    deployed_model: str,
    body: DeployedModelSpec,
) -> DeployedModel:
    """Change the display name or description."""
    return _deployed(request).update(principal, account, deployed_model, body)


@router.delete("/{deployed_model}")
async def unload_lora(
    request: Request, principal: CurrentPrincipal, account: str, deployed_model: str
) -> dict[str, Any]:
    """Unload: the add-on stops being served in ``account``; the add-on itself stays."""
    await _deployed(request).unload(principal, account, deployed_model, _engines(request))
    return {}
