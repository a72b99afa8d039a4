"""The multipart ``file`` part goes to storage while the body arrives, never whole in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from firebox.errors import InvalidArgument
from firebox.finetune.dataset_multipart import stream_file_part
from firebox.storage.blobs import BlobWriter

BOUNDARY = "b0undary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
CHUNK = 64 * 1024


class RecordingWriter:
    def __init__(self) -> None:
        self.writes: list[int] = []
        self.data = bytearray()
        self.aborted = False

    def write(self, chunk: bytes) -> None:
        self.writes.append(len(chunk))
        self.data.extend(chunk)

    def commit(self) -> int:
        return len(self.data)

    def abort(self) -> None:
        self.aborted = True


def _body(payload: bytes, *, field: str = "file") -> list[bytes]:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; '
        'filename="t.jsonl"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode()
    whole = head + payload + f"\r\n--{BOUNDARY}--\r\n".encode()
    return [whole[i : i + CHUNK] for i in range(0, len(whole), CHUNK)]


def test_the_file_is_written_chunk_by_chunk_as_the_body_arrives() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, 17 chunks of body
    writer = RecordingWriter()
    seen_before_end: list[int] = []
    names: list[str | None] = []

    async def opened(filename: str | None) -> BlobWriter:
        names.append(filename)
        return writer

    async def arrive() -> AsyncIterator[bytes]:
        chunks = _body(payload)
        for chunk in chunks[:-1]:
            yield chunk
        seen_before_end.append(len(writer.data))  # written before the last piece came
        yield chunks[-1]

    async def main() -> tuple[BlobWriter, int]:
        return await stream_file_part(CONTENT_TYPE, arrive(), opened)

    _, size = anyio.run(main)
    assert size == len(payload) and bytes(writer.data) == payload
    assert names == ["t.jsonl"]
    assert seen_before_end[0] > len(payload) - 2 * CHUNK
    assert max(writer.writes) <= CHUNK and len(writer.writes) >= 16


def test_a_body_without_a_file_part_is_refused() -> None:
    async def arrive() -> AsyncIterator[bytes]:
        for chunk in _body(b"data", field="other"):
            yield chunk

    async def opened(filename: str | None) -> BlobWriter:
        raise AssertionError("no file part: nothing is opened")

    with pytest.raises(InvalidArgument):
        anyio.run(lambda: stream_file_part(CONTENT_TYPE, arrive(), opened))


def test_a_body_cut_short_aborts_the_writer() -> None:
    writer = RecordingWriter()

    async def arrive() -> AsyncIterator[bytes]:
        for chunk in _body(b"x" * 200_000)[:2]:  # the client went away mid-file
            yield chunk

    async def opened(filename: str | None) -> BlobWriter:
        return writer

    with pytest.raises(InvalidArgument):
        anyio.run(lambda: stream_file_part(CONTENT_TYPE, arrive(), opened))
    assert writer.aborted
