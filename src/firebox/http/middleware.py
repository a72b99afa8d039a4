"""ASGI middleware: request ids, access logs, metrics and the body-size cap.

Written as plain ASGI (not ``BaseHTTPMiddleware``) so it adds microseconds,
never buffers a streaming answer, and sees a client disconnect.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from firebox.http.errors import error_body, render
from firebox.http.url_text import url_error
from firebox.telemetry.metrics import Metrics

access_log = logging.getLogger("firebox.access")

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with a 413, declared or streamed.

    Paths under ``exempt_prefixes`` bound their own bodies (a signed upload URL
    carries the exact size it accepts) and are streamed to storage, not parsed;
    so do paths ending in ``exempt_suffixes`` (a dataset's ``:upload``).
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        exempt_prefixes: tuple[str, ...] = (),
        exempt_suffixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt_prefixes = exempt_prefixes
        self.exempt_suffixes = exempt_suffixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (
            (self.exempt_prefixes and scope["path"].startswith(self.exempt_prefixes))
            or (self.exempt_suffixes and scope["path"].endswith(self.exempt_suffixes))
        ):
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    await self._refuse(send)
                    return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # An HTTPException, because FastAPI turns any other error raised
                    # while it reads the body into a generic 400.
                    raise HTTPException(413, detail=self._message())
            return message

        await self.app(scope, limited_receive, send)

    def _message(self) -> str:
        return (
            f"The request body is larger than {self.max_bytes} bytes; send less "
            "(the operator sets the cap with FIREBOX_MAX_BODY_BYTES)."
        )

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(
            error_body(
                self._message(),
                "invalid_request_error",
                "payload_too_large",
                None,
                "INVALID_ARGUMENT",
            )
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class RequestContextMiddleware:
    """Give every request an id (``x-request-id``), log it, and count it.

    It also refuses a URL holding a control character (``url_text.url_error``)
    before any route sees it: one layer fewer than a middleware of its own.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, log_requests: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.log_requests = log_requests
        # Labelled children, looked up once per (method, route, status): label
        # resolution in prometheus-client costs a lock and a dict build per call.
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def _observe(self, method: str, route: str, status: int, elapsed: float) -> None:
        if method not in _METHODS:
            method = "OTHER"  # a client picks the method: keep the label set bounded
        key = (method, route, status)
        series = self._series.get(key)
        if series is None:
            series = (
                self.metrics.requests.labels(method, route, str(status)),
                self.metrics.latency.labels(method, route),
            )
            self._series[key] = series
        series[0].inc()
        series[1].observe(elapsed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")[:128]
                break
        state = scope.setdefault("state", {})
        state["request_id_from_client"] = bool(request_id)
        if not request_id:
            request_id = uuid.uuid4().hex
            scope["headers"] = [*scope["headers"], (b"x-request-id", request_id.encode())]
        state["request_id"] = request_id
        start = time.perf_counter()
        status = 500
        encoded_id = request_id.encode("latin-1")

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", encoded_id))
                message["headers"] = headers
            await send(message)

        self.metrics.in_flight.inc()
        try:
            error = url_error(scope["path"], scope.get("query_string", b""))
            if error is None:
                await self.app(scope, receive, send_with_id)
            else:
                await render(error)(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self._observe(method, template, status, elapsed)
            if self.log_requests:
                principal = scope.get("state", {}).get("principal")
                access_log.info(
                    orjson.dumps(
                        {
                            "event": "request",
                            "requestId": request_id,
                            "method": method,
                            "path": scope["path"],
                            "route": template,
                            "status": status,
                            "durationMs": round(elapsed * 1000, 3),
                            "account": getattr(principal, "account_id", None),
                            "keyId": getattr(principal, "key_id", None),
                            "client": (scope.get("client") or ("", 0))[0],
                        }
                    ).decode()
                )
