"""Wire models of model uploads, shaped as the ``fireworks-ai`` SDK's ``models`` methods.

``getUploadEndpoint`` takes ``{"filenameToSize": {name: "<bytes>"}}`` (sizes
as strings, as protobuf renders int64) and answers
``{"filenameToSignedUrls": {name: url}}``; ``validateUpload`` answers
``{"warnings": [...]}``; ``getDownloadEndpoint`` answers signed GET URLs.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from firebox.wire import RequestModel, WireModel

FileSize = Annotated[int, Field(ge=0, le=10**15)]


class UploadEndpointRequest(RequestModel):
    filename_to_size: dict[Annotated[str, Field(min_length=1, max_length=255)], FileSize] = Field(
        min_length=1, description="Every file of the model folder and its size in bytes."
    )
    enable_resumable_upload: bool | None = None
    read_mask: str | None = Field(default=None, max_length=200)


class SignedUrls(WireModel):
    filename_to_signed_urls: dict[str, str]


class ValidateUploadResult(WireModel):
    warnings: list[str] = Field(default_factory=list)


Precision = Literal["PRECISION_UNSPECIFIED", "FP16", "BF16"]


class PrepareRequest(RequestModel):
    precision: str | None = Field(default=None, max_length=32)
    read_mask: str | None = Field(default=None, max_length=200)
