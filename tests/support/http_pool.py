"""httpx client pools for tests that fan many concurrent requests out to gateways.

httpcore 1.0.9's pool can close a connection it has already handed to a
queued request (encode/httpcore#1110): the connection stays IDLE until the
waiting task runs, and another task's pass over the pool may meanwhile close
it as a surplus keep-alive connection, as expired, or to make room for a
connection to another origin when ``max_connections`` is reached. On a
loaded machine the waiting task runs late, so that window is wide: the
request is then written to a socket its own client closes, the client sees
``httpx.ReadError`` and the gateway a client that left mid-request. This is
the client's bug, not the gateway's.

So a test that fans out uses one client per gateway (no eviction to make
room for another origin), a pool at least as large as the requests it has in
flight (never a surplus to close), and an idle expiry far below the gateway's
keep-alive timeout but long enough that no connection of a busy test expires.
"""

from __future__ import annotations

import httpx


def fan_out_limits(concurrency: int) -> httpx.Limits:
    """Limits for one client to one gateway carrying up to ``concurrency`` requests at once."""
    return httpx.Limits(
        max_connections=concurrency,
        max_keepalive_connections=concurrency,
        keepalive_expiry=30.0,  # the gateway keeps idle connections 75 s
    )
