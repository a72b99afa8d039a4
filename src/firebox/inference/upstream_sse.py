"""Decoding an OpenAI-style server-sent-event stream, incrementally, from bytes.

OpenAI-compatible servers stream ``data: {json}`` events separated by blank
lines and end with ``data: [DONE]``. The decoder works on raw bytes and
splits lines only on LF (and CRLF), as the SSE format says: a generic text
line splitter (``str.splitlines``) would also break on U+2028, U+0085 and
friends, which a model may well emit inside a JSON string. It is fed
whatever the socket delivered and returns the complete events so far, so a
chunk is passed on the moment it arrives.

Anything that is not SSE (a JSON body from a server that ignored
``stream: true``, an HTML error page) is refused as ``MalformedStream``
rather than read as an empty answer.
"""

from __future__ import annotations

from typing import Any

import orjson

from firebox.inference.engine import UpstreamError

DONE = b"[DONE]"
_MAX_LINE_BYTES = 16 * 1024 * 1024
_IGNORED_FIELDS = frozenset({b"event", b"id", b"retry"})


class MalformedStream(UpstreamError):
    """The upstream's stream is not the SSE of an OpenAI-compatible server."""

    default_code = "upstream_malformed_response"


class SseDecoder:
    """Turns stream bytes into the ``data`` payloads of complete events."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._data: list[bytes] = []
        self.done = False  # ``data: [DONE]`` was seen; the rest is ignored

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add ``chunk``; return the payloads of the events it completed."""
        self._buffer += chunk
        payloads: list[bytes] = []
        start = 0
        while not self.done and (end := self._buffer.find(b"\n", start)) != -1:
            line = bytes(self._buffer[start:end])
            start = end + 1
            self._line(line[:-1] if line.endswith(b"\r") else line, payloads)
        if self.done:
            self._buffer.clear()
        else:
            del self._buffer[:start]
        if len(self._buffer) > _MAX_LINE_BYTES:
            raise MalformedStream("The model server sent an over-long stream line.")
        return payloads

    def close(self) -> list[bytes]:
        """The stream ended: return the last event if it lacked its blank line."""
        payloads: list[bytes] = []
        if self._buffer and not self.done:
            line = bytes(self._buffer)
            self._buffer.clear()
            self._line(line[:-1] if line.endswith(b"\r") else line, payloads)
        self._dispatch(payloads)
        return payloads

    def _line(self, line: bytes, payloads: list[bytes]) -> None:
        if not line:
            self._dispatch(payloads)
            return
        if line.startswith(b":"):
            return  # a comment, e.g. a keep-alive ping
        name, _, value = line.partition(b":")
        if name == b"data":
            self._data.append(value[1:] if value.startswith(b" ") else value)
        elif name not in _IGNORED_FIELDS:
            raise MalformedStream(f"The model server sent a stream that is not SSE: {line[:80]!r}")

    def _dispatch(self, payloads: list[bytes]) -> None:
        if self._data and not self.done:
            payload = b"\n".join(self._data)
            self._data = []
            if payload == DONE:
                self.done = True
            else:
                payloads.append(payload)


def decode_object(payload: bytes) -> dict[str, Any]:
    """Parse a stream event (or a whole answer) as the JSON object it must be."""
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise MalformedStream(
            f"The model server sent something that is not JSON: {payload[:80]!r}"
        ) from exc
    if not isinstance(value, dict):
        raise MalformedStream("The model server sent JSON that is not an object.")
    return value
