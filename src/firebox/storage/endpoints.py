"""``PUT``/``GET /v1/storage/{token}``: the signed URLs Firebox hands out for files.

No API key: the signed token is the authority (``storage/signed.py``). An
upload is streamed to the blob store chunk by chunk, never held whole, and
refused with a 413 at the first byte past the size the URL was signed for;
the blob appears only once every declared byte arrived.
"""

from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

from firebox.errors import InvalidArgument, NotFound
from firebox.storage.wiring import Storage

_RANGE_HEADER = "x-goog-content-length-range"


def _storage(request: Request) -> Storage:
    storage: Storage = request.app.state.services.storage
    return storage


def _declared(request: Request) -> int | None:
    text = request.headers.get("content-length")
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise InvalidArgument("Content-Length is not a number.") from None


def build_router() -> APIRouter:
    """The signed upload and download routes; storage at ``app.state.services.storage``."""
    router = APIRouter(tags=["storage"])

    @router.put("/v1/storage/{token}", status_code=200, include_in_schema=False)
    async def put_blob(request: Request, token: str) -> Response:
        storage = _storage(request)
        signed = storage.signer.verify(token, "PUT")
        size = signed.size
        declared = _declared(request)
        if size is not None and declared is not None and declared != size:
            raise InvalidArgument(
                f"This URL takes exactly {size} bytes, and the request declares {declared}; "
                "ask for a new upload URL with the file's real size.",
                code="size_mismatch",
            )
        limit = size if size is not None else 0
        writer = await to_thread.run_sync(lambda: storage.blobs.writer(signed.key, max_bytes=limit))
        try:
            received = 0
            async for chunk in request.stream():
                if chunk:
                    received += len(chunk)
                    await to_thread.run_sync(writer.write, chunk)
            if received != size:
                raise InvalidArgument(
                    f"The upload ended after {received} of the {size} bytes this URL is for; "
                    "send the whole file.",
                    code="size_mismatch",
                )
            await to_thread.run_sync(writer.commit)
        finally:
            await to_thread.run_sync(writer.abort)
        return Response(status_code=200)

    @router.get("/v1/storage/{token}", include_in_schema=False)
    async def get_blob(request: Request, token: str) -> Response:
        storage = _storage(request)
        signed = storage.signer.verify(token, "GET")
        try:
            path = await to_thread.run_sync(storage.blobs.local_path, signed.key)
        except FileNotFoundError:
            raise NotFound(
                "The file of this URL no longer exists.", code="file_not_found"
            ) from None
        return FileResponse(path, filename=signed.key.rsplit("/", 1)[-1])

    return router
