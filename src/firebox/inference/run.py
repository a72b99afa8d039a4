"""One API call's generation: drives the engine and keeps what it produced.

A completions call with several prompts becomes several engine requests run
one after the other, their choice indices offset so they read as one answer.
The run tracks tokens and timings for usage, headers and perf metrics, and
owns the engine iterators so that closing the run cancels the engine.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from firebox.inference.engine import (
    ChoiceFinished,
    GenerationEvent,
    GenerationRequest,
    PromptInfo,
    TextDelta,
    TextEngine,
    UsageReport,
)


@dataclass
class ChoiceState:
    """Everything one choice produced, for a non-streaming answer."""

    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: dict[str, list[Any]] = field(default_factory=dict)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)

    def add(self, delta: TextDelta) -> None:
        if delta.text:
            self.text.append(delta.text)
        if delta.logprobs:
            for key, values in delta.logprobs.items():
                if isinstance(values, list):
                    self.logprobs.setdefault(key, []).extend(values)
        for call in delta.tool_calls or ():
            self._merge_tool_call(call)

    def _merge_tool_call(self, call: dict[str, Any]) -> None:
        """Fold a streamed tool-call fragment into the call it continues."""
        index = call.get("index", len(self.tool_calls))
        while len(self.tool_calls) <= index:
            self.tool_calls.append({"type": "function", "function": {"name": "", "arguments": ""}})
        merged = self.tool_calls[index]
        if call.get("id"):
            merged["id"] = call["id"]
        if call.get("type"):
            merged["type"] = call["type"]
        function = call.get("function") or {}
        if function.get("name"):
            merged["function"]["name"] += function["name"]
        if function.get("arguments"):
            merged["function"]["arguments"] += function["arguments"]


class GenerationRun:
    """Runs ``requests`` on ``engine`` and accumulates their results."""

    def __init__(self, engine: TextEngine, requests: list[GenerationRequest], n: int) -> None:
        self._engine = engine
        self._requests = requests
        self._n = n
        self._current: AsyncIterator[GenerationEvent] | None = None
        self.started = time.perf_counter()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.completion_tokens = 0
        self.usage_reported = 0  # how many of the requests reported usage
        self.prompt_known = False
        self.choices: dict[int, ChoiceState] = {}
        self.streamed_tokens = 0

    async def events(self) -> AsyncIterator[GenerationEvent]:
        """The engine's events with choice indices made global across prompts."""
        for number, request in enumerate(self._requests):
            offset = number * self._n
            stream = self._engine.generate(request)
            self._current = stream
            prompt_info: PromptInfo | None = None
            async for event in stream:
                if isinstance(event, PromptInfo):
                    prompt_info = event
                    self.prompt_tokens += event.prompt_tokens
                    self.cached_tokens += event.cached_tokens
                    self.prompt_known = True
                    yield event
                elif isinstance(event, TextDelta):
                    if self.first_token_at is None and (event.text or event.tool_calls):
                        self.first_token_at = time.perf_counter()
                    self.streamed_tokens += event.token_count
                    shifted = TextDelta(
                        index=event.index + offset,
                        text=event.text,
                        role=event.role,
                        logprobs=event.logprobs,
                        tool_calls=event.tool_calls,
                        token_count=event.token_count,
                    )
                    self.choices.setdefault(shifted.index, ChoiceState()).add(shifted)
                    yield shifted
                elif isinstance(event, ChoiceFinished):
                    shifted_finish = ChoiceFinished(event.index + offset, event.finish_reason)
                    self.choices.setdefault(
                        shifted_finish.index, ChoiceState()
                    ).finish_reason = event.finish_reason
                    yield shifted_finish
                elif isinstance(event, UsageReport):
                    if prompt_info is None:
                        self.prompt_tokens += event.prompt_tokens
                        self.cached_tokens += event.cached_tokens
                    self.completion_tokens += event.completion_tokens
                    self.usage_reported += 1
                    yield event
            self._current = None
        self.finished_at = time.perf_counter()

    async def close(self) -> None:
        """Cancel the engine request in progress, if any."""
        if self._current is not None:
            current, self._current = self._current, None
            await current.aclose()  # type: ignore[attr-defined]

    def produced_output(self) -> bool:
        return self.first_token_at is not None or self.completion_tokens > 0

    def billable_completion_tokens(self) -> int:
        """Completion tokens: as reported, else as counted from the stream so far."""
        return self.completion_tokens if self.usage_reported else self.streamed_tokens

    def perf_metrics(self) -> dict[str, float | int]:
        end = self.finished_at or time.perf_counter()
        total = end - self.started
        ttft = (self.first_token_at - self.started) if self.first_token_at else total
        decode = max(end - (self.first_token_at or self.started), 1e-9)
        return {
            "time_to_first_token_ms": round(ttft * 1000, 3),
            "total_time_ms": round(total * 1000, 3),
            "completion_tokens": self.completion_tokens,
            "tokens_per_second": round(self.completion_tokens / decode, 2),
        }
