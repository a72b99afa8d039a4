"""The OpenAI request body an upstream server receives for a ``GenerationRequest``.

Every request is sent streaming, with ``stream_options.include_usage``: the
engine emits tokens as they come and the serving layer aggregates a
non-streaming answer itself, so one code path serves both.

Only what differs from the upstream's defaults is sent for the vLLM-style
extras (``top_k``, ``min_p``, ``repetition_penalty``) and the penalties, so
a server that lacks an extra (the OpenAI API itself, some llama.cpp builds)
is not handed a field it may reject when the user never asked for it.
"""

from __future__ import annotations

from typing import Any

from firebox.errors import InvalidArgument
from firebox.inference.engine import GenerationRequest

# Fields the engine owns: a pass-through parameter may not override them.
_OWNED = frozenset({"model", "messages", "prompt", "stream", "stream_options"})


def request_path(request: GenerationRequest) -> str:
    """The path, relative to a replica's base URL, that serves ``request``."""
    return "chat/completions" if request.kind == "chat" else "completions"


def build_body(request: GenerationRequest, model: str) -> dict[str, Any]:
    """The JSON body for ``request``; ``model`` is the upstream's base model id.

    A LoRA add-on is addressed by its adapter name in ``model``: that is how
    vLLM serves adapters loaded with ``--lora-modules`` or at runtime.
    """
    params = request.params
    body = {key: value for key, value in request.extra.items() if key not in _OWNED}
    body["model"] = request.adapter or model
    if request.kind == "chat":
        if request.messages is None:
            raise InvalidArgument("A chat request needs messages.", param="messages")
        body["messages"] = request.messages
    else:
        if request.prompt is None:
            raise InvalidArgument("A completion request needs a prompt.", param="prompt")
        body["prompt"] = request.prompt
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    else:
        body["stream"] = False

    if params.max_tokens is not None:
        body["max_tokens"] = params.max_tokens
    body["temperature"] = params.temperature
    body["top_p"] = params.top_p
    body["n"] = params.n
    if params.stop:
        body["stop"] = list(params.stop)
    if params.seed is not None:
        body["seed"] = params.seed
    if params.top_k > 0:
        body["top_k"] = params.top_k
    if params.min_p != 0.0:
        body["min_p"] = params.min_p
    if params.repetition_penalty != 1.0:
        body["repetition_penalty"] = params.repetition_penalty
    if params.presence_penalty != 0.0:
        body["presence_penalty"] = params.presence_penalty
    if params.frequency_penalty != 0.0:
        body["frequency_penalty"] = params.frequency_penalty

    if request.kind == "chat":
        if params.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = params.top_logprobs
    else:
        if params.logprobs or params.top_logprobs:
            body["logprobs"] = params.top_logprobs  # the legacy API: an int
        if params.echo:
            body["echo"] = True
    return body


def prompt_text(request: GenerationRequest) -> str:
    """The text of the prompt, for counting tokens locally: message texts joined."""
    if request.kind == "completion":
        return request.prompt if isinstance(request.prompt, str) else ""
    parts: list[str] = []
    for message in request.messages or []:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(
                str(part.get("text", ""))
                for part in content
                if isinstance(part, dict) and part.get("type") == "text"
            )
    return "\n".join(parts)
