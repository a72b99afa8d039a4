"""Wire shapes of batch inference: Fireworks' ``BatchInferenceJob`` and OpenAI's batch and file.

The Fireworks shape is camelCase with int64 counts as strings
(``jobProgress``); OpenAI's is snake_case with unix-second times, as the
``openai`` package's ``Batch`` and ``FileObject`` types read them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from firebox.finetune.batch_models import BatchFileRow, BatchJobRow, JobState
from firebox.wire import RequestModel, WireModel

JOBS_SEGMENT = "batchInferenceJobs"


def job_name(account_id: str, job_id: str) -> str:
    return f"accounts/{account_id}/{JOBS_SEGMENT}/{job_id}"


class InferenceParameters(RequestModel):
    """The SDK's ``inferenceParameters`` (``extraBody``: more body fields, as a JSON string)."""

    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=-1)
    n: int | None = Field(default=None, ge=1, le=128)
    extra_body: str | None = Field(default=None, max_length=65536)


class BatchJobSpec(RequestModel):
    """The body of ``POST …/batchInferenceJobs``."""

    display_name: str | None = Field(default=None, max_length=64)
    model: str | None = Field(default=None, max_length=255)
    input_dataset_id: str | None = Field(default=None, max_length=200)
    output_dataset_id: str | None = Field(default=None, max_length=200)
    inference_parameters: InferenceParameters | None = None
    precision: str | None = Field(default=None, max_length=32)
    continued_from_job_name: str | None = Field(default=None, max_length=200)


class JobStatus(WireModel):
    code: str
    message: str


class JobProgress(WireModel):
    percent: int
    total_input_requests: str
    total_processed_requests: str
    successfully_processed_requests: str
    failed_requests: str
    output_rows: str
    input_tokens: str
    output_tokens: str
    cached_input_token_count: str


class BatchInferenceJob(WireModel):
    """A job as the SDK's ``BatchInferenceJob`` reads it."""

    name: str
    display_name: str
    model: str | None
    input_dataset_id: str
    output_dataset_id: str
    inference_parameters: dict[str, Any]
    state: JobState
    status: JobStatus
    job_progress: JobProgress
    created_by: str
    create_time: datetime
    update_time: datetime

    @classmethod
    def of(cls, row: BatchJobRow) -> BatchInferenceJob:
        done = row.completed + row.failed
        return cls(
            name=job_name(row.account_id, row.job_id),
            display_name=row.display_name,
            model=row.model,
            input_dataset_id=row.input_dataset,
            output_dataset_id=row.output_dataset,
            inference_parameters=dict(row.parameters),
            state=JobState(row.state),
            status=JobStatus(code=row.status_code, message=row.status_message),
            job_progress=JobProgress(
                percent=100 * done // row.total if row.total else 0,
                total_input_requests=str(row.total),
                total_processed_requests=str(done),
                successfully_processed_requests=str(row.completed),
                failed_requests=str(row.failed),
                output_rows=str(done),
                input_tokens=str(row.input_tokens),
                output_tokens=str(row.output_tokens),
                cached_input_token_count=str(row.cached_tokens),
            ),
            created_by=row.created_by,
            create_time=row.create_time,
            update_time=row.update_time,
        )


class BatchInferenceJobList(WireModel):
    batch_inference_jobs: list[BatchInferenceJob]
    next_page_token: str = ""
    total_size: int


# -- OpenAI -----------------------------------------------------------------------------------


class OpenAIBatchCreate(RequestModel):
    """The body of ``POST /v1/batches`` (snake_case, as OpenAI names it)."""

    model_config = {**RequestModel.model_config, "alias_generator": None}

    input_file_id: str = Field(max_length=64)
    endpoint: str = Field(max_length=64)
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = None
    output_expires_after: dict[str, Any] | None = None


_OPENAI_STATUS = {
    JobState.CREATING: "validating",
    JobState.PENDING: "validating",
    JobState.RUNNING: "in_progress",
    JobState.WRITING_RESULTS: "finalizing",
    JobState.COMPLETED: "completed",
    JobState.FAILED: "failed",
    JobState.CANCELLING: "cancelling",
    JobState.CANCELLED: "cancelled",
    JobState.EXPIRED: "expired",
}


def _unix(when: datetime | None) -> int | None:
    return int(when.timestamp()) if when is not None else None


def openai_batch(row: BatchJobRow) -> dict[str, Any]:
    """The job as OpenAI's ``Batch`` object."""
    state = JobState(row.state)
    ended = _unix(row.end_time)
    errors = None
    if state == JobState.FAILED:
        errors = {
            "object": "list",
            "data": [{"code": row.status_code, "message": row.status_message, "line": None}],
        }
    return {
        "id": row.job_id,
        "object": "batch",
        "endpoint": row.endpoint,
        "errors": errors,
        "input_file_id": row.input_file_id,
        "completion_window": row.completion_window,
        "status": _OPENAI_STATUS[state],
        "output_file_id": row.output_file_id or None,
        "error_file_id": row.error_file_id or None,
        "created_at": _unix(row.create_time),
        "in_progress_at": _unix(row.start_time),
        "expires_at": _unix(row.expire_time),
        "finalizing_at": None,
        "completed_at": ended if state == JobState.COMPLETED else None,
        "failed_at": ended if state == JobState.FAILED else None,
        "expired_at": ended if state == JobState.EXPIRED else None,
        "cancelling_at": None,
        "cancelled_at": ended if state == JobState.CANCELLED else None,
        "request_counts": {
            "total": row.total,
            "completed": row.completed,
            "failed": row.failed,
        },
        "metadata": row.job_metadata or {},
        "model": row.model,
        "usage": {
            "input_tokens": row.input_tokens,
            "output_tokens": row.output_tokens,
            "total_tokens": row.input_tokens + row.output_tokens,
            "input_tokens_details": {"cached_tokens": row.cached_tokens},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }


def openai_file(row: BatchFileRow) -> dict[str, Any]:
    """The file as OpenAI's ``FileObject``."""
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": _unix(row.create_time),
        "filename": row.filename,
        "purpose": row.purpose,
        "status": "processed",
        "status_details": None,
    }
