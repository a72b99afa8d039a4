"""The blob store interface, and the local-disk store of the embedded mode.

Uploads (datasets, adapters, base-model weights) can be far larger than
memory, so the interface is streaming only: a ``BlobWriter`` takes chunks and
publishes the blob atomically on ``commit`` (a reader never sees half a
file, and an upload cut short leaves nothing), a reader gets a file object.
Keys are ``/``-separated relative paths the services build
(``datasets/{account}/{id}/{file}``); the store refuses anything that could
escape its root. An S3-compatible store implements the same protocol.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from firebox.errors import InvalidArgument, PayloadTooLarge
from firebox.private_files import FILE_MODE, private_dir

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


def check_key(key: str) -> str:
    """``key`` if every ``/``-separated segment is a plain file name; else an error."""
    segments = key.split("/")
    if not key or any(not _SEGMENT.match(s) or s in {".", ".."} for s in segments):
        raise InvalidArgument(
            f"'{key}' is not a valid storage path: use letters, digits, '.', '_' and '-' "
            "in each '/'-separated part, not starting with '.' or '-'.",
            code="invalid_file_name",
        )
    return key


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """One stored blob."""

    key: str
    size: int


class BlobWriter(Protocol):
    """Receives one blob's bytes; nothing is visible until ``commit``."""

    def write(self, chunk: bytes) -> None: ...

    def commit(self) -> int:
        """Publish the blob atomically; returns its size."""
        ...

    def abort(self) -> None:
        """Drop what was written (idempotent; also after commit it does nothing)."""
        ...


class BlobStore(Protocol):
    """Where uploaded files live."""

    def writer(self, key: str, *, max_bytes: int) -> BlobWriter:
        """A writer for ``key`` that refuses (413) more than ``max_bytes``; replaces on commit."""
        ...

    def open(self, key: str) -> BinaryIO:
        """The blob's bytes (``FileNotFoundError`` when missing)."""
        ...

    def size(self, key: str) -> int | None:
        """The blob's size, or None when it does not exist."""
        ...

    def list(self, prefix: str) -> list[BlobInfo]:
        """Blobs whose key starts with ``prefix/`` (sorted by key)."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete every blob under ``prefix/``; returns how many."""
        ...

    def delete(self, key: str) -> bool:
        """Delete one blob; whether it existed."""
        ...

    def move(self, source: str, target: str) -> None:
        """Rename a blob, replacing ``target`` (``FileNotFoundError`` without ``source``)."""
        ...

    def local_path(self, key: str) -> Path:
        """A local file holding the blob (engines and trainers read files)."""
        ...


class _LocalWriter:
    def __init__(self, final: Path, max_bytes: int) -> None:
        self._final = final
        self._max = max_bytes
        private_dir(final.parent)
        self._tmp = final.parent / f".{final.name}.{uuid.uuid4().hex}.part"
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        self._size = 0

    def write(self, chunk: bytes) -> None:
        if self._file is None:
            raise RuntimeError("the writer is closed")
        self._size += len(chunk)
        if self._size > self._max:
            self.abort()
            raise PayloadTooLarge(
                f"The file is larger than the {self._max} bytes allowed for it; upload a "
                "smaller file or ask for an upload URL with the right size.",
                code="file_too_large",
            )
        self._file.write(chunk)

    def commit(self) -> int:
        if self._file is None:
            raise RuntimeError("the writer is closed")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.replace(self._tmp, self._final)
        return self._size

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._tmp.unlink(missing_ok=True)


class LocalBlobStore:
    """Blobs as files under one private directory (the embedded default)."""

    def __init__(self, root: Path) -> None:
        self.root = private_dir(root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def writer(self, key: str, *, max_bytes: int) -> BlobWriter:
        return _LocalWriter(self._path(key), max_bytes)

    def open(self, key: str) -> BinaryIO:
        return self._path(key).open("rb")

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> list[BlobInfo]:
        folder = self._path(prefix)
        if not folder.is_dir():
            return []
        found = [
            BlobInfo(key=f"{prefix}/{p.relative_to(folder).as_posix()}", size=p.stat().st_size)
            for p in _files(folder)
        ]
        return sorted(found, key=lambda b: b.key)

    def delete_prefix(self, prefix: str) -> int:
        folder = self._path(prefix)
        if not folder.is_dir():
            return 0
        try:
            count = sum(1 for _ in _files(folder))
        except FileNotFoundError:
            count = 0
        # Another request may delete the same folder at the same moment: gone is gone.
        shutil.rmtree(folder, onerror=_ignore_missing)
        return count

    def delete(self, key: str) -> bool:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            return False
        return True

    def move(self, source: str, target: str) -> None:
        destination = self._path(target)
        private_dir(destination.parent)
        os.replace(self._path(source), destination)

    def local_path(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(key)
        return path


def _ignore_missing(
    function: object, path: str, info: tuple[type[BaseException], BaseException, object]
) -> None:
    if not isinstance(info[1], FileNotFoundError):
        raise info[1]


def _files(folder: Path) -> Iterator[Path]:
    for path in folder.rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            yield path
