"""The blob store on S3-compatible object storage (AWS S3, MinIO, Ceph...), for scale-out.

Same protocol as ``LocalBlobStore``: a writer streams a blob up as a
multipart upload in parts of ``part_bytes`` (so memory holds one part, never
the file), and the object appears only when the upload completes; an abort
drops the parts. Readers stream from ``GetObject``. ``local_path`` keeps a
copy in a local cache folder for the engines and trainers, which read files;
the copy is fetched again when the object's ETag changes.

Keys are the store's keys under an optional ``prefix/`` in one bucket.
``boto3`` is imported only when this store is configured (the ``s3`` extra).
"""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path
from typing import Any, BinaryIO

from firebox.errors import PayloadTooLarge
from firebox.private_files import FILE_MODE, private_dir
from firebox.storage.blobs import BlobInfo, BlobWriter, check_key

MIN_PART_BYTES = 5 * 1024 * 1024  # S3's smallest part but the last
_DELETE_BATCH = 1000  # DeleteObjects takes at most this many keys


class _S3Writer:
    def __init__(self, store: S3BlobStore, key: str, max_bytes: int) -> None:
        self._store = store
        self._key = key
        self._max = max_bytes
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._upload_id: str | None = None
        self._size = 0
        self._closed = False

    def write(self, chunk: bytes) -> None:
        if self._closed:
            raise RuntimeError("the writer is closed")
        self._size += len(chunk)
        if self._size > self._max:
            self.abort()
            raise PayloadTooLarge(
                f"The file is larger than the {self._max} bytes allowed for it; upload a "
                "smaller file or ask for an upload URL with the right size.",
                code="file_too_large",
            )
        self._buffer.extend(chunk)
        while len(self._buffer) >= self._store.part_bytes:
            part = bytes(self._buffer[: self._store.part_bytes])
            del self._buffer[: self._store.part_bytes]
            self._send(part)

    def _send(self, part: bytes) -> None:
        client, bucket = self._store.client, self._store.bucket
        if self._upload_id is None:
            started = client.create_multipart_upload(Bucket=bucket, Key=self._key)
            self._upload_id = str(started["UploadId"])
        number = len(self._parts) + 1
        sent = client.upload_part(
            Bucket=bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=part
        )
        self._parts.append({"PartNumber": number, "ETag": sent["ETag"]})

    def commit(self) -> int:
        if self._closed:
            raise RuntimeError("the writer is closed")
        client, bucket = self._store.client, self._store.bucket
        if self._upload_id is None:
            client.put_object(Bucket=bucket, Key=self._key, Body=bytes(self._buffer))
        else:
            if self._buffer:
                self._send(bytes(self._buffer))
            client.complete_multipart_upload(
                Bucket=bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        self._buffer.clear()
        self._closed = True
        return self._size

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        if self._upload_id is not None:
            self._store.client.abort_multipart_upload(
                Bucket=self._store.bucket, Key=self._key, UploadId=self._upload_id
            )


class _BodyReader(io.RawIOBase):
    """A botocore ``StreamingBody`` as a raw stream, for ``io.BufferedReader``'s ``readline``."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._body.close()
        super().close()


class S3BlobStore:
    """Blobs as objects of one bucket of an S3-compatible service."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        cache_dir: Path,
        *,
        prefix: str = "",
        part_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        if part_bytes < MIN_PART_BYTES:
            raise ValueError(f"S3 parts must be at least {MIN_PART_BYTES} bytes")
        self.client = client
        self.bucket = bucket
        self.part_bytes = part_bytes
        self._prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._cache = private_dir(cache_dir)

    def _object(self, key: str) -> str:
        return self._prefix + check_key(key)

    def writer(self, key: str, *, max_bytes: int) -> BlobWriter:
        return _S3Writer(self, self._object(key), max_bytes)

    def open(self, key: str) -> BinaryIO:
        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self._object(key))
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(key) from None
        return io.BufferedReader(_BodyReader(got["Body"]), buffer_size=256 * 1024)

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            head: dict[str, Any] = self.client.head_object(
                Bucket=self.bucket, Key=self._object(key)
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return head

    def size(self, key: str) -> int | None:
        head = self._head(key)
        return None if head is None else int(head["ContentLength"])

    def _objects(self, prefix: str) -> list[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        found: list[dict[str, Any]] = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._object(prefix) + "/"):
            found.extend(page.get("Contents", []))
        return found

    def list(self, prefix: str) -> list[BlobInfo]:
        start = len(self._prefix)
        found = [BlobInfo(key=o["Key"][start:], size=int(o["Size"])) for o in self._objects(prefix)]
        return sorted(found, key=lambda b: b.key)

    def delete_prefix(self, prefix: str) -> int:
        keys = [o["Key"] for o in self._objects(prefix)]
        for index in range(0, len(keys), _DELETE_BATCH):
            batch = [{"Key": k} for k in keys[index : index + _DELETE_BATCH]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})
        return len(keys)

    def delete(self, key: str) -> bool:
        if self._head(key) is None:
            return False
        self.client.delete_object(Bucket=self.bucket, Key=self._object(key))
        return True

    def move(self, source: str, target: str) -> None:
        """Copy then delete (S3 has no rename); a managed copy handles objects of any size."""
        if self._head(source) is None:
            raise FileNotFoundError(source)
        self.client.copy(
            {"Bucket": self.bucket, "Key": self._object(source)}, self.bucket, self._object(target)
        )
        self.client.delete_object(Bucket=self.bucket, Key=self._object(source))

    def local_path(self, key: str) -> Path:
        """A cached local copy, fetched again when the object changed (its ETag)."""
        head = self._head(key)
        if head is None:
            raise FileNotFoundError(key)
        tag = str(head.get("ETag", "")).strip('"').replace("-", "_") or "none"
        path = self._cache.joinpath(*check_key(key).split("/"))
        marker = path.with_name(f".{path.name}.etag")
        if path.is_file() and marker.is_file() and marker.read_text() == tag:
            return path
        private_dir(path.parent)
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            with os.fdopen(fd, "wb") as out:
                self.client.download_fileobj(self.bucket, self._object(key), out)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        marker.write_text(tag)
        return path


def build_s3_store(
    *,
    bucket: str,
    cache_dir: Path,
    endpoint_url: str | None = None,
    region: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    prefix: str = "",
) -> S3BlobStore:
    """An ``S3BlobStore`` with a boto3 client (credentials from arguments or boto3's chain)."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=Config(retries={"max_attempts": 3, "mode": "standard"}),
    )
    return S3BlobStore(client, bucket, cache_dir, prefix=prefix)
