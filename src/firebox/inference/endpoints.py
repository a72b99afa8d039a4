"""OpenAI-compatible inference routes, under both ``/inference/v1`` and ``/v1``.

Bodies are parsed here from raw JSON so that every problem is a 400 in the
OpenAI error shape that names the parameter, before any work is done.
"""

from __future__ import annotations

import json
import math
import secrets
import uuid
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from firebox.catalog.index import ResolvedModel
from firebox.errors import InvalidArgument
from firebox.http.auth import CurrentPrincipal
from firebox.http.errors import describe_invalid
from firebox.http.responses import JSONResponse
from firebox.http.sse import DONE, sse_event
from firebox.http.streaming import CoalescingStream
from firebox.inference.embeddings import EmbeddingService
from firebox.inference.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingCreate,
    refuse_nul,
)
from firebox.inference.serving import Answer, InferenceService, StreamingAnswer

BodyT = TypeVar("BodyT", bound=BaseModel)
# JSON carries a NUL only as this escape (a raw control character is invalid JSON).
_NUL_ESCAPE = b"\\u0000"


async def parse_body(request: Request, model: type[BodyT]) -> BodyT:
    """The request body validated as ``model``; any problem is a 400 naming the field.

    A NUL anywhere in it is refused first (``protocol.refuse_nul``), looked for
    only in a body whose raw bytes hold its escape.
    """
    raw = await request.body()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        where = _non_finite_number(raw)
        if where is not None:
            raise InvalidArgument(
                f"Invalid value for {where!r}: numbers must be finite (NaN, Infinity and "
                "values beyond the double range such as 1e400 are refused).",
                param=where,
            ) from None
        raise InvalidArgument(
            f"The request body is not valid JSON: {exc}", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise InvalidArgument("The request body must be a JSON object.", code="invalid_json")
    if _NUL_ESCAPE in raw:
        refuse_nul(data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, code, param = describe_invalid(exc.errors(), noun="parameter")
        raise InvalidArgument(message, code=code, param=param) from None


class _NonFinite:
    """Stands for a NaN or infinite number while a refused body is parsed again."""


def _non_finite_number(raw: bytes) -> str | None:
    """The dotted path of the first NaN/infinite number in ``raw``, if that is what orjson refused.

    orjson refuses such numbers (``1e400``, ``NaN``, ``Infinity``) but says only
    where in the text. Only refused bodies are parsed a second time, with the
    standard library, which reports them to hooks; the hot path is untouched.
    """

    def number(text: str) -> float | _NonFinite:
        value = float(text)
        return value if math.isfinite(value) else _NonFinite()

    try:
        data = json.loads(raw, parse_float=number, parse_constant=lambda _: _NonFinite())
    except (ValueError, RecursionError):
        return None
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, _NonFinite):
            return path or "body"
        if isinstance(value, dict):
            items = list(value.items())
        elif isinstance(value, list):
            items = [(str(i), v) for i, v in enumerate(value)]
        else:
            continue
        stack.extend((f"{path}.{k}" if path else str(k), v) for k, v in reversed(items))
    return None


def _created(model: ResolvedModel) -> int:
    """Unix time the model entered the catalog (OpenAI's ``created``)."""
    return int(model.create_time.timestamp()) if model.create_time else 0


def _request_id(request: Request) -> str:
    """The request's id for metering: unique, and never chosen by the client alone.

    Usage records are idempotent by this id, so a client-chosen id would let a
    replayed header go unbilled (or collide with another account's request).
    A client's ``x-request-id`` is still echoed and logged; metering appends a
    random suffix to it (``<client id>~<16 hex>``).
    """
    state = request.scope.get("state", {})
    request_id = str(state.get("request_id") or uuid.uuid4().hex)
    if state.get("request_id_from_client", True):
        return f"{request_id}~{secrets.token_hex(8)}"
    return request_id


def _inference(request: Request) -> InferenceService:
    service: InferenceService = request.app.state.services.inference
    return service


def _render(answer: Answer | StreamingAnswer) -> Response:
    if isinstance(answer, Answer):
        return JSONResponse(answer.body, headers=answer.headers)

    async def body() -> Any:
        async for chunk in answer.chunks:
            yield sse_event(chunk)
        yield DONE

    return CoalescingStream(
        body(),
        on_close=answer.close,
        media_type="text/event-stream",
        headers={**answer.headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
    )


def build_router(prefix: str) -> APIRouter:
    """The inference routes under ``prefix`` (``/v1`` or ``/inference/v1``)."""
    router = APIRouter(prefix=prefix, tags=["inference"])

    @router.post("/chat/completions")
    async def chat_completions(request: Request, principal: CurrentPrincipal) -> Response:
        """Chat completion, streaming (SSE) or not, in the OpenAI format."""
        body = await parse_body(request, ChatCompletionRequest)
        return _render(await _inference(request).generate(principal, body, _request_id(request)))

    @router.post("/completions")
    async def completions(request: Request, principal: CurrentPrincipal) -> Response:
        """Text completion, streaming (SSE) or not, in the OpenAI format."""
        body = await parse_body(request, CompletionRequest)
        return _render(await _inference(request).generate(principal, body, _request_id(request)))

    @router.post("/embeddings")
    async def embeddings(request: Request, principal: CurrentPrincipal) -> Response:
        body = await parse_body(request, EmbeddingCreate)
        service: EmbeddingService = request.app.state.services.embeddings
        answer, headers = await service.embed(principal, body, _request_id(request))
        return JSONResponse(answer, headers=headers)

    @router.get("/models")
    async def list_models(request: Request, principal: CurrentPrincipal) -> Response:
        """Models this caller may use, in the OpenAI list shape."""
        models = request.app.state.services.catalog.visible_models(principal.account_id)
        data = [
            {
                "id": m.name,
                "object": "model",
                "created": _created(m),
                "owned_by": m.account_id,
                "kind": m.kind.value,
                "context_length": m.context_length,
            }
            for m in models
        ]
        return JSONResponse({"object": "list", "data": data})

    @router.get("/models/{model_path:path}")
    async def get_model(request: Request, principal: CurrentPrincipal, model_path: str) -> Response:
        m = request.app.state.services.catalog.resolve(principal.account_id, model_path)
        return JSONResponse(
            {
                "id": m.name,
                "object": "model",
                "created": _created(m),
                "owned_by": m.account_id,
                "kind": m.kind.value,
                "context_length": m.context_length,
            }
        )

    return router
