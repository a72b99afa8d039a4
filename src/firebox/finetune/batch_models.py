"""Tables of batch inference: jobs, their per-line results, and OpenAI-shaped files.

A job is created through either API shape (``api``: Fireworks'
``batchInferenceJobs`` or OpenAI's ``/v1/batches``) and runs the same way. Its
input is a list of blob-store keys (``input_keys``: a dataset's files, or an
uploaded OpenAI file) read line by line; each line's result is a row of
``batch_results`` keyed by (job, line index), written as the line finishes,
so a restarted or taken-over job runs only the lines without one. The usage
of line ``i`` is metered as request ``batch-{uid}-{i}`` (``uid`` never
reused), so a line run twice across a crash is billed once.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from firebox.store.base import Base, UTCDateTime


class JobState(StrEnum):
    """The SDK's ``JobState`` values a batch job takes."""

    CREATING = "JOB_STATE_CREATING"
    PENDING = "JOB_STATE_PENDING"
    RUNNING = "JOB_STATE_RUNNING"
    WRITING_RESULTS = "JOB_STATE_WRITING_RESULTS"
    COMPLETED = "JOB_STATE_COMPLETED"
    FAILED = "JOB_STATE_FAILED"
    CANCELLING = "JOB_STATE_CANCELLING"
    CANCELLED = "JOB_STATE_CANCELLED"
    EXPIRED = "JOB_STATE_EXPIRED"


FINAL_STATES = frozenset(
    {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED}
)
# What a replica may claim (a cancelled job too: its results so far are written).
RUNNABLE_STATES = frozenset(
    {JobState.PENDING, JobState.RUNNING, JobState.WRITING_RESULTS, JobState.CANCELLING}
)


class BatchApi(StrEnum):
    """Which API shape created the job (and how its output is handed back)."""

    FIREWORKS = "fireworks"
    OPENAI = "openai"


class BatchJobRow(Base):
    """One batch inference job of an account."""

    __tablename__ = "batch_jobs"
    __table_args__ = (UniqueConstraint("account_id", "job_id", name="uq_batch_jobs_account_id"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uid: Mapped[str] = mapped_column(String(32), unique=True)  # metering key, never reused
    account_id: Mapped[str] = mapped_column(
        String(63), ForeignKey("accounts.id", ondelete="CASCADE")
    )
    job_id: Mapped[str] = mapped_column(String(63))
    api: Mapped[str] = mapped_column(String(16))
    display_name: Mapped[str] = mapped_column(String(64), default="")
    created_by: Mapped[str] = mapped_column(String(200), default="")
    # The model every line runs on (Fireworks); None: each line's ``body.model`` (OpenAI).
    model: Mapped[str | None] = mapped_column(String(255), nullable=True)
    input_dataset: Mapped[str] = mapped_column(String(200), default="")
    output_dataset: Mapped[str] = mapped_column(String(200), default="")
    input_file_id: Mapped[str] = mapped_column(String(64), default="")
    output_file_id: Mapped[str] = mapped_column(String(64), default="")
    error_file_id: Mapped[str] = mapped_column(String(64), default="")
    endpoint: Mapped[str] = mapped_column(String(64), default="/v1/chat/completions")
    completion_window: Mapped[str] = mapped_column(String(16), default="24h")
    input_keys: Mapped[list[str]] = mapped_column(JSON)
    # Defaults for every line's body (snake_case OpenAI parameters).
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    job_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    state: Mapped[str] = mapped_column(String(32))
    status_code: Mapped[str] = mapped_column(String(32), default="OK")
    status_message: Mapped[str] = mapped_column(Text, default="")
    total: Mapped[int] = mapped_column(BigInteger, default=0)  # input lines, once counted
    completed: Mapped[int] = mapped_column(BigInteger, default=0)
    failed: Mapped[int] = mapped_column(BigInteger, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    # The replica running it and until when its claim holds (renewed as it runs).
    lease_owner: Mapped[str] = mapped_column(String(64), default="")
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    update_time: Mapped[datetime] = mapped_column(UTCDateTime())
    start_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    end_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    expire_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class BatchResultRow(Base):
    """The result of one input line: its output line, as written to the output file."""

    __tablename__ = "batch_results"
    __table_args__ = (UniqueConstraint("job_pk", "line", name="uq_batch_results_job_pk"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    job_pk: Mapped[int] = mapped_column(
        Integer, ForeignKey("batch_jobs.pk", ondelete="CASCADE"), index=True
    )
    line: Mapped[int] = mapped_column(BigInteger)  # 0-based index among non-blank input lines
    ok: Mapped[bool] = mapped_column(Boolean)
    output: Mapped[str] = mapped_column(Text)  # one JSON line, without its newline


class BatchFileRow(Base):
    """A file of OpenAI's files API: a batch input, or a job's output or error file."""

    __tablename__ = "batch_files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # "file-..."
    account_id: Mapped[str] = mapped_column(
        String(63), ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    purpose: Mapped[str] = mapped_column(String(32))  # batch | batch_output
    filename: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(BigInteger)
    key: Mapped[str] = mapped_column(String(400))  # where the blob store keeps it
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
