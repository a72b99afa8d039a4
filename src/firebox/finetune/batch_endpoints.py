"""Routes of Fireworks' ``batchInferenceJobs`` under ``/v1/accounts/{account}``.

The ``fireworks-ai`` SDK's ``batch_inference_jobs``: create (id as the
``batchInferenceJobId`` query parameter), get, list and delete; it has no
cancel (deleting a running job stops it).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request

from firebox.finetune.batch_schemas import BatchInferenceJob, BatchInferenceJobList, BatchJobSpec
from firebox.finetune.batch_service import BatchJobService
from firebox.http.auth import CurrentPrincipal
from firebox.http.pagination import Listing

_DUMP: dict[str, Any] = {"response_model_by_alias": True}


def _jobs(request: Request) -> BatchJobService:
    service: BatchJobService = request.app.state.services.batch.jobs
    return service


def build_router() -> APIRouter:
    router = APIRouter(prefix="/v1/accounts/{account}/batchInferenceJobs", tags=["batch"])

    @router.post("", response_model=BatchInferenceJob, **_DUMP)
    def create_job(
        request: Request,
        principal: CurrentPrincipal,
        account: str,
        body: Annotated[BatchJobSpec, Body()],
        job_id: Annotated[str | None, Query(alias="batchInferenceJobId", max_length=63)] = None,
    ) -> BatchInferenceJob:
        """Create a job: it waits (PENDING) until a replica runs it."""
        return _jobs(request).create(principal, account, job_id, body)

    @router.get("", response_model=BatchInferenceJobList, **_DUMP)
    def list_jobs(
        request: Request, principal: CurrentPrincipal, account: str, listing: Listing
    ) -> BatchInferenceJobList:
        return _jobs(request).list(principal, account, listing.page_size, listing.page_token)

    @router.get("/{job_id:path}", response_model=BatchInferenceJob, **_DUMP)
    def get_job(
        request: Request, principal: CurrentPrincipal, account: str, job_id: str
    ) -> BatchInferenceJob:
        return _jobs(request).get(principal, account, job_id)

    @router.delete("/{job_id:path}")
    def delete_job(
        request: Request, principal: CurrentPrincipal, account: str, job_id: str
    ) -> dict[str, Any]:
        _jobs(request).delete(principal, account, job_id)
        return {}

    return router
