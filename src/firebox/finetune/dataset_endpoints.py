"""Routes of datasets under ``/v1/accounts/{account}/datasets``: the SDK's ``datasets`` resource.

Create (``datasetId`` in the body), get, list, update (PATCH), delete, and
the verbs ``:upload`` (multipart, streamed), ``:getUploadEndpoint``,
``:validateUpload`` and ``:getDownloadEndpoint``. The verb routes come
first: ``/{dataset}`` would otherwise match ``ds:getDownloadEndpoint``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse

from firebox.catalog.endpoints import ReadMask
from firebox.errors import InvalidArgument
from firebox.finetune.dataset_schemas import (
    Dataset,
    DatasetCreate,
    DatasetList,
    DatasetSpec,
    SignedUrls,
    UploadedFile,
    UploadEndpointRequest,
    ValidateUploadRequest,
)
from firebox.finetune.dataset_service import DatasetService
from firebox.finetune.dataset_uploads import DatasetUploads
from firebox.http.auth import CurrentPrincipal
from firebox.http.pagination import Listing

router = APIRouter(prefix="/v1/accounts/{account}/datasets", tags=["datasets"])

_DUMP: dict[str, Any] = {"response_model_by_alias": True}


def _datasets(request: Request) -> DatasetService:
    service: DatasetService = request.app.state.services.datasets
    return service


def _uploads(request: Request) -> DatasetUploads:
    uploads: DatasetUploads = request.app.state.services.dataset_uploads
    return uploads


def _declared(request: Request) -> int | None:
    text = request.headers.get("content-length")
    if text is None:
        return None
    if not text.isdigit():
        raise InvalidArgument("Content-Length is not a number.", code="invalid_upload")
    return int(text)


@router.post("", response_model=Dataset, **_DUMP)
def create_dataset(
    request: Request,
    principal: CurrentPrincipal,
    account: str,
    body: Annotated[DatasetCreate, Body()],
) -> Dataset:
    """Create an empty dataset (files come by upload), or a copy of ``sourceDatasetId``."""
    return _uploads(request).create(principal, account, body)


@router.get("", response_model=DatasetList, **_DUMP)
def list_datasets(
    request: Request, principal: CurrentPrincipal, account: str, listing: Listing
) -> DatasetList:
    return _datasets(request).list(principal, account, listing.page_size, listing.page_token)


@router.post("/{dataset}:upload")
async def upload_dataset(
    request: Request, principal: CurrentPrincipal, account: str, dataset: str
) -> JSONResponse:
    """One file as multipart/form-data (part ``file``), streamed to storage, then validated."""
    uploaded: UploadedFile = await _uploads(request).receive(
        principal,
        account,
        dataset,
        request.headers.get("content-type"),
        _declared(request),
        request.stream(),
    )
    return JSONResponse(uploaded.model_dump())


@router.post("/{dataset}:getUploadEndpoint", response_model=SignedUrls, **_DUMP)
def get_upload_endpoint(
    request: Request,
    principal: CurrentPrincipal,
    account: str,
    dataset: str,
    body: Annotated[UploadEndpointRequest, Body()],
) -> SignedUrls:
    """Signed PUT URLs, one per file and exactly its size; then call ``:validateUpload``."""
    urls = _uploads(request).upload_urls(
        principal, account, dataset, dict(body.filename_to_size), str(request.base_url)
    )
    return SignedUrls(filename_to_signed_urls=urls)


@router.post("/{dataset}:validateUpload", response_model=Dataset, **_DUMP)
def validate_upload(
    request: Request,
    principal: CurrentPrincipal,
    account: str,
    dataset: str,
    _body: Annotated[ValidateUploadRequest | None, Body()] = None,
) -> Dataset:
    """Validate the uploaded files: READY, or a 400 listing the problems with line numbers."""
    return _uploads(request).validate(principal, account, dataset)


@router.get("/{dataset}:getDownloadEndpoint", response_model=SignedUrls, **_DUMP)
def get_download_endpoint(
    request: Request, principal: CurrentPrincipal, account: str, dataset: str, _: ReadMask
) -> SignedUrls:
    urls = _uploads(request).download_urls(principal, account, dataset, str(request.base_url))
    return SignedUrls(filename_to_signed_urls=urls)


@router.get("/{dataset}", response_model=Dataset, **_DUMP)
def get_dataset(
    request: Request, principal: CurrentPrincipal, account: str, dataset: str, _: ReadMask
) -> Dataset:
    return _datasets(request).get(principal, account, dataset)


@router.patch("/{dataset}", response_model=Dataset, **_DUMP)
def update_dataset(
    request: Request, principal: CurrentPrincipal, account: str, dataset: str, body: DatasetSpec
) -> Dataset:
    return _datasets(request).update(principal, account, dataset, body)


@router.delete("/{dataset}")
def delete_dataset(
    request: Request, principal: CurrentPrincipal, account: str, dataset: str
) -> dict[str, Any]:
    """Delete the dataset and its files."""
    _datasets(request).delete(principal, account, dataset)
    return {}
