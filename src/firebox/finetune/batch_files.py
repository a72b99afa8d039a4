"""OpenAI's files API, for batches: upload a batch input, read a job's output and error files.

Files live in the blob store under ``batch-files/{account}/{id}``; an upload
is streamed to it chunk by chunk (never held whole), refused at the first
byte past ``max_bytes``.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, BinaryIO

from firebox.accounts.principal import Principal
from firebox.accounts.roles import Permission
from firebox.clock import Clock
from firebox.errors import InvalidArgument, NotFound
from firebox.finetune import batch_repository as repo
from firebox.finetune.batch_models import BatchFileRow
from firebox.finetune.batch_schemas import openai_file
from firebox.storage.blobs import BlobStore
from firebox.store.database import Database

PURPOSES = ("batch",)
CHUNK = 1024 * 1024


def folder(account_id: str, file_id: str) -> str:
    """The blob-store folder of one file (its bytes are ``{folder}/data.jsonl``)."""
    return f"batch-files/{account_id}/{file_id}"


def file_key(account_id: str, file_id: str) -> str:
    return f"{folder(account_id, file_id)}/data.jsonl"


class BatchFileService:
    """Uploads and reads the files of OpenAI-shaped batches."""

    def __init__(self, db: Database, clock: Clock, blobs: BlobStore, max_bytes: int) -> None:
        self._db = db
        self._clock = clock
        self._blobs = blobs
        self.max_bytes = max_bytes

    def upload(
        self, principal: Principal, purpose: str, filename: str, stream: BinaryIO
    ) -> dict[str, Any]:
        """Store ``stream`` as a new file (runs in a worker thread: it does blocking I/O)."""
        principal.require(principal.account_id, Permission.INFERENCE)
        if purpose not in PURPOSES:
            raise InvalidArgument(
                f"purpose {purpose!r} is not served here; upload batch inputs with "
                "purpose 'batch'.",
                param="purpose",
            )
        name = (filename or "input.jsonl").rsplit("/", 1)[-1][:255] or "input.jsonl"
        file_id = f"file-{uuid.uuid4().hex}"
        key = file_key(principal.account_id, file_id)
        writer = self._blobs.writer(key, max_bytes=self.max_bytes)
        try:
            size = 0
            while chunk := stream.read(CHUNK):
                size += len(chunk)
                writer.write(chunk)
            if size == 0:
                raise InvalidArgument(
                    "The file is empty; upload a JSONL file of requests.", param="file"
                )
            writer.commit()
        finally:
            writer.abort()
        return openai_file(self.register(principal.account_id, file_id, purpose, name, size, key))

    def register(
        self, account_id: str, file_id: str, purpose: str, filename: str, size: int, key: str
    ) -> BatchFileRow:
        """Record a stored blob as a file of ``account_id`` (uploads and job outputs)."""
        row = BatchFileRow(
            id=file_id,
            account_id=account_id,
            purpose=purpose,
            filename=filename,
            bytes=size,
            key=key,
            create_time=self._clock.now(),
        )
        with self._db.transaction() as session:
            session.add(row)
        return row

    def get(self, principal: Principal, file_id: str) -> dict[str, Any]:
        return openai_file(self._found(principal, file_id))

    def list(
        self, principal: Principal, purpose: str | None, after: str | None, limit: int
    ) -> dict[str, Any]:
        principal.require(principal.account_id, Permission.INFERENCE)
        with self._db.transaction() as session:
            rows = repo.files(session, principal.account_id, purpose, after, limit + 1)
            data = [openai_file(r) for r in rows[:limit]]
        return {"object": "list", "data": data, "has_more": len(rows) > limit}

    def content(self, principal: Principal, file_id: str) -> tuple[Path, str]:
        """The local file holding the file's bytes, and its name."""
        row = self._found(principal, file_id)
        try:
            return self._blobs.local_path(row.key), row.filename
        except FileNotFoundError:
            raise NotFound(
                f"The content of file {file_id!r} is gone.", code="file_not_found"
            ) from None

    def delete(self, principal: Principal, file_id: str) -> dict[str, Any]:
        row = self._found(principal, file_id)
        with self._db.transaction() as session:
            found = repo.file(session, principal.account_id, file_id)
            if found is not None:
                session.delete(found)
        self._blobs.delete_prefix(row.key.rsplit("/", 1)[0])
        return {"id": file_id, "object": "file", "deleted": True}

    def _found(self, principal: Principal, file_id: str) -> BatchFileRow:
        principal.require(principal.account_id, Permission.INFERENCE)
        with self._db.transaction() as session:
            row = repo.file(session, principal.account_id, file_id)
        if row is None:
            raise NotFound(f"File {file_id!r} was not found.", code="file_not_found")
        return row
