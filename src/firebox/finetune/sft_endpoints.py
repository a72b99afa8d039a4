"""Routes of ``/v1/accounts/{account}/supervisedFineTuningJobs``, as the SDK calls them.

``create`` takes the job id as the query's ``supervisedFineTuningJobId``;
``:cancel`` and ``:resume`` are custom verbs on the job.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request

from firebox.catalog.endpoints import ReadMask
from firebox.finetune.sft_schemas import SftJob, SftJobCreate, SftJobList
from firebox.finetune.sft_service import SftJobService
from firebox.http.auth import CurrentPrincipal
from firebox.http.pagination import Listing

router = APIRouter(
    prefix="/v1/accounts/{account}/supervisedFineTuningJobs",
    tags=["supervisedFineTuningJobs"],
)

_DUMP: dict[str, Any] = {"response_model_by_alias": True, "response_model_exclude_none": True}


def _jobs(request: Request) -> SftJobService:
    service: SftJobService = request.app.state.services.sft_jobs
    return service


@router.post("", response_model=SftJob, **_DUMP)
async def create_job(
    request: Request,
    principal: CurrentPrincipal,
    account: str,
    body: Annotated[SftJobCreate, Body()],
    job_id: Annotated[str | None, Query(alias="supervisedFineTuningJobId", max_length=63)] = None,
) -> SftJob:
    """Create a job: checks the dataset, base model, output name and money, then queues it."""
    return await _jobs(request).create(principal, account, job_id, body)


@router.get("", response_model=SftJobList, **_DUMP)
def list_jobs(
    request: Request, principal: CurrentPrincipal, account: str, listing: Listing
) -> SftJobList:
    return _jobs(request).list(principal, account, listing.page_size, listing.page_token)


@router.post("/{job}:cancel", response_model=SftJob, **_DUMP)
def cancel_job(
    request: Request,
    principal: CurrentPrincipal,
    account: str,
    job: str,
    _body: Annotated[dict[str, Any] | None, Body()] = None,
) -> SftJob:
    """Stop a job; what it trained is charged and its checkpoint kept for ``:resume``."""
    return _jobs(request).cancel(principal, account, job)


@router.post("/{job}:resume", response_model=SftJob, **_DUMP)
async def resume_job(
    request: Request,
    principal: CurrentPrincipal,
    account: str,
    job: str,
    _body: Annotated[dict[str, Any] | None, Body()] = None,
) -> SftJob:
    """Continue a paused, cancelled or failed job from its last checkpoint."""
    return await _jobs(request).resume(principal, account, job)


@router.get("/{job}", response_model=SftJob, **_DUMP)
def get_job(
    request: Request, principal: CurrentPrincipal, account: str, job: str, _: ReadMask
) -> SftJob:
    return _jobs(request).get(principal, account, job)


@router.delete("/{job}")
def delete_job(
    request: Request, principal: CurrentPrincipal, account: str, job: str
) -> dict[str, Any]:
    _jobs(request).delete(principal, account, job)
    return {}
