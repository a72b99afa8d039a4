"""Wire models of ``supervisedFineTuningJobs``, shaped as the ``fireworks-ai`` SDK sends them.

Fields Firebox trains with are validated here; fields of the hosted
service that do not apply (Weights & Biases, regions, turbo, MTP, ...) are a
400 naming them rather than silently ignored. ``earlyStop`` is accepted and
has no effect beyond the epochs asked for (stated in docs/api.md).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field, model_validator

from firebox.finetune.sft_models import JobState, SftJobRow, job_name
from firebox.wire import RequestModel, WireModel

MAX_EPOCHS = 100
MAX_LORA_RANK = 64


class WandbConfig(RequestModel):
    """Only ``enabled: false`` is accepted (the SDK sends it by default)."""

    enabled: bool = False
    api_key: str | None = Field(default=None, max_length=512)
    entity: str | None = Field(default=None, max_length=255)
    project: str | None = Field(default=None, max_length=255)
    run_id: str | None = Field(default=None, max_length=255)


class SftJobCreate(RequestModel):
    """The body of ``POST .../supervisedFineTuningJobs``."""

    dataset: str = Field(min_length=1, max_length=255)
    base_model: str | None = Field(default=None, max_length=255)
    warm_start_from: str | None = Field(default=None, max_length=255)
    output_model: str | None = Field(default=None, max_length=255)
    evaluation_dataset: str | None = Field(default=None, max_length=255)
    eval_auto_carveout: bool = False
    display_name: str = Field(default="", max_length=255)
    epochs: int = Field(default=1, ge=1, le=MAX_EPOCHS)
    learning_rate: float = Field(default=1e-4, gt=0, le=1)
    learning_rate_warmup_steps: int = Field(default=0, ge=0, le=1_000_000)
    lora_rank: int = Field(default=8, ge=4, le=MAX_LORA_RANK)
    max_context_length: int | None = Field(default=None, ge=16, le=1_048_576)
    batch_size: int | None = Field(default=None, ge=1, le=10_000_000, description="tokens")
    batch_size_samples: int | None = Field(default=None, ge=1, le=100_000)
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=1)
    optimizer_weight_decay: float = Field(default=0.01, ge=0, le=1)
    early_stop: bool = False
    nodes: int = Field(default=1, ge=1, le=1)
    wandb_config: WandbConfig | None = None

    @model_validator(mode="after")
    def _one_start(self) -> SftJobCreate:
        if bool(self.base_model) == bool(self.warm_start_from):
            raise ValueError("give exactly one of baseModel or warmStartFrom (a LoRA add-on)")
        if self.wandb_config is not None and self.wandb_config.enabled:
            raise ValueError("Weights & Biases logging is not available; omit wandbConfig")
        return self


class Status(WireModel):
    code: str = "OK"
    message: str = ""


class Money(WireModel):
    """``google.type.Money``: whole units as an int64 string, and nanos."""

    currency_code: str = "USD"
    units: str
    nanos: int

    @classmethod
    def of_micros(cls, micros: int) -> Money:
        return cls(units=str(micros // 1_000_000), nanos=(micros % 1_000_000) * 1000)


class JobProgress(WireModel):
    """The shared ``jobProgress`` of the SDK, with the training figures Firebox adds."""

    percent: int  # whole percent: the SDK types it as an int
    epoch: int
    step: int
    total_steps: int
    trained_tokens: str  # int64 as a string, as every count on this wire
    dataset_tokens: str
    loss: float | None = None
    eval_loss: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None


class SftJob(WireModel):
    """A supervised fine-tuning job as the API answers it."""

    name: str
    display_name: str
    state: JobState
    status: Status
    create_time: datetime
    update_time: datetime
    completed_time: datetime | None = None
    created_by: str
    dataset: str
    evaluation_dataset: str | None = None
    eval_auto_carveout: bool
    base_model: str
    warm_start_from: str | None = None
    output_model: str
    epochs: int
    learning_rate: float
    learning_rate_warmup_steps: int
    lora_rank: int
    max_context_length: int
    batch_size: int
    batch_size_samples: int | None = None
    estimated_cost: Money
    billed_cost: Money  # charged into the ledger so far
    billed_tokens: str
    job_progress: JobProgress

    @classmethod
    def of(cls, row: SftJobRow) -> SftJob:
        total = row.total_steps
        percent = 100 if row.state == JobState.COMPLETED else 0
        if total and row.state != JobState.COMPLETED:
            percent = min(100 * row.step // total, 99)
        eta = None
        if row.tokens_per_second and row.state == JobState.RUNNING and row.dataset_tokens:
            left = row.dataset_tokens * row.epochs - row.trained_tokens
            eta = round(max(left, 0) / row.tokens_per_second, 1)
        return cls(
            name=job_name(row.account_id, row.job_id),
            display_name=row.display_name,
            state=JobState(row.state),
            status=Status(code=row.status_code, message=row.status_message),
            create_time=row.create_time,
            update_time=row.update_time,
            completed_time=row.completed_time,
            created_by=row.created_by,
            dataset=row.dataset,
            evaluation_dataset=row.evaluation_dataset,
            eval_auto_carveout=row.eval_auto_carveout,
            base_model=row.base_model,
            warm_start_from=row.warm_start_from,
            output_model=row.output_model,
            epochs=row.epochs,
            learning_rate=row.learning_rate,
            learning_rate_warmup_steps=row.warmup_steps,
            lora_rank=row.lora_rank,
            max_context_length=row.max_context_length,
            batch_size=row.batch_size,
            batch_size_samples=row.batch_size_samples,
            estimated_cost=Money.of_micros(row.estimated_cost_micros),
            billed_cost=Money.of_micros(row.billed_micros),
            billed_tokens=str(row.billed_tokens),
            job_progress=JobProgress(
                percent=percent,
                epoch=row.epoch,
                step=row.step,
                total_steps=total,
                trained_tokens=str(row.trained_tokens),
                dataset_tokens=str(row.dataset_tokens),
                loss=row.loss,
                eval_loss=row.eval_loss,
                tokens_per_second=row.tokens_per_second,
                eta_seconds=eta,
            ),
        )


class SftJobList(WireModel):
    supervised_fine_tuning_jobs: list[SftJob]
    next_page_token: str = ""
    total_size: int
