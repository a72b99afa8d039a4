"""The table of supervised fine-tuning jobs."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from firebox.store.base import Base, UTCDateTime


class JobState(StrEnum):
    """The SDK's ``JobState`` values a fine-tuning job goes through."""

    CREATING = "JOB_STATE_CREATING"
    PENDING = "JOB_STATE_PENDING"
    RUNNING = "JOB_STATE_RUNNING"
    CANCELLING = "JOB_STATE_CANCELLING"
    PAUSED = "JOB_STATE_PAUSED"
    COMPLETED = "JOB_STATE_COMPLETED"
    FAILED = "JOB_STATE_FAILED"
    CANCELLED = "JOB_STATE_CANCELLED"


FINAL = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})


class PauseReason(StrEnum):
    """Why a job is paused (``JOB_STATE_PAUSED``), which says what resumes it."""

    SUSPENDED = "SUSPENDED"  # the account is suspended: lifting it resumes the job
    USER = "USER"  # never set by the server itself; :resume resumes


class SftJobRow(Base):
    """One supervised fine-tuning job and its progress.

    ``lease_owner`` / ``lease_until`` say which runner (one per server
    process) trains it; a lease that ran out (its process died) lets another
    runner take the job over from its last checkpoint. ``billed_tokens`` is
    how much of ``trained_tokens`` has been charged into the ledger.
    """

    __tablename__ = "sft_jobs"
    __table_args__ = (UniqueConstraint("account_id", "job_id", name="uq_sft_jobs_account_job"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(
        String(63), ForeignKey("accounts.id", ondelete="CASCADE")
    )
    job_id: Mapped[str] = mapped_column(String(63))
    uid: Mapped[str] = mapped_column(String(32), unique=True)  # never reused, keys charges
    display_name: Mapped[str] = mapped_column(String(255), default="")
    created_by: Mapped[str] = mapped_column(String(255), default="")
    state: Mapped[str] = mapped_column(String(40), index=True)
    status_code: Mapped[str] = mapped_column(String(64), default="OK")
    status_message: Mapped[str] = mapped_column(String(2000), default="")
    pause_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    dataset: Mapped[str] = mapped_column(String(255))
    evaluation_dataset: Mapped[str | None] = mapped_column(String(255), nullable=True)
    eval_auto_carveout: Mapped[bool] = mapped_column(Boolean, default=False)
    base_model: Mapped[str] = mapped_column(String(255))
    warm_start_from: Mapped[str | None] = mapped_column(String(255), nullable=True)
    output_model: Mapped[str] = mapped_column(String(255))
    epochs: Mapped[int] = mapped_column(Integer)
    learning_rate: Mapped[float] = mapped_column(Float)
    warmup_steps: Mapped[int] = mapped_column(Integer, default=0)
    lora_rank: Mapped[int] = mapped_column(Integer)
    max_context_length: Mapped[int] = mapped_column(Integer)
    batch_size: Mapped[int] = mapped_column(Integer)  # tokens
    batch_size_samples: Mapped[int | None] = mapped_column(Integer, nullable=True)
    estimated_tokens: Mapped[int] = mapped_column(BigInteger, default=0)  # dataset x epochs
    estimated_cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    dataset_tokens: Mapped[int] = mapped_column(BigInteger, default=0)  # one epoch, as trained
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    trained_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    billed_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    billed_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    eval_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    tokens_per_second: Mapped[float | None] = mapped_column(Float, nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime())
    update_time: Mapped[datetime] = mapped_column(UTCDateTime())
    start_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    completed_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


def job_name(account_id: str, job_id: str) -> str:
    return f"accounts/{account_id}/supervisedFineTuningJobs/{job_id}"
