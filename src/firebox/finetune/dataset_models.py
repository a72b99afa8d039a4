"""The table of datasets: JSONL files an account uploads for fine-tuning and batch inference.

A dataset's blobs live under ``datasets/{account}/{pk}/`` (``dataset_root``):
the row's primary key, not its id, so a dataset deleted and created again
under the same id never sees the old files. Uploads land in a staging
folder of their own (``staging/{n}/``, ``staging_prefix``); validation reads
them there and, under the row's lock, moves the files it validated into
``files/`` (``storage_prefix``) as the dataset turns READY. So a READY
dataset's files are exactly the validated ones: an upload still running, or
a signed URL used after validation, writes into a staging folder nobody reads.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from firebox.store.base import Base, UTCDateTime


class DatasetState(StrEnum):
    """The SDK's ``Dataset.state``: files are awaited or being checked, or the dataset is usable."""

    UPLOADING = "UPLOADING"
    READY = "READY"


class DatasetFormat(StrEnum):
    """The SDK's ``Dataset.format``."""

    UNSPECIFIED = "FORMAT_UNSPECIFIED"
    CHAT = "CHAT"
    COMPLETION = "COMPLETION"


class DatasetLayout(StrEnum):
    """What each line of the files holds (Firebox's own, found by the validator).

    ``CHAT`` lines are ``{"messages": [...]}``, ``COMPLETION`` lines
    ``{"prompt", "completion"}``, ``BATCH`` lines OpenAI batch requests
    ``{"custom_id", "body"}``, ``OUTPUT`` the lines a job wrote (not checked).
    """

    UNKNOWN = "UNKNOWN"
    CHAT = "CHAT"
    COMPLETION = "COMPLETION"
    BATCH = "BATCH"
    OUTPUT = "OUTPUT"


class DatasetSource(StrEnum):
    """Where the data came from (the SDK's data source oneof, plus job outputs)."""

    USER_UPLOADED = "userUploaded"
    SPLITTED = "splitted"
    TRANSFORMED = "transformed"
    EVALUATION_RESULT = "evaluationResult"
    JOB_OUTPUT = "jobOutput"


class DatasetRow(Base):
    """One dataset of an account."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("account_id", "dataset_id", name="uq_datasets_account_id"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(
        String(63), ForeignKey("accounts.id", ondelete="CASCADE")
    )
    dataset_id: Mapped[str] = mapped_column(String(63))
    display_name: Mapped[str] = mapped_column(String(64), default="")
    format: Mapped[str] = mapped_column(String(24), default=DatasetFormat.UNSPECIFIED.value)
    layout: Mapped[str] = mapped_column(String(16), default=DatasetLayout.UNKNOWN.value)
    state: Mapped[str] = mapped_column(String(16), default=DatasetState.UPLOADING.value)
    # The SDK's ``status``: a canonical code ("OK", "INVALID_ARGUMENT", ...) and what to do.
    status_code: Mapped[str] = mapped_column(String(32), default="OK")
    status_message: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(String(24), default=DatasetSource.USER_UPLOADED.value)
    source_dataset_id: Mapped[str] = mapped_column(String(200), default="")
    source_job_name: Mapped[str] = mapped_column(String(200), default="")
    external_url: Mapped[str] = mapped_column(String(1000), default="")
    created_by: Mapped[str] = mapped_column(String(200), default="")
    # Counted by the validator; ``example_count`` may be declared on create before that.
    example_count: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    estimated_token_count: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    average_turn_count: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Bytes stored (counted against the account's storage quota), and bytes promised by
    # signed upload URLs not yet used (held against the quota until validation).
    total_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    # Staging folders: the last one handed out, and the one validation reads.
    upload_seq: Mapped[int] = mapped_column(Integer, default=0)
    staging_seq: Mapped[int] = mapped_column(Integer, default=0)
    # ``{file name: size}`` that ``:getUploadEndpoint`` registered last.
    upload_manifest: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The validator's findings: ``[{"file", "line", "message"}]``, bounded.
    problems: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    update_time: Mapped[datetime] = mapped_column(UTCDateTime())


DATASETS_SEGMENT = "datasets"


def dataset_name(account_id: str, dataset_id: str) -> str:
    """The resource name ``accounts/{account}/datasets/{id}``."""
    return f"accounts/{account_id}/{DATASETS_SEGMENT}/{dataset_id}"


def dataset_root(row: DatasetRow) -> str:
    """The blob-store folder of everything of the dataset (deleted with it)."""
    return f"datasets/{row.account_id}/{row.pk}"


def storage_prefix(row: DatasetRow) -> str:
    """The blob-store folder of the dataset's validated files."""
    return f"{dataset_root(row)}/files"


def staging_prefix(row: DatasetRow, seq: int | None = None) -> str:
    """The staging folder ``seq`` (default: the one validation reads) of the dataset."""
    return f"{dataset_root(row)}/staging/{row.staging_seq if seq is None else seq}"
