"""Getting a dataset's files in and out: direct uploads, signed upload and download URLs.

Every byte counts against two bounds the operator sets: one dataset's size
(``dataset_max_bytes``) and the account's storage quota
(``dataset_storage_quota_bytes``, over all its datasets). An upload first
reserves what it may write (the declared size) under a lock of the account,
so two concurrent uploads cannot both take the last free bytes; validation
then replaces the reservation with the bytes actually stored.

Files of a READY dataset never change: jobs may be reading them.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from anyio import CancelScope, to_thread
from sqlalchemy.orm import Session

from firebox.accounts.principal import Principal
from firebox.accounts.roles import Permission
from firebox.clock import Clock
from firebox.errors import FailedPrecondition, InvalidArgument, NotFound, PayloadTooLarge
from firebox.finetune import dataset_repository as repo
from firebox.finetune.dataset_files import files_under
from firebox.finetune.dataset_models import (
    DatasetRow,
    DatasetState,
    staging_prefix,
    storage_prefix,
)
from firebox.finetune.dataset_multipart import stream_file_part
from firebox.finetune.dataset_schemas import Dataset, UploadedFile
from firebox.finetune.dataset_service import DatasetService, not_found
from firebox.storage.blobs import BlobWriter
from firebox.storage.wiring import Storage
from firebox.store.database import Database

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
SHOWN_PROBLEMS = 10  # problems an error message lists (all are on the dataset)


def safe_filename(name: str | None) -> str:
    """A storage-safe file name from what a client sent (its last path part)."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = _UNSAFE.sub("_", base).lstrip("._-")[:200]
    return cleaned or "data.jsonl"


@dataclass(frozen=True, slots=True)
class UploadTicket:
    """Where a direct upload writes, and how much it may write."""

    key: str
    filename: str
    max_bytes: int
    seq: int  # its staging folder


class DatasetUploads:
    """The ``:upload``, ``:getUploadEndpoint``, ``:validateUpload`` and download verbs."""

    def __init__(
        self, datasets: DatasetService, db: Database, clock: Clock, storage: Storage
    ) -> None:
        self._datasets = datasets
        self._db = db
        self._clock = clock
        self._storage = storage

    # -- direct upload (multipart) ----------------------------------------------

    async def receive(
        self,
        principal: Principal,
        account_id: str,
        dataset_id: str,
        content_type: str | None,
        declared: int | None,
        body: AsyncIterator[bytes],
    ) -> UploadedFile:
        """Stream a multipart body's ``file`` part into the dataset, then validate it."""
        principal.require(account_id, Permission.RESOURCES_WRITE)
        tickets: list[UploadTicket] = []

        async def open_writer(filename: str | None) -> BlobWriter:
            ticket = await to_thread.run_sync(
                self.begin, principal, account_id, dataset_id, filename, declared
            )
            tickets.append(ticket)
            return await to_thread.run_sync(self.writer, ticket)

        try:
            writer, size = await stream_file_part(content_type, body, open_writer)
            try:
                await to_thread.run_sync(writer.commit)
            finally:
                await to_thread.run_sync(writer.abort)
            return await to_thread.run_sync(self.finish, account_id, dataset_id, tickets[0], size)
        except BaseException:
            if tickets:
                with CancelScope(shield=True):
                    await to_thread.run_sync(self.release, account_id, dataset_id, tickets[0])
            raise

    def begin(
        self,
        principal: Principal,
        account_id: str,
        dataset_id: str,
        filename: str | None,
        declared: int | None,
    ) -> UploadTicket:
        """Reserve room for one file of at most the direct-upload size."""
        principal.require(account_id, Permission.RESOURCES_WRITE)
        policy = self._datasets.policy
        limit = min(policy.direct_upload_bytes, policy.max_dataset_bytes)
        name = safe_filename(filename)
        with self._db.transaction() as session:
            repo.lock_account(session, account_id)
            row = self._writable(session, account_id, dataset_id)
            room = self._room(session, row)
            wanted = min(declared, limit) if declared is not None else limit
            if wanted > room:
                raise self._over_quota(wanted, room)
            row.reserved_bytes = wanted
            row.upload_seq += 1  # a staging folder of its own: no other upload writes there
            row.update_time = self._clock.now()
            return UploadTicket(
                key=f"{staging_prefix(row, row.upload_seq)}/{name}",
                filename=name,
                max_bytes=min(limit, room),
                seq=row.upload_seq,
            )

    def writer(self, ticket: UploadTicket) -> BlobWriter:
        return self._storage.blobs.writer(ticket.key, max_bytes=ticket.max_bytes)

    def finish(
        self, account_id: str, dataset_id: str, ticket: UploadTicket, size: int
    ) -> UploadedFile:
        """The file is stored: it becomes the dataset's only file, then it is validated."""
        with self._db.transaction() as session:
            row = self._writable(session, account_id, dataset_id)
            earlier = staging_prefix(row)
            row.staging_seq = ticket.seq
            row.upload_manifest = {ticket.filename: size}
            created = row.create_time
        if earlier != staging_prefix(row):
            self._storage.blobs.delete_prefix(earlier)  # an earlier upload's files
        shown = self._datasets.validate_stored(account_id, dataset_id, seq=ticket.seq)
        refuse_invalid(shown)
        return UploadedFile(
            id=shown.name,
            bytes=size,
            created_at=int(created.timestamp()),
            filename=ticket.filename,
        )

    def release(self, account_id: str, dataset_id: str, ticket: UploadTicket) -> None:
        """After an upload failed: its reservation back, its staged file gone if unused."""
        with self._db.transaction() as session:
            row = repo.get_for_update(session, account_id, dataset_id)
            if row is None:
                return
            if row.state != DatasetState.READY.value:
                row.reserved_bytes = 0
            unused = row.staging_seq != ticket.seq or row.state == DatasetState.READY.value
            folder = staging_prefix(row, ticket.seq)
        if unused:
            self._storage.blobs.delete_prefix(folder)

    # -- signed URLs --------------------------------------------------------------

    def upload_urls(
        self,
        principal: Principal,
        account_id: str,
        dataset_id: str,
        sizes: dict[str, int],
        request_base: str,
    ) -> dict[str, str]:
        """Register the dataset's files and sign one PUT URL each, for exactly its size."""
        principal.require(account_id, Permission.RESOURCES_WRITE)
        for filename in sizes:
            if safe_filename(filename) != filename:
                raise InvalidArgument(
                    f"{filename!r} is not a plain file name: use letters, digits, '.', '_' "
                    "and '-', without folders.",
                    code="invalid_file_name",
                    param="filenameToSize",
                )
        total = sum(sizes.values())
        policy = self._datasets.policy
        if total > policy.max_dataset_bytes:
            raise PayloadTooLarge(
                f"The files add up to {total} bytes; a dataset may hold at most "
                f"{policy.max_dataset_bytes}. Split the data into several datasets.",
                code="dataset_too_large",
            )
        with self._db.transaction() as session:
            repo.lock_account(session, account_id)
            row = self._writable(session, account_id, dataset_id)
            room = self._room(session, row)
            if total > room:
                raise self._over_quota(total, room)
            row.reserved_bytes = total
            earlier = staging_prefix(row)
            if row.staging_seq == 0 or row.upload_manifest != dict(sizes):
                # A new file set gets a new staging folder; the same set again (the SDK
                # helper asks again after 45 minutes) keeps the shards already sent.
                row.upload_seq += 1
                row.staging_seq = row.upload_seq
            row.upload_manifest = dict(sizes)
            row.update_time = self._clock.now()
            prefix = staging_prefix(row)
        if earlier != prefix:
            self._storage.blobs.delete_prefix(earlier)
        signer, ttl = self._storage.signer, self._storage.url_ttl_s
        return {
            filename: self._storage.url(
                signer.sign("PUT", f"{prefix}/{filename}", account_id, size=size, ttl_s=ttl),
                request_base,
            )
            for filename, size in sizes.items()
        }

    def validate(self, principal: Principal, account_id: str, dataset_id: str) -> Dataset:
        """Check the files uploaded to the signed URLs; a 400 lists the problems."""
        principal.require(account_id, Permission.RESOURCES_WRITE)
        shown = self._datasets.validate_stored(account_id, dataset_id)
        refuse_invalid(shown)
        return shown

    def download_urls(
        self, principal: Principal, account_id: str, dataset_id: str, request_base: str
    ) -> dict[str, str]:
        """A signed GET URL for each stored file of the dataset."""
        principal.require(account_id, Permission.RESOURCES_READ)
        with self._db.transaction() as session:
            row = repo.get(session, account_id, dataset_id)
            if row is None:
                raise not_found(account_id, dataset_id)
            ready = row.state == DatasetState.READY.value
            prefix = storage_prefix(row) if ready else staging_prefix(row)
        files = files_under(prefix, self._storage.blobs)
        if not files:
            raise NotFound(
                "The dataset has no files yet; upload them first.", code="dataset_has_no_files"
            )
        signer, ttl = self._storage.signer, self._storage.url_ttl_s
        return {
            f.filename: self._storage.url(
                signer.sign("GET", f.key, account_id, size=None, ttl_s=ttl), request_base
            )
            for f in files
        }

    # -- shared steps -------------------------------------------------------------

    def _locked(self, session: Session, account_id: str, dataset_id: str) -> DatasetRow:
        row = repo.get_for_update(session, account_id, dataset_id)
        if row is None:
            raise not_found(account_id, dataset_id)
        return row

    def _writable(self, session: Session, account_id: str, dataset_id: str) -> DatasetRow:
        row = self._locked(session, account_id, dataset_id)
        if row.state == DatasetState.READY.value:
            raise FailedPrecondition(
                f"Dataset {dataset_id!r} is READY and its files cannot change (jobs may read "
                "them); create a new dataset for new data.",
                code="dataset_ready",
            )
        return row

    def _room(self, session: Session, row: DatasetRow) -> int:
        elsewhere = repo.bytes_held(session, row.account_id) - row.total_bytes - row.reserved_bytes
        return max(0, self._datasets.policy.account_quota_bytes - elsewhere)

    def _over_quota(self, wanted: int, room: int) -> FailedPrecondition:
        quota = self._datasets.policy.account_quota_bytes
        return FailedPrecondition(
            f"This upload needs {wanted} bytes and the account's dataset storage quota "
            f"({quota} bytes) has {room} left; delete datasets you no longer need, or ask "
            "the operator to raise FIREBOX_DATASET_STORAGE_QUOTA_BYTES.",
            code="storage_quota_exceeded",
        )


def refuse_invalid(shown: Dataset) -> None:
    """A 400 ``dataset_invalid`` listing the first problems, unless ``shown`` is READY."""
    if shown.state is DatasetState.READY:
        return
    listed = "; ".join(
        f"{p.file}:{p.line}: {p.message}" if p.line else f"{p.file}: {p.message}"
        for p in shown.validation_problems[:SHOWN_PROBLEMS]
    )
    raise InvalidArgument(
        f"Dataset {shown.name!r} is not valid: {listed or shown.status.message}. "
        "Fix the file and upload it again; the dataset lists every problem "
        "(validationProblems).",
        code="dataset_invalid",
    )
