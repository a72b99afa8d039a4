"""Idle client connections: the gateway must not be the side that closes them first.

A server that closes an idle keep-alive connection just as the client sends
its next request on it loses that request to a reset (``httpx.ReadError``).
uvicorn's default idle timeout (5 s) equals httpx's idle expiry, and a loaded
event loop widens the race to seconds, so the gateway keeps idle connections
for ``FIREBOX_KEEP_ALIVE_TIMEOUT_S`` (75 s by default).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import OPERATOR_KEY
from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.slow

# httpx's and uvicorn's defaults: a connection idle this long is one a client may reuse.
COMMON_CLIENT_IDLE_S = 5.0
REQUEST = b"GET /healthz HTTP/1.1\r\nhost: firebox\r\n\r\n"


def _connect(server: RunningServer) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    return sock


def _exchange(sock: socket.socket) -> bytes:
    """Send one request and read its whole (small, Content-Length) answer."""
    sock.sendall(REQUEST)
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            return answer  # the server closed the connection
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


@pytest.fixture
def default_server(tmp_path: Path) -> Iterator[RunningServer]:
    server = start_server(tmp_path / "data", env={"FIREBOX_ADMIN_KEY": OPERATOR_KEY})
    yield server
    server.stop()


def test_an_idle_connection_outlives_common_client_idle_expiry(
    default_server: RunningServer,
) -> None:
    with _connect(default_server) as sock:
        assert _exchange(sock).startswith(b"HTTP/1.1 200")
        # The idle period is what is under test, not a synchronization: a client such as
        # httpx reuses a connection idle for up to 5 s, so the server must keep it longer.
        time.sleep(COMMON_CLIENT_IDLE_S + 1.0)
        again = _exchange(sock)
    assert again.startswith(b"HTTP/1.1 200"), f"the idle connection was closed: {again!r}"


def test_an_idle_connection_is_still_closed_after_the_configured_timeout(
    tmp_path: Path,
) -> None:
    """Idle connections are reclaimed, after FIREBOX_KEEP_ALIVE_TIMEOUT_S."""
    server = start_server(
        tmp_path / "data",
        env={"FIREBOX_ADMIN_KEY": OPERATOR_KEY, "FIREBOX_KEEP_ALIVE_TIMEOUT_S": "1"},
    )
    try:
        with _connect(server) as sock:
            assert _exchange(sock).startswith(b"HTTP/1.1 200")
            # Blocks until the server closes the idle connection (the 60 s socket timeout
            # is only the failure path).
            assert sock.recv(1) == b""
    finally:
        server.stop()
