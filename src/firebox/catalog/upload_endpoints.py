"""Routes of model uploads: ``/v1/accounts/{account}/models/{model}:<method>``.

The ``fireworks-ai`` SDK's ``models.get_upload_endpoint`` (POST),
``validate_upload`` (GET), ``get_download_endpoint`` (GET) and ``prepare``
(POST). Included before the catalog's ``/{model}`` routes, whose path
parameter would otherwise take ``m:validateUpload`` for a model id.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request

from firebox.catalog.deployed_service import AdapterHooks
from firebox.catalog.endpoints import ReadMask
from firebox.catalog.upload_schemas import (
    PrepareRequest,
    SignedUrls,
    UploadEndpointRequest,
    ValidateUploadResult,
)
from firebox.catalog.uploads import ModelUploads
from firebox.errors import InvalidArgument
from firebox.http.auth import CurrentPrincipal
from firebox.storage.wiring import Storage

router = APIRouter(prefix="/v1/accounts/{account}/models", tags=["models"])

_DUMP: dict[str, Any] = {"response_model_by_alias": True}


def _uploads(request: Request) -> ModelUploads:
    uploads: ModelUploads = request.app.state.services.model_uploads
    return uploads


def _absolute(request: Request, paths: dict[str, str]) -> SignedUrls:
    storage: Storage = request.app.state.services.storage
    base = str(request.base_url)
    return SignedUrls(filename_to_signed_urls={n: storage.url(p, base) for n, p in paths.items()})


@router.post("/{model}:getUploadEndpoint", response_model=SignedUrls, **_DUMP)
def get_upload_endpoint(
    request: Request,
    principal: CurrentPrincipal,
    account: str,
    model: str,
    body: Annotated[UploadEndpointRequest, Body()],
) -> SignedUrls:
    """Signed PUT URLs, one per file; each takes exactly the declared size."""
    return _absolute(request, _uploads(request).upload_urls(principal, account, model, body))


@router.get("/{model}:validateUpload", response_model=ValidateUploadResult, **_DUMP)
async def validate_upload(
    request: Request,
    principal: CurrentPrincipal,
    account: str,
    model: str,
    config_only: Annotated[bool, Query(alias="configOnly")] = False,
    skip_hf_config_validation: Annotated[bool, Query(alias="skipHfConfigValidation")] = False,
    trust_remote_code: Annotated[bool, Query(alias="trustRemoteCode")] = False,
) -> ValidateUploadResult:
    """Check what was uploaded; the model becomes READY or the 400 names each problem.

    Every file is always checked, and no code is ever run: ``trustRemoteCode``
    is refused, ``configOnly`` and ``skipHfConfigValidation`` change nothing.
    """
    if trust_remote_code:
        raise InvalidArgument(
            "trustRemoteCode is not supported: uploaded files are read, never executed.",
            code="unsupported_parameter",
            param="trustRemoteCode",
        )
    hooks: AdapterHooks = request.app.state.services.engines
    warnings = await _uploads(request).validate(principal, account, model, hooks)
    return ValidateUploadResult(warnings=warnings)


@router.get("/{model}:getDownloadEndpoint", response_model=SignedUrls, **_DUMP)
def get_download_endpoint(
    request: Request, principal: CurrentPrincipal, account: str, model: str, _: ReadMask
) -> SignedUrls:
    """Signed GET URLs of the model's uploaded files (its own account only)."""
    return _absolute(request, _uploads(request).download_urls(principal, account, model))


@router.post("/{model}:prepare")
def prepare_model(
    request: Request,
    principal: CurrentPrincipal,
    account: str,
    model: str,
    body: Annotated[PrepareRequest, Body()],
) -> dict[str, Any]:
    """Models are served in their uploaded precision; only that is accepted."""
    _uploads(request).prepare(principal, account, model, body.precision)
    return {}
