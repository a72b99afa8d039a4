"""Deadlines for reading a request, and a cap on connections per client address.

uvicorn bounds only the idle time between requests (``timeout_keep_alive``);
a client that sends its headers or body one byte at a time ("slow loris"), or
opens a connection and says nothing, holds the connection and its buffers for
ever. Header deadlines must act before ASGI exists (there is no request yet),
so they live here, in a subclass of uvicorn's httptools protocol that
``firebox.server`` hands to uvicorn as its ``http`` class:

* **header deadline** (``FIREBOX_HEADER_TIMEOUT_S``): from the accept, or from
  the first byte of a later request on a kept-alive connection, to the end of
  the headers. A total, not an idle time, so trickling bytes does not extend it.
* **body deadline** (``FIREBOX_BODY_TIMEOUT_S``): from the end of the headers to
  the end of the body. The clock does not run while the server itself has
  stopped reading (uvicorn's flow control), only while it waits on the client.
* **per-address cap** (``FIREBOX_MAX_CONNECTIONS_PER_CLIENT``): a connection
  beyond the cap from one peer address is answered 429 on its first request
  and closed, without reaching the application.

A late request that can still be answered (bytes of it arrived, nothing has
been sent on the connection) gets a 408 before the close; a connection that
never sent a byte is simply closed. Timers are armed only when a request is
split across reads, so a request that arrives whole costs none.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from uvicorn._types import ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from firebox.http.errors import error_body

log = logging.getLogger("firebox.http")


class _Phase(enum.Enum):
    IDLE = "idle"  # between requests (or before the first byte)
    HEADERS = "headers"  # the first byte of a request arrived, its headers not all
    BODY = "body"  # headers complete, body not


@dataclass
class ConnectionGuard:
    """The limits, and the live connection count per peer address, of one server."""

    header_timeout_s: float
    body_timeout_s: float
    max_per_client: int  # 0: no cap
    # A large upload gets longer: its declared length at this rate is added to the body
    # deadline (0: a flat deadline for every body).
    min_body_bytes_per_s: int = 0
    live: Counter[str] = field(default_factory=Counter)

    def body_limit_s(self, headers: list[tuple[bytes, bytes]]) -> float:
        """The body deadline for a request with ``headers``."""
        if not self.min_body_bytes_per_s:
            return self.body_timeout_s
        for name, value in headers:
            if name == b"content-length":
                try:
                    return self.body_timeout_s + int(value) / self.min_body_bytes_per_s
                except ValueError:
                    break
        return self.body_timeout_s

    def admit(self, address: str) -> bool:
        """Count a new connection from ``address``; False if it is over the cap."""
        if self.max_per_client and self.live[address] >= self.max_per_client:
            return False
        self.live[address] += 1
        return True

    def release(self, address: str) -> None:
        self.live[address] -= 1
        if self.live[address] <= 0:
            del self.live[address]

    def protocol_class(self) -> type[HttpToolsProtocol]:
        """A uvicorn ``http`` protocol class bound to this guard (one per server)."""
        return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"guard": self})


def _json_body(message: str, code: str, grpc_status: str) -> bytes:
    body = json.dumps(error_body(message, "invalid_request_error", code, None, grpc_status))
    return body.encode()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with read deadlines and the per-address cap."""

    guard: ConnectionGuard  # set on the subclass ConnectionGuard.protocol_class makes

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._phase = _Phase.IDLE
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_phase: _Phase | None = None
        self._counted_address: str | None = None
        self._body_limit_s = self.guard.body_timeout_s

    # Connection life

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.client is not None:
            address = self.client[0]
            if self.guard.admit(address):
                self._counted_address = address
            else:
                log.info(
                    "refusing a connection from %s: %d already open "
                    "(FIREBOX_MAX_CONNECTIONS_PER_CLIENT)",
                    address,
                    self.guard.max_per_client,
                )
                self.app = self._refuse_over_cap  # answers its first request, then closes
        self._sync_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        if self._counted_address is not None:
            self.guard.release(self._counted_address)
            self._counted_address = None
        super().connection_lost(exc)

    # Per read and per request: the base class is called directly (no ``super()``
    # object), and the common case (a whole request read, its answer under way,
    # no deadline armed) returns after a few attribute reads.

    def data_received(self, data: bytes) -> None:
        HttpToolsProtocol.data_received(self, data)
        if self._phase is _Phase.IDLE and self._deadline_phase is None:
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                return  # the application's turn: no deadline runs (``_wanted_deadline``)
        if not self.transport.is_closing():
            self._sync_deadline()

    # Parser callbacks: where a request's reading starts and ends

    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        self._phase = _Phase.HEADERS

    def on_headers_complete(self) -> None:
        self._phase = _Phase.BODY
        self._body_limit_s = self.guard.body_limit_s(self.headers)
        HttpToolsProtocol.on_headers_complete(self)

    def on_message_complete(self) -> None:
        self._phase = _Phase.IDLE
        HttpToolsProtocol.on_message_complete(self)

    # Deadlines

    def _wanted_deadline(self) -> _Phase | None:
        """Which deadline should be running now, if any."""
        if self._phase is not _Phase.IDLE:
            return self._phase
        answering = self.cycle is not None and not self.cycle.response_complete
        if answering or self.pipeline or self.timeout_keep_alive_task is not None:
            return None  # the application's turn, or uvicorn's keep-alive timer runs
        # A fresh connection, or bytes that began no request (bare CRLFs) cancelled
        # the keep-alive timer: the next request's headers are due.
        return _Phase.HEADERS

    def _sync_deadline(self) -> None:
        wanted = self._wanted_deadline()
        if wanted is self._deadline_phase:
            return
        self._cancel_deadline()
        if wanted is _Phase.HEADERS:
            self._arm(_Phase.HEADERS, self.guard.header_timeout_s)
        elif wanted is _Phase.BODY:
            self._arm(_Phase.BODY, self._body_limit_s)

    def _arm(self, phase: _Phase, delay_s: float) -> None:
        self._deadline_phase = phase
        self._deadline = self.loop.call_later(delay_s, self._deadline_passed)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = None
        self._deadline_phase = None

    def _deadline_passed(self) -> None:
        phase = self._deadline_phase
        self._deadline = None
        self._deadline_phase = None
        if self.transport.is_closing():
            return
        if phase is _Phase.BODY and self.flow.read_paused:
            # The server stopped reading (a pipelined request, a handler not reading
            # its body yet); the client is not the one holding things up.
            self._arm(_Phase.BODY, self._body_limit_s)
            return
        if phase is _Phase.HEADERS:
            limit, what = self.guard.header_timeout_s, "headers"
            # Answer only a request that began and only if nothing else is being sent.
            answerable = self._phase is _Phase.HEADERS and (
                self.cycle is None or self.cycle.response_complete
            )
        else:
            limit, what = self._body_limit_s, "body"
            answerable = self.cycle is not None and not self.cycle.response_started
        prefix = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        log.info(
            "closing the connection from %s: request %s not in within %gs", prefix, what, limit
        )
        if self.cycle is not None and not self.cycle.response_complete:
            # Wake the handler waiting on the body: it sees a disconnect, and any
            # answer it still sends is dropped (uvicorn's own connection_lost does this).
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        if answerable:
            setting = "FIREBOX_HEADER_TIMEOUT_S" if what == "headers" else "FIREBOX_BODY_TIMEOUT_S"
            self._write_and_close(
                408,
                _json_body(
                    f"The request {what} did not arrive within {limit:g} s; send the whole "
                    f"request promptly (the operator sets the limit with {setting}).",
                    "request_timeout",
                    "DEADLINE_EXCEEDED",
                ),
            )
        else:
            self.transport.close()

    def _write_and_close(self, status: int, body: bytes) -> None:
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()

    # The over-cap answer

    async def _refuse_over_cap(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        body = _json_body(
            f"Too many connections from your address (at most {self.guard.max_per_client} "
            "at once); reuse connections or open fewer, then retry.",
            "too_many_connections",
            "RESOURCE_EXHAUSTED",
        )
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode("ascii")),
                    (b"retry-after", b"1"),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})
