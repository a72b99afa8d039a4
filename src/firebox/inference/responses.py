"""The OpenAI wire shapes of chat and completions answers and stream chunks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from firebox.errors import FireboxError
from firebox.http.errors import error_body
from firebox.inference.engine import ChoiceFinished, TextDelta
from firebox.inference.run import ChoiceState, GenerationRun


@dataclass(frozen=True)
class Shape:
    """What every chunk of one answer repeats."""

    kind: Literal["chat", "completion"]
    request_id: str
    model: str
    created: int

    @property
    def id(self) -> str:
        return ("chatcmpl-" if self.kind == "chat" else "cmpl-") + self.request_id

    def envelope(self, streaming: bool) -> dict[str, Any]:
        if self.kind == "chat":
            obj = "chat.completion.chunk" if streaming else "chat.completion"
        else:
            obj = "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}


def _chat_logprobs(logprobs: dict[str, Any] | None) -> dict[str, Any] | None:
    return {"content": logprobs.get("content", [])} if logprobs else None


def delta_chunk(shape: Shape, event: TextDelta, first_of_choice: bool) -> dict[str, Any]:
    """A chunk carrying new output of one choice."""
    if shape.kind == "chat":
        delta: dict[str, Any] = {}
        if first_of_choice or event.role:
            delta["role"] = event.role or "assistant"
        if event.text or not event.tool_calls:
            delta["content"] = event.text
        if event.tool_calls:
            delta["tool_calls"] = event.tool_calls
        choice: dict[str, Any] = {
            "index": event.index,
            "delta": delta,
            "logprobs": _chat_logprobs(event.logprobs),
            "finish_reason": None,
        }
    else:
        choice = {
            "index": event.index,
            "text": event.text,
            "logprobs": event.logprobs,
            "finish_reason": None,
        }
    return {**shape.envelope(True), "choices": [choice]}


def finish_chunk(shape: Shape, event: ChoiceFinished) -> dict[str, Any]:
    """The chunk that ends one choice."""
    if shape.kind == "chat":
        choice: dict[str, Any] = {
            "index": event.index,
            "delta": {},
            "logprobs": None,
            "finish_reason": event.finish_reason,
        }
    else:
        choice = {"index": event.index, "text": "", "logprobs": None}
        choice["finish_reason"] = event.finish_reason
    return {**shape.envelope(True), "choices": [choice]}


def usage_chunk(shape: Shape, usage: dict[str, Any], perf: dict[str, Any] | None) -> dict[str, Any]:
    """The last chunk: no choices, the usage (``stream_options.include_usage``)."""
    chunk = {**shape.envelope(True), "choices": [], "usage": usage}
    if perf is not None:
        chunk["perf_metrics"] = perf
    return chunk


def error_chunk(exc: Exception) -> dict[str, Any]:
    """The SSE event that ends a stream which failed after it started (vLLM/OpenAI send one).

    OpenAI clients raise an ``APIError`` from it, instead of seeing the
    stream just stop. Anything but a ``FireboxError`` is reported without its
    details (they are logged).
    """
    if isinstance(exc, FireboxError):
        return error_body(exc.message, exc.error_type, exc.code, exc.param, exc.status)
    return error_body(
        "The answer failed while it was being generated; retry the request.",
        "internal_error",
        "internal_error",
        None,
        "INTERNAL",
    )


def _full_choice(shape: Shape, index: int, state: ChoiceState) -> dict[str, Any]:
    text = "".join(state.text)
    if shape.kind == "chat":
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if state.tool_calls:
            message["tool_calls"] = state.tool_calls
            if not text:
                message["content"] = None
        logprobs = {"content": state.logprobs.get("content", [])} if state.logprobs else None
        return {
            "index": index,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": state.finish_reason or "stop",
        }
    return {
        "index": index,
        "text": text,
        "logprobs": state.logprobs or None,
        "finish_reason": state.finish_reason or "stop",
    }


def full_answer(shape: Shape, run: GenerationRun, usage: dict[str, Any]) -> dict[str, Any]:
    """A non-streaming answer with every choice, in index order."""
    choices = [_full_choice(shape, i, run.choices[i]) for i in sorted(run.choices)]
    return {**shape.envelope(False), "choices": choices, "usage": usage}
