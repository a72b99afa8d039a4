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


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """What one request used; ``request_id`` is its idempotency key."""

    request_id: str
    account_id: str
    model: str  # full catalog name of the model called (the add-on, if one)
    base_model: str  # the model whose price applies (an add-on's base)
    kind: Literal["chat", "completion", "embedding"]
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
