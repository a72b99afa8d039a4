"""Slow and greedy clients against a real server on loopback (firebox/http/connection_guard.py).

Slow-loris sockets (headers or a body one byte at a time, or nothing at all) are
cut off by the server after the read deadlines while ordinary clients keep being
served; one address past its connection cap is answered 429, another address is
not. Every wait is for an event (the server closing a socket, an answer) under a
generous bound; nothing asserts how long anything took.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import OPERATOR_KEY
from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.slow

HEADER_TIMEOUT_S = 4
BODY_TIMEOUT_S = 4
CLOSE_BOUND_S = 60.0  # far above the deadlines: only a server that never closes fails


def _address(server: RunningServer) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def _connect(server: RunningServer, source: str | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if source:
        sock.bind((source, 0))
    sock.connect(_address(server))
    return sock


def _read_until_closed(sock: socket.socket, bound_s: float = CLOSE_BOUND_S) -> bytes:
    """Everything the server sends until it closes the connection (or resets it)."""
    received = b""
    deadline = time.monotonic() + bound_s
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the server kept the connection open; it sent {received!r}")


def _read_response(sock: socket.socket) -> bytes:
    """One whole response with a Content-Length, on a connection kept alive."""
    data = b""
    sock.settimeout(CLOSE_BOUND_S)
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head


def _error_code(response: bytes) -> str:
    body = response.partition(b"\r\n\r\n")[2]
    return str(json.loads(body)["error"]["code"])


class Trickler:
    """Sends one byte to each socket every tick until stopped or the server closes it."""

    def __init__(self, sockets: list[socket.socket]) -> None:
        self.sockets = sockets
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        live = list(self.sockets)
        while live and not self.stop.wait(0.1):
            for sock in list(live):
                try:
                    sock.send(b"a")
                except OSError:  # closed by the server: the point of the test
                    live.remove(sock)

    def __enter__(self) -> Trickler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


@pytest.fixture(scope="module")
def deadline_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Short read deadlines; the per-address cap left at its default (above the sockets here)."""
    env = {
        "FIREBOX_ADMIN_KEY": OPERATOR_KEY,
        "FIREBOX_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "FIREBOX_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
    }
    server = start_server(tmp_path_factory.mktemp("deadlines"), env=env)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def capped_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Three connections per address; deadlines long enough that held sockets stay."""
    env = {
        "FIREBOX_ADMIN_KEY": OPERATOR_KEY,
        "FIREBOX_MAX_CONNECTIONS_PER_CLIENT": "3",
        "FIREBOX_HEADER_TIMEOUT_S": "600",
    }
    server = start_server(tmp_path_factory.mktemp("capped"), env=env)
    yield server
    server.stop()


def test_slow_loris_is_cut_off_while_others_are_served(deadline_server: RunningServer) -> None:
    server = deadline_server
    headers_slow = []
    for _ in range(8):
        sock = _connect(server)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: firebox\r\nX-Slow: ")
        headers_slow.append(sock)
    # A kept-alive connection whose second request trickles: the deadline restarts per request.
    second_request = _connect(server)
    second_request.sendall(b"GET /healthz HTTP/1.1\r\nHost: firebox\r\n\r\n")
    assert _read_response(second_request).startswith(b"HTTP/1.1 200")
    second_request.sendall(b"GET /healthz HTTP/1.1\r\nHost: firebox\r\nX-Slow: ")
    headers_slow.append(second_request)
    # Bodies that stall after a few bytes, on a route whose handler waits for the body.
    bodies_slow = []
    for _ in range(8):
        sock = _connect(server)
        sock.sendall(
            b"POST /v1/accounts?accountId=slow HTTP/1.1\r\nHost: firebox\r\n"
            b"Authorization: Bearer " + OPERATOR_KEY.encode() + b"\r\n"
            b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"acc'
        )
        bodies_slow.append(sock)
    silent = _connect(server)  # connects and never says a word

    with Trickler(headers_slow):
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for _ in range(20):
                assert client.get("/healthz").status_code == 200
            operator = {"Authorization": f"Bearer {OPERATOR_KEY}"}
            assert client.get("/v1/accounts", headers=operator).status_code == 200

        for sock in headers_slow:
            answer = _read_until_closed(sock)
            # A 408 when the kernel delivered it before the close; the close either way.
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer
        for sock in bodies_slow:
            answer = _read_until_closed(sock)
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert _error_code(answer) == "request_timeout"
        assert _read_until_closed(silent) == b""  # nothing was asked, nothing is answered

    # The server is still fine afterwards.
    assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200
    for sock in [*headers_slow, *bodies_slow, silent]:
        sock.close()


def test_a_request_split_across_reads_is_served(deadline_server: RunningServer) -> None:
    """A client that is merely chunky (headers and body in pieces, promptly) is not cut off."""
    sock = _connect(deadline_server)
    try:
        sock.sendall(b"POST /v1/accounts?accountId=chunky HTTP/1.1\r\nHost: firebox\r\n")
        sock.sendall(b"Authorization: Bearer " + OPERATOR_KEY.encode() + b"\r\n")
        body = b'{"displayName": "Chunky"}'
        sock.sendall(b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
        sock.sendall(body[:5])
        sock.sendall(body[5:])
        head = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 200"), head
    finally:
        sock.close()


def test_connections_past_the_per_address_cap_get_429(capped_server: RunningServer) -> None:
    server = capped_server
    held = []
    for _ in range(3):
        sock = _connect(server)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: firebox\r\n")  # headers never finish
        held.append(sock)
    try:
        extra = _connect(server)
        extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: firebox\r\n\r\n")
        answer = _read_until_closed(extra)  # answered, then closed
        extra.close()
        assert answer.startswith(b"HTTP/1.1 429"), answer
        assert b"retry-after: 1" in answer.lower()
        assert _error_code(answer) == "too_many_connections"

        # Another address on loopback is not affected by 127.0.0.1's connections.
        other = httpx.HTTPTransport(local_address="127.0.0.2")
        with httpx.Client(transport=other, timeout=30) as client:
            assert client.get(f"{server.url}/healthz").status_code == 200
    finally:
        held.pop().close()

    # One held connection gone: 127.0.0.1 gets a slot back once the server sees the close.
    deadline = time.monotonic() + CLOSE_BOUND_S
    status = None
    while time.monotonic() < deadline:
        status = httpx.get(f"{server.url}/healthz", timeout=30).status_code
        if status == 200:
            break
    assert status == 200
    for sock in held:
        sock.close()
