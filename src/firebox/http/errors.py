"""The one place where errors become HTTP responses.

Every body has the OpenAI shape ``{"error": {"message", "type", "code",
"param"}}`` that both the ``openai`` and ``fireworks-ai`` clients surface,
plus ``status``, the canonical (gRPC-style) code the Fireworks API uses.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from firebox import text
from firebox.errors import FireboxError
from firebox.http.responses import JSONResponse

log = logging.getLogger("firebox.http")

_STATUS_NAMES = {
    400: ("INVALID_ARGUMENT", "invalid_request_error", "invalid_argument"),
    401: ("UNAUTHENTICATED", "authentication_error", "invalid_api_key"),
    403: ("PERMISSION_DENIED", "permission_error", "permission_denied"),
    404: ("NOT_FOUND", "not_found_error", "not_found"),
    405: ("UNIMPLEMENTED", "invalid_request_error", "method_not_allowed"),
    413: ("INVALID_ARGUMENT", "invalid_request_error", "payload_too_large"),
}


def error_body(
    message: str, error_type: str, code: str, param: str | None, status: str
) -> dict[str, object]:
    return {
        "error": {
            "message": message,
            "type": error_type,
            "code": code,
            "param": param,
            "status": status,
        }
    }


def render(exc: FireboxError) -> JSONResponse:
    """The response for a Firebox error."""
    return JSONResponse(
        error_body(exc.message, exc.error_type, exc.code, exc.param, exc.status),
        status_code=exc.http_status,
        headers=exc.headers or None,
    )


def describe_invalid(
    errors: Sequence[Mapping[str, Any]], noun: str = "field"
) -> tuple[str, str, str | None]:
    """(message, code, param) naming the first bad ``noun`` of a Pydantic error list.

    Shared by FastAPI-parsed control-plane bodies (``noun`` "field") and the
    inference routes, which parse their bodies themselves ("parameter").
    """
    if not errors:
        return "The request is invalid.", "invalid_argument", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return (
            "The request body is not valid JSON: " + str(first.get("ctx", {}).get("error", "")),
            "invalid_json",
            None,
        )
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    param = ".".join(loc) or None
    kind = str(first.get("type", ""))
    if kind == "extra_forbidden":
        return (
            f"Unknown {noun} {param!r}; remove it (see /openapi.json for the accepted ones).",
            f"unknown_{noun}",
            param,
        )
    if kind == "missing":
        return f"Missing required {noun} {param!r}.", f"missing_{noun}", param
    if kind == text.CODE:
        # The rule finds the bad string inside a field's raw value (ctx "at").
        inner = str(first.get("ctx", {}).get("at", ""))
        param = ".".join(part for part in (param, inner) if part) or None
        return f"Invalid value for {param!r}: {first.get('msg', '')}.", text.CODE, param
    where = f"Invalid value for {param!r}: " if param else "Invalid request: "
    return where + str(first.get("msg", "")), "invalid_argument", param


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that map every error to the one body shape."""

    @app.exception_handler(FireboxError)
    async def _firebox(_: Request, exc: FireboxError) -> JSONResponse:
        return render(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, code, param = describe_invalid(exc.errors())
        return JSONResponse(
            error_body(message, "invalid_request_error", code, param, "INVALID_ARGUMENT"),
            status_code=400,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status, error_type, code = _STATUS_NAMES.get(
            exc.status_code, ("UNKNOWN", "invalid_request_error", "http_error")
        )
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"No route {request.method} {request.url.path}; see /openapi.json."
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}."
        return JSONResponse(
            error_body(message, error_type, code, None, status),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, _: ClientDisconnect) -> JSONResponse:
        # The client left while its body was being read: nobody reads this answer and
        # nothing failed on our side, so it is neither logged as an error nor a 500.
        # 499 is the status proxies (nginx) record for it.
        log.info("client left during %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body(
                "The client closed the connection before sending its whole request.",
                "invalid_request_error",
                "client_disconnected",
                None,
                "CANCELLED",
            ),
            status_code=499,
            headers={"connection": "close"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = request.headers.get("x-request-id", "")
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body(
                "Internal error; retry later and report the x-request-id if it persists.",
                "internal_error",
                "internal_error",
                None,
                "INTERNAL",
            ),
            status_code=500,
            # Starlette re-raises after this answer and uvicorn then closes the connection;
            # saying so keeps a keep-alive client from sending its next request into a
            # socket being closed (a reset: httpx.ReadError, seen under load).
            headers={"connection": "close"} | ({"x-request-id": request_id} if request_id else {}),
        )
