"""Turning an upstream's OpenAI stream chunks into engine events, and counting usage.

``ChunkReader`` converts each chunk as it arrives (deltas and finish reasons
are passed on as-is: logprobs and tool-call deltas keep the OpenAI shape the
serving layer re-emits) and keeps what is needed at the end: the usage the
upstream reported, or, when it reported none, the generated text and chunk
count to count usage locally.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from firebox.inference.engine import (
    ChoiceFinished,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
    UsageReport,
)
from firebox.inference.upstream_payload import prompt_text
from firebox.inference.upstream_sse import MalformedStream


class ChunkReader:
    """Reads the chunks of one chat or completion stream, in order."""

    def __init__(self, *, chat: bool) -> None:
        self._chat = chat
        self._texts: dict[int, list[str]] = {}
        self._started: set[int] = set()
        self._finished: set[int] = set()
        self.content_chunks = 0  # chunks that carried generated text or tool calls
        self.usage: UsageReport | None = None

    def read(self, chunk: dict[str, Any]) -> list[GenerationEvent]:
        """The events ``chunk`` carries, in the order the client must see them."""
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = _reported(usage) or self.usage
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise MalformedStream("The model server sent a chunk whose choices are not a list.")
        events: list[GenerationEvent] = []
        for choice in choices:
            if not isinstance(choice, dict):
                raise MalformedStream("The model server sent a choice that is not an object.")
            self._read_choice(choice, events)
        return events

    def _read_choice(self, choice: dict[str, Any], events: list[GenerationEvent]) -> None:
        index = choice.get("index", 0)
        if not isinstance(index, int):
            raise MalformedStream("The model server sent a choice without an integer index.")
        role = tool_calls = None
        if self._chat:
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                raise MalformedStream("The model server sent a delta that is not an object.")
            text = delta.get("content") or ""
            role = delta.get("role")
            tool_calls = delta.get("tool_calls") or None
        else:
            text = choice.get("text") or ""
        if not isinstance(text, str):
            raise MalformedStream("The model server sent a delta without text.")
        logprobs = choice.get("logprobs") or None
        if text or role or tool_calls or logprobs:
            self._started.add(index)
            events.append(
                TextDelta(
                    index=index,
                    text=text,
                    role=role,
                    logprobs=logprobs,
                    tool_calls=tool_calls,
                    token_count=_token_count(logprobs),
                )
            )
        if text or tool_calls:
            self.content_chunks += 1
            generated = self._texts.setdefault(index, [])
            generated.append(text)
            generated.extend(_tool_call_text(tool_calls))
        finish_reason = choice.get("finish_reason")
        if finish_reason:
            self._started.add(index)
            self._finished.add(index)
            events.append(ChoiceFinished(index=index, finish_reason=str(finish_reason)))

    @property
    def unfinished(self) -> set[int]:
        """Choices that produced output but never a finish reason."""
        return self._started - self._finished

    def generated_texts(self) -> list[str]:
        """Each choice's generated text (tool-call names and arguments included)."""
        return ["".join(parts) for parts in self._texts.values()]


def as_chunk(answer: dict[str, Any], *, chat: bool) -> dict[str, Any]:
    """A whole (non-streaming) answer reshaped as one stream chunk, for ``ChunkReader``."""
    choices = answer.get("choices")
    if not isinstance(choices, list):
        raise MalformedStream("The model server answered without a list of choices.")
    if not chat:
        return {"choices": choices, "usage": answer.get("usage")}
    deltas = []
    for choice in choices:
        if not isinstance(choice, dict):
            raise MalformedStream("The model server sent a choice that is not an object.")
        message = choice.get("message") or {}
        delta: dict[str, Any] = {"role": message.get("role", "assistant")}
        delta["content"] = message.get("content") or ""
        if message.get("tool_calls"):
            delta["tool_calls"] = [
                {"index": i, **call} for i, call in enumerate(message["tool_calls"])
            ]
        deltas.append({**{k: v for k, v in choice.items() if k != "message"}, "delta": delta})
    return {"choices": deltas, "usage": answer.get("usage")}


def local_usage(
    request: GenerationRequest,
    reader: ChunkReader,
    count_tokens: Callable[[str], int] | None,
) -> tuple[UsageReport, bool]:
    """Usage counted here when the upstream reported none; ``True`` if estimated.

    With the model's tokenizer (``count_tokens``) the prompt count covers the
    message texts but not the chat template's own tokens. Without one, the
    completion is counted as one token per content chunk (servers stream one
    token per chunk, but may merge several) and the prompt estimated as one
    token per four UTF-8 bytes: an estimate, not a measurement.
    """
    ids = request.prompt if isinstance(request.prompt, list) else None
    text = prompt_text(request)
    if count_tokens is not None:
        prompt = len(ids) if ids is not None else count_tokens(text)
        completion = sum(count_tokens(t) for t in reader.generated_texts())
        return UsageReport(prompt_tokens=prompt, completion_tokens=completion), False
    prompt = len(ids) if ids is not None else math.ceil(len(text.encode()) / 4)
    return UsageReport(prompt_tokens=prompt, completion_tokens=reader.content_chunks), True


def _reported(usage: dict[str, Any]) -> UsageReport | None:
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens") or 0
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return UsageReport(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=cached if isinstance(cached, int) else 0,
    )


def _token_count(logprobs: Any) -> int:
    """Tokens in a delta, when its logprobs list them (chat ``content``, legacy ``tokens``)."""
    if not isinstance(logprobs, dict):
        return 0
    tokens = logprobs.get("content") or logprobs.get("tokens")
    return len(tokens) if isinstance(tokens, list) else 0


def _tool_call_text(tool_calls: Any) -> list[str]:
    if not isinstance(tool_calls, list):
        return []
    texts: list[str] = []
    for call in tool_calls:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            texts.extend(
                value
                for key in ("name", "arguments")
                if isinstance(value := function.get(key), str)
            )
    return texts
