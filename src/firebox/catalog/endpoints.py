"""Routes of the model catalog under ``/v1/accounts/{account}/models``.

Thin by design, like the accounts routes: parse, call the service with the
principal, return a schema. Plain ``def`` handlers run in the thread pool.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request

from firebox.catalog.schemas import Model, ModelCreate, ModelList, ModelSpec
from firebox.catalog.service import CatalogService
from firebox.errors import InvalidArgument
from firebox.http.auth import CurrentPrincipal
from firebox.http.pagination import Listing

router = APIRouter(prefix="/v1/accounts/{account}/models", tags=["models"])


def _catalog(request: Request) -> CatalogService:
    service: CatalogService = request.app.state.services.catalog
    return service


def _read_mask(read_mask: Annotated[str | None, Query(alias="readMask")] = None) -> None:
    """The SDK may send ``readMask``; only "everything" is supported."""
    if read_mask and read_mask.strip() not in ("*", "\\*"):
        raise InvalidArgument(
            "readMask is not supported; every field is returned. Omit it or pass '*'.",
            code="unsupported_parameter",
            param="readMask",
        )


_DUMP: dict[str, Any] = {"response_model_by_alias": True}
ReadMask = Annotated[None, Depends(_read_mask)]


@router.post("", response_model=Model, **_DUMP)
def create_model(
    request: Request,
    principal: CurrentPrincipal,
    account: str,
    body: Annotated[ModelCreate, Body()],
    model_id: Annotated[str | None, Query(alias="modelId", max_length=63)] = None,
) -> Model:
    """Create a model; the SDK sends ``{"modelId", "model": {...}}``, ``?modelId=`` also works."""
    return _catalog(request).create(principal, account, model_id, body)


@router.get("", response_model=ModelList, **_DUMP)
def list_models(
    request: Request, principal: CurrentPrincipal, account: str, listing: Listing
) -> ModelList:
    """An account's models; ``/v1/accounts/firebox/models`` lists the public ones for all."""
    return _catalog(request).list(principal, account, listing.page_size, listing.page_token)


@router.get("/{model}", response_model=Model, **_DUMP)
def get_model(
    request: Request, principal: CurrentPrincipal, account: str, model: str, _: ReadMask
) -> Model:
    return _catalog(request).get(principal, account, model)


@router.patch("/{model}", response_model=Model, **_DUMP)
def update_model(
    request: Request, principal: CurrentPrincipal, account: str, model: str, body: ModelSpec
) -> Model:
    """Change the fields the body sets; ``kind`` cannot change."""
    return _catalog(request).update(principal, account, model, body)


@router.delete("/{model}")
def delete_model(
    request: Request, principal: CurrentPrincipal, account: str, model: str
) -> dict[str, Any]:
    """Delete a model; a base model with LoRA add-ons is refused (a 400 naming them)."""
    _catalog(request).delete(principal, account, model)
    return {}
