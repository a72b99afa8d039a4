"""The metering hook: one usage record for every finished request.

The serving layer emits exactly one ``UsageRecord`` per request that was
admitted — completed, stopped by the client, cancelled by a disconnect, or
failed after producing tokens — from the ``finally`` of its stream, so a
client going away cannot skip it. The billing slice implements ``UsageSink``
(writing the ledger); until then ``CollectingUsageSink`` keeps recent records
in memory and counts tokens in Prometheus.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

Outcome = Literal["completed", "stopped", "cancelled", "failed"]
UsageKind = Literal["chat", "completion", "embedding", "image", "deployment", "fine_tuning"]


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """What one request used; ``request_id`` is its idempotency key."""

    request_id: str
    account_id: str
    model: str  # full catalog name of the model called (the add-on, if one)
    base_model: str  # the model whose price applies (an add-on's base)
    kind: UsageKind
    time: datetime
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0
    images: int = 0
    adapter: str | None = None
    deployment: str | None = None
    outcome: Outcome = "completed"
    time_to_first_token_ms: float | None = None
    duration_ms: float = 0.0
    # What prices it (SPEC §2): the billing model's price class, or its explicit
    # catalog price (micro-USD per unit) when it fits no class.
    price_class: str | None = None
    explicit_price_micros: int | None = None
    steps: int = 0  # image generation: denoising steps
    gpu_type: str | None = None  # on-demand deployments: GPU type and GPU time
    gpu_milliseconds: int = 0
    training_tokens: int = 0  # fine-tuning: dataset tokens x epochs


class UsageSink(Protocol):
    """Receives usage records; must not block the request (queue and return)."""

    def record(self, usage: UsageRecord) -> None: ...


class CollectingUsageSink:
    """Keeps the last ``capacity`` records in memory (embedded default and tests)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._records: deque[UsageRecord] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def record(self, usage: UsageRecord) -> None:
        with self._lock:
            self._records.append(usage)

    def records(self) -> list[UsageRecord]:
        with self._lock:
            return list(self._records)
