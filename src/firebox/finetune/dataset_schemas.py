"""Wire models of datasets, shaped as the ``fireworks-ai`` SDK's ``datasets`` resource.

int64 fields (``exampleCount``, ``estimatedTokenCount``, ``filenameToSize``
values) travel as JSON strings, as protobuf renders them; numbers are
accepted too. Firebox adds ``validationProblems`` (the validator's findings,
each with its file and line) and ``totalBytes``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field, PlainSerializer

from firebox.finetune.dataset_models import (
    DatasetFormat,
    DatasetRow,
    DatasetSource,
    DatasetState,
    dataset_name,
)
from firebox.wire import RequestModel, WireModel

MAX_INT64 = 2**63 - 1


def _int64(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if not text.isdigit():
            raise ValueError("must be a whole number (a string of digits)")
        return int(text)
    return value


Int64 = Annotated[
    int,
    BeforeValidator(_int64),
    Field(ge=0, le=MAX_INT64),
    PlainSerializer(str, return_type=str),
]


class SourceRef(RequestModel):
    """``splitted`` / ``transformed``: the dataset this one was made from."""

    source_dataset_id: str | None = Field(default=None, max_length=200)
    original_format: str | None = Field(default=None, max_length=32)


class EvaluationRef(RequestModel):
    evaluation_job_id: str | None = Field(default=None, max_length=200)


class DatasetSpec(RequestModel):
    """The writable fields of a dataset (create and PATCH bodies)."""

    display_name: str | None = Field(default=None, max_length=64)
    example_count: Int64 | None = None
    format: DatasetFormat | None = None
    external_url: str | None = Field(default=None, max_length=1000)
    source_job_name: str | None = Field(default=None, max_length=200)
    eval_protocol: dict[str, Any] | None = None
    user_uploaded: dict[str, Any] | None = None
    splitted: SourceRef | None = None
    transformed: SourceRef | None = None
    evaluation_result: EvaluationRef | None = None


class DatasetCreate(RequestModel):
    """``POST .../datasets``: ``datasetId`` is in the body (unlike the other creates)."""

    dataset_id: str = Field(min_length=1, max_length=63)
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    source_dataset_id: str | None = Field(default=None, max_length=200)


class UploadEndpointRequest(RequestModel):
    """``:getUploadEndpoint``: every file of the dataset with its exact size."""

    filename_to_size: dict[
        Annotated[str, Field(min_length=1, max_length=255)], Annotated[Int64, Field(ge=1)]
    ] = Field(min_length=1, max_length=1000)
    read_mask: str | None = Field(default=None, max_length=200)


class ValidateUploadRequest(RequestModel):
    read_mask: str | None = Field(default=None, max_length=200)


class Status(WireModel):
    code: str
    message: str


class ValidationProblem(WireModel):
    file: str
    line: int
    message: str


class Dataset(WireModel):
    """A dataset as the SDK's ``Dataset`` type reads it."""

    name: str
    display_name: str
    state: DatasetState
    status: Status
    format: DatasetFormat
    example_count: Annotated[int, PlainSerializer(str, return_type=str)] | None = None
    estimated_token_count: Annotated[int, PlainSerializer(str, return_type=str)] | None = None
    average_turn_count: float | None = None
    external_url: str | None = None
    source_job_name: str | None = None
    created_by: str
    create_time: datetime
    update_time: datetime
    user_uploaded: dict[str, Any] | None = None
    splitted: dict[str, Any] | None = None
    transformed: dict[str, Any] | None = None
    evaluation_result: dict[str, Any] | None = None
    total_bytes: Annotated[int, PlainSerializer(str, return_type=str)]
    validation_problems: list[ValidationProblem] = Field(default_factory=list)

    @classmethod
    def of(cls, row: DatasetRow) -> Dataset:
        source = DatasetSource(row.source)
        ref = {"sourceDatasetId": row.source_dataset_id} if row.source_dataset_id else {}
        return cls(
            name=dataset_name(row.account_id, row.dataset_id),
            display_name=row.display_name,
            state=DatasetState(row.state),
            status=Status(code=row.status_code, message=row.status_message),
            format=DatasetFormat(row.format),
            example_count=row.example_count,
            estimated_token_count=row.estimated_token_count,
            average_turn_count=row.average_turn_count,
            external_url=row.external_url or None,
            source_job_name=row.source_job_name or None,
            created_by=row.created_by,
            create_time=row.create_time,
            update_time=row.update_time,
            user_uploaded={} if source is DatasetSource.USER_UPLOADED else None,
            splitted=ref if source is DatasetSource.SPLITTED else None,
            transformed=ref if source is DatasetSource.TRANSFORMED else None,
            evaluation_result={} if source is DatasetSource.EVALUATION_RESULT else None,
            total_bytes=row.total_bytes,
            validation_problems=[ValidationProblem(**p) for p in row.problems or []],
        )


class DatasetList(WireModel):
    datasets: list[Dataset]
    next_page_token: str = ""
    total_size: int


class SignedUrls(WireModel):
    filename_to_signed_urls: dict[str, str]


class UploadedFile(BaseModel):
    """``:upload``'s answer: an OpenAI-file-shaped, snake_case object (as the SDK types it)."""

    id: str
    bytes: int
    created_at: int
    filename: str
    object: str = "file"
    purpose: str = "fine-tune"
