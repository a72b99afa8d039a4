"""What an upstream server's failure means for the user and for the replica.

Each failed attempt is classified once, here, into a ``Failure``: the error
the user will see, whether another replica might do better (retryable), and
whether it counts against the replica's health (ejection). The rules:

- the upstream refused the request itself (4xx): the user's error, shown
  with the upstream's own message (a vLLM context-length 400 reaches the user
  as a 400); no retry, the replica is healthy;
- 429: the replica is overloaded, another may not be; ``RateLimited``;
- 401/403: the gateway's credentials for the upstream are wrong, an
  operator problem: 502, not the user's 4xx;
- 5xx, refused or dropped connections, malformed streams: the replica's
  fault, retried elsewhere while nothing was sent to the user; 502;
- timeouts: 504; a connect timeout is retried, a read timeout is not (the
  user already waited the whole timeout).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from firebox.errors import FireboxError, InvalidArgument, RateLimited
from firebox.inference.engine import UpstreamError, UpstreamTimeout

_MAX_MESSAGE_CHARS = 500


@dataclass(frozen=True, slots=True)
class Failure:
    """How one attempt on one replica went wrong, and what follows from it."""

    error: FireboxError
    retryable: bool  # another replica might succeed
    replica_fault: bool  # counts against the replica's health
    cause: BaseException | None = None


def upstream_message(body: bytes) -> tuple[str, str | None]:
    """The message (and ``param``) of an upstream error body, OpenAI-shaped or not."""
    text = body.decode("utf-8", "replace").strip()[:_MAX_MESSAGE_CHARS]
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return text or "(empty response)", None
    return _message_of(data) or text or "(empty response)", _param_of(data)


def _message_of(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])[:_MAX_MESSAGE_CHARS]
    for value in (error, data.get("message"), data.get("detail")):
        if isinstance(value, str):  # TGI {"error": "..."}, older vLLM, FastAPI
            return value[:_MAX_MESSAGE_CHARS]
    return None


def _param_of(data: Any) -> str | None:
    error = data.get("error") if isinstance(data, dict) else None
    param = error.get("param") if isinstance(error, dict) else None
    return param if isinstance(param, str) else None


def failure_from_status(status: int, body: bytes, headers: Mapping[str, str]) -> Failure:
    """Classify a non-200 answer from the upstream."""
    message, param = upstream_message(body)
    if status == 429:
        retry_after = headers.get("retry-after")
        return Failure(
            RateLimited(
                f"The model server is overloaded: {message}. Retry shortly.",
                code="upstream_overloaded",
                headers={"Retry-After": retry_after} if retry_after else None,
            ),
            retryable=True,
            replica_fault=False,
        )
    if status in (401, 403):
        return Failure(
            UpstreamError(
                f"The model server refused the gateway's credentials (HTTP {status}). "
                "The operator must fix the upstream API key."
            ),
            retryable=False,
            replica_fault=False,
        )
    if status == 408:
        return Failure(
            UpstreamTimeout(f"The model server timed out (HTTP 408): {message}"),
            retryable=False,
            replica_fault=True,
        )
    if 400 <= status < 500:
        return Failure(
            InvalidArgument(message, code="upstream_rejected", param=param),
            retryable=False,
            replica_fault=False,
        )
    return Failure(
        UpstreamError(f"The model server failed (HTTP {status}): {message}"),
        retryable=True,
        replica_fault=True,
    )


def failure_from_transport(exc: httpx.HTTPError) -> Failure:
    """Classify an exception raised by httpx while talking to the upstream."""
    if isinstance(exc, httpx.ConnectTimeout):
        error: FireboxError = UpstreamTimeout("Connecting to the model server timed out.")
        return Failure(error, retryable=True, replica_fault=True, cause=exc)
    if isinstance(exc, httpx.PoolTimeout):
        error = UpstreamTimeout("Too many requests are waiting for the model server.")
        return Failure(error, retryable=True, replica_fault=False, cause=exc)
    if isinstance(exc, httpx.TimeoutException):
        error = UpstreamTimeout("The model server did not answer in time.")
        return Failure(error, retryable=False, replica_fault=True, cause=exc)
    if isinstance(exc, httpx.ConnectError):
        error = UpstreamError("Could not connect to the model server.")
        return Failure(error, retryable=True, replica_fault=True, cause=exc)
    if isinstance(exc, httpx.TransportError):
        error = UpstreamError(f"The connection to the model server failed: {exc or type(exc)}")
        return Failure(error, retryable=True, replica_fault=True, cause=exc)
    error = UpstreamError(f"Calling the model server failed: {exc or type(exc)}")
    return Failure(error, retryable=False, replica_fault=False, cause=exc)


def failure_from_stream(exc: UpstreamError) -> Failure:
    """Classify a stream the upstream started well but broke (malformed, in-band error)."""
    return Failure(exc, retryable=True, replica_fault=True, cause=exc)


def failure_from_error_chunk(chunk: dict[str, Any]) -> Failure | None:
    """An error the upstream reported inside its stream, if ``chunk`` is one."""
    error = chunk.get("error")
    if error is None and chunk.get("object") != "error":
        return None
    code = error.get("code") if isinstance(error, dict) else chunk.get("code")
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    return failure_from_status(status, orjson.dumps(chunk), {})
