"""OpenAI's batch API over the same jobs: ``/v1/files`` and ``/v1/batches``.

What ``client.files.create(purpose="batch")``, ``client.batches.create``,
``retrieve``, ``list``, ``cancel`` and ``client.files.content`` of the
``openai`` package send. An upload is streamed (multipart parts are spooled
to disk by the form parser, then copied to the blob store in chunks).
"""

from __future__ import annotations

from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from starlette.datastructures import UploadFile

from firebox.errors import InvalidArgument, PayloadTooLarge
from firebox.finetune.batch_files import BatchFileService
from firebox.finetune.batch_schemas import OpenAIBatchCreate
from firebox.finetune.batch_service import BatchJobService
from firebox.http.auth import CurrentPrincipal
from firebox.http.responses import JSONResponse

MULTIPART_SLACK = 64 * 1024  # boundaries and the purpose field around the file


def _files(request: Request) -> BatchFileService:
    service: BatchFileService = request.app.state.services.batch.files
    return service


def _jobs(request: Request) -> BatchJobService:
    service: BatchJobService = request.app.state.services.batch.jobs
    return service


def _limit(limit: int | None) -> int:
    if limit is None:
        return 20
    if not 1 <= limit <= 100:
        raise InvalidArgument("limit must be between 1 and 100.", param="limit")
    return limit


def build_router(prefix: str = "/v1") -> APIRouter:
    router = APIRouter(prefix=prefix, tags=["openai-batch"])

    @router.post("/files")
    async def upload_file(request: Request, principal: CurrentPrincipal) -> JSONResponse:
        files = _files(request)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > files.max_bytes + MULTIPART_SLACK:
            raise PayloadTooLarge(
                f"The file is larger than the {files.max_bytes} bytes allowed; split it.",
                code="file_too_large",
            )
        if "multipart/form-data" not in request.headers.get("content-type", ""):
            raise InvalidArgument(
                "Upload the file as multipart/form-data with the parts 'file' and 'purpose'.",
                param="file",
            )
        async with request.form(max_files=1, max_fields=8) as form:
            upload, purpose = form.get("file"), form.get("purpose")
            if not isinstance(upload, UploadFile):
                raise InvalidArgument("The 'file' part is missing.", param="file")
            if not isinstance(purpose, str):
                raise InvalidArgument(
                    "The 'purpose' part is missing; use 'batch'.", param="purpose"
                )
            answer = await to_thread.run_sync(
                files.upload, principal, purpose, upload.filename or "", upload.file
            )
        return JSONResponse(answer)

    @router.get("/files")
    def list_files(
        request: Request,
        principal: CurrentPrincipal,
        purpose: str | None = None,
        after: str | None = None,
        limit: Annotated[int | None, Query()] = None,
    ) -> JSONResponse:
        return JSONResponse(_files(request).list(principal, purpose, after, _limit(limit)))

    @router.get("/files/{file_id}")
    def get_file(request: Request, principal: CurrentPrincipal, file_id: str) -> JSONResponse:
        return JSONResponse(_files(request).get(principal, file_id))

    @router.get("/files/{file_id}/content")
    def file_content(request: Request, principal: CurrentPrincipal, file_id: str) -> FileResponse:
        path, name = _files(request).content(principal, file_id)
        return FileResponse(path, filename=name, media_type="application/jsonl")

    @router.delete("/files/{file_id}")
    def delete_file(request: Request, principal: CurrentPrincipal, file_id: str) -> JSONResponse:
        return JSONResponse(_files(request).delete(principal, file_id))

    @router.post("/batches")
    def create_batch(
        request: Request, principal: CurrentPrincipal, body: OpenAIBatchCreate
    ) -> JSONResponse:
        return JSONResponse(_jobs(request).create_openai(principal, body))

    @router.get("/batches")
    def list_batches(
        request: Request,
        principal: CurrentPrincipal,
        after: str | None = None,
        limit: Annotated[int | None, Query()] = None,
    ) -> JSONResponse:
        return JSONResponse(_jobs(request).list_openai(principal, after, _limit(limit)))

    @router.get("/batches/{batch_id}")
    def get_batch(request: Request, principal: CurrentPrincipal, batch_id: str) -> JSONResponse:
        return JSONResponse(_jobs(request).get_openai(principal, batch_id))

    @router.post("/batches/{batch_id}/cancel")
    def cancel_batch(request: Request, principal: CurrentPrincipal, batch_id: str) -> JSONResponse:
        return JSONResponse(_jobs(request).cancel_openai(principal, batch_id))

    return router
