"""Streaming one ``file`` part of a multipart/form-data body into a blob writer.

Starlette's ``request.form()`` would spool the whole file first; here the
body is parsed as it arrives (``python-multipart``'s push parser) and each
piece of the ``file`` part goes straight to the blob store, off the event
loop. Other parts are skipped, bounded; a second ``file`` part is refused.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from anyio import to_thread
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from firebox.errors import InvalidArgument
from firebox.storage.blobs import BlobWriter

MAX_OTHER_PART_BYTES = 64 * 1024  # form fields besides the file are ignored, up to this size


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    field_name: bytearray = field(default_factory=bytearray)
    field_value: bytearray = field(default_factory=bytearray)


def boundary_of(content_type: str | None) -> bytes:
    kind, params = parse_options_header(content_type or "")
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise InvalidArgument(
            "Send the file as multipart/form-data with one part named 'file'.",
            code="invalid_upload",
        )
    return boundary


class _Reader:
    """The parser's callbacks, and what they found so far."""

    def __init__(self) -> None:
        self.events: list[tuple[str, bytes]] = []
        self._part = _Part()

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._part.field_name.extend(data[start:end])

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._part.field_value.extend(data[start:end])

    def _header_end(self) -> None:
        part = self._part
        part.headers[bytes(part.field_name).lower()] = bytes(part.field_value)
        part.field_name.clear()
        part.field_value.clear()

    def _headers_finished(self) -> None:
        self.events.append(("headers", self._part.headers.get(b"content-disposition", b"")))
        self._part.headers.clear()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self.events.append(("data", bytes(data[start:end])))

    def _part_end(self) -> None:
        self.events.append(("end", b""))


class _FilePart:
    """Routes the parsed events: the ``file`` part's bytes to the writer, the rest nowhere."""

    def __init__(self, open_writer: Callable[[str | None], Awaitable[BlobWriter]]) -> None:
        self._open = open_writer
        self.writer: BlobWriter | None = None
        self.done = False
        self.size = 0
        self._in_file = False
        self._other = 0

    async def handle(self, events: list[tuple[str, bytes]]) -> None:
        pending: list[bytes] = []
        for kind, value in events:
            if kind == "headers":
                name, filename = _disposition(value)
                self._in_file = name == "file"
                if self._in_file and (self.writer is not None or self.done):
                    raise InvalidArgument("Send one part named 'file'.", code="invalid_upload")
                if self._in_file:
                    self.writer = await self._open(filename)
            elif kind == "data" and self._in_file:
                pending.append(value)
            elif kind == "data":
                self._other += len(value)
                if self._other > MAX_OTHER_PART_BYTES:
                    raise InvalidArgument(
                        "Only the 'file' part may be large.", code="invalid_upload"
                    )
            elif kind == "end" and self._in_file:
                self.done, self._in_file = True, False
        if pending and self.writer is not None:
            joined = b"".join(pending)
            self.size += len(joined)
            await to_thread.run_sync(self.writer.write, joined)


async def stream_file_part(
    content_type: str | None,
    body: AsyncIterator[bytes],
    open_writer: Callable[[str | None], Awaitable[BlobWriter]],
) -> tuple[BlobWriter, int]:
    """Write the ``file`` part through the writer ``open_writer(filename)`` returns.

    Returns the writer (not yet committed) and the bytes written. On any
    error the writer is aborted.
    """
    reader = _Reader()
    parser = MultipartParser(boundary_of(content_type), reader.callbacks())  # type: ignore[arg-type]
    target = _FilePart(open_writer)
    try:
        async for chunk in body:
            try:
                parser.write(chunk)
            except MultipartParseError as exc:
                raise _malformed(exc) from None
            await target.handle(reader.events)
            reader.events.clear()
        try:
            parser.finalize()
        except MultipartParseError as exc:
            raise _malformed(exc) from None
        if target.writer is None or not target.done:
            raise InvalidArgument(
                "The body has no complete part named 'file'; send the dataset file in it.",
                code="invalid_upload",
            )
        return target.writer, target.size
    except BaseException:
        if target.writer is not None:
            await to_thread.run_sync(target.writer.abort)
        raise


def _disposition(value: bytes) -> tuple[str, str | None]:
    _, params = parse_options_header(value)
    name = params.get(b"name", b"").decode("latin-1")
    filename = params.get(b"filename")
    return name, filename.decode("utf-8", "replace") if filename is not None else None


def _malformed(exc: Exception) -> InvalidArgument:
    return InvalidArgument(
        f"The multipart body is malformed ({exc}); send the file as multipart/form-data.",
        code="invalid_upload",
    )
