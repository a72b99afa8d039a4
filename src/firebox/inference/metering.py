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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

# "interrupted": settled from the in-flight journal after the process serving it died.
Outcome = Literal["completed", "stopped", "cancelled", "failed", "interrupted"]
# "batch": a chat completion of a batch inference job, priced at the price book's batch share.
UsageKind = Literal[
    "chat", "completion", "embedding", "image", "deployment", "fine_tuning", "batch"
]


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


class PromptCounts(Protocol):
    """Where a running request's prompt counts are read (``GenerationRun``)."""

    prompt_tokens: int
    cached_tokens: int


class Progress:
    """What one admitted request has delivered so far, as the in-flight journal sees it.

    Serving adds to ``completion_tokens`` as it hands chunks to the client
    (one attribute update per chunk: nothing per token touches the disk or
    allocates); the journal reads ``counts()`` about once a second and writes
    what changed, so a process killed mid-stream leaves at most a second of
    delivered tokens unrecorded. The prompt counts are read from ``run`` when
    set (serving's request), else from the attributes ``delivered`` sets.
    """

    __slots__ = (
        "cached_prompt_tokens",
        "completion_tokens",
        "done",
        "prompt_tokens",
        "request_id",
        "run",
    )

    def __init__(self, request_id: str, run: PromptCounts | None = None) -> None:
        self.request_id = request_id
        self.prompt_tokens = 0
        self.cached_prompt_tokens = 0
        self.completion_tokens = 0  # delivered to the client, not just generated
        self.done = False  # its normal usage record was handed to the sink
        self.run = run

    def delivered(self, completion_tokens: int, prompt_tokens: int, cached: int) -> None:
        """``completion_tokens`` more went to the client; the prompt counts so far."""
        self.completion_tokens += completion_tokens
        self.prompt_tokens = prompt_tokens
        self.cached_prompt_tokens = cached

    def counts(self) -> tuple[int, int, int]:
        """Prompt, cached prompt and delivered completion tokens, as of now."""
        run = self.run
        if run is not None:
            return run.prompt_tokens, run.cached_tokens, self.completion_tokens
        return self.prompt_tokens, self.cached_prompt_tokens, self.completion_tokens


# What the journal writes for an entry: the request's usage record as it would be
# billed (its counts are ignored) and what its admission ticket holds (``Ticket.hold``).
Opened = tuple[UsageRecord, dict[str, object] | None]


class UsageJournal(Protocol):
    """The in-flight journal: admitted requests and their running counts, on disk.

    ``track`` registers a request before it runs; ``opened`` is called only
    when the journal writes the entry (a request that ends within a flush
    interval never builds it), from the journal's thread, so it must read
    nothing that changes. ``open`` is ``track`` with the entry at hand.
    ``close`` is called once the normal record is in the sink. A later
    process settles every entry its dead writer left open at the last
    recorded counts (``billing/journal.py``).
    """

    def track(self, progress: Progress, opened: Callable[[], Opened]) -> None: ...

    def open(self, usage: UsageRecord, hold: dict[str, object] | None) -> Progress: ...

    def close(self, progress: Progress) -> None: ...


class NoJournal:
    """Journals nothing (a sink without a spool: tests of serving alone)."""

    def track(self, progress: Progress, opened: Callable[[], Opened]) -> None:
        return None

    def open(self, usage: UsageRecord, hold: dict[str, object] | None) -> Progress:
        return Progress(usage.request_id)

    def close(self, progress: Progress) -> None:
        progress.done = True


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
