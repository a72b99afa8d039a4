"""The engine protocol: what the gateway asks of anything that runs a model.

An engine knows nothing of HTTP, accounts or billing. It receives a
``GenerationRequest`` (already validated and resolved by the gateway) and
yields ``GenerationEvent``s; the serving layer turns them into OpenAI JSON or
SSE chunks. Cancelling is closing the iterator (``aclose``): an engine must
stop work and free its resources when that happens, at any ``await``.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast, runtime_checkable

from firebox.errors import FireboxError


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Per-request sampling; defaults follow the OpenAI API."""

    max_tokens: int | None = None  # None: up to the context length
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables top-k
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    n: int = 1
    echo: bool = False


@dataclass(frozen=True, slots=True)
class TokenizedPrompt:
    """A request's prompt tokenized ahead of the run, off the event loop and before admission.

    ``ids`` are what the engine will run (template applied, special tokens
    added), so their count is the exact prompt-token figure to reserve for;
    ``echo_text`` is the prompt as text, for ``echo`` (completions).
    """

    ids: list[int]
    echo_text: str = ""


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One text generation, chat or plain completion, addressed to an engine."""

    request_id: str
    model: str  # the engine's own name for the model (e.g. the upstream's model id)
    kind: Literal["chat", "completion"]
    params: SamplingParams
    messages: list[dict[str, Any]] | None = None  # chat: OpenAI message dicts
    prompt: str | list[int] | None = None  # completion
    adapter: str | None = None  # the LoRA add-on's name at the engine, if any
    context_length: int = 0  # 0: the engine's own limit
    truncate_max_tokens: bool = False  # cap max_tokens instead of refusing
    prompt_cache_max_len: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # pass-through params (tools, ...)
    # Whether the caller reads the answer as a stream. Events are streamed either
    # way; an engine may use False to fetch the answer whole (an upstream does).
    stream: bool = True
    # Set by the gateway for engines that tokenize ahead (``PromptTokenizer``):
    # the engine runs these ids and does not tokenize again.
    tokenized: TokenizedPrompt | None = None
    # A batch job's request: an engine that schedules (the in-process one) runs it only in
    # steps with no interactive request to run; others ignore it.
    background: bool = False


@dataclass(frozen=True, slots=True)
class PromptInfo:
    """Optional first event: the prompt's token counts, known before any output.

    Lets a streaming answer carry ``fireworks-prompt-tokens`` headers. Engines
    that learn the counts only at the end (an upstream) skip it.
    """

    prompt_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class TextDelta:
    """New output of one choice. ``logprobs`` is in the OpenAI shape of its kind."""

    index: int
    text: str = ""
    role: str | None = None
    logprobs: dict[str, Any] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    token_count: int = 0  # tokens this delta carries, when the engine knows


@dataclass(frozen=True, slots=True)
class ChoiceFinished:
    """A choice ended: ``stop``, ``length``, ``tool_calls`` or ``content_filter``."""

    index: int
    finish_reason: str


@dataclass(frozen=True, slots=True)
class UsageReport:
    """Token counts of the whole request, sent once, last."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


GenerationEvent = PromptInfo | TextDelta | ChoiceFinished | UsageReport


@dataclass(frozen=True, slots=True)
class EngineCapabilities:
    """What an engine honours beyond the core sampling parameters.

    The gateway refuses a request that uses a parameter its engine does not
    list here, naming the parameter, instead of silently ignoring it.
    """

    params: frozenset[str]  # optional OpenAI parameters honoured (e.g. "logprobs", "tools")
    passthrough: frozenset[str] = frozenset()  # sent to the engine verbatim in ``extra``
    vision: bool = False
    # Token ids are below this (``logit_bias`` is checked against it); None: unknown.
    vocab_size: int | None = None


class TextEngine(Protocol):
    """Runs chat and completion requests for one or more models."""

    capabilities: EngineCapabilities

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Stream the events of ``request``; closing the iterator cancels it."""
        ...

    async def close(self) -> None:
        """Release connections, threads and memory."""
        ...


@runtime_checkable
class PromptTokenizer(Protocol):
    """A text engine whose tokenizer is at hand (in process): it tokenizes ahead of the run.

    The gateway calls ``tokenize_prompt`` on a worker thread, before
    admission, and passes the result on in ``GenerationRequest.tokenized``.
    """

    def tokenize_prompt(self, request: GenerationRequest) -> TokenizedPrompt:
        """The prompt's ids, checked against the context (blocking; thread-safe).

        Raises ``PromptTooLong`` from the prompt's byte length alone when it
        cannot fit, before tokenizing; ``ContextLengthExceeded`` after.
        """
        ...


def as_prompt_tokenizer(engine: object) -> PromptTokenizer | None:
    """``engine`` if it tokenizes ahead of the run (``PromptTokenizer``), else None.

    Decided once per engine class: ``isinstance`` against a runtime-checkable
    Protocol walks the protocol's members on every call (tens of µs, measured
    with bench/gateway_cpu.py), which every chat request paid.
    """
    tokenizes = _tokenizes_prompts(type(engine))  # type: ignore[arg-type]  # classes hash
    return cast(PromptTokenizer, engine) if tokenizes else None


@functools.cache
def _tokenizes_prompts(cls: type[object]) -> bool:
    return issubclass(cls, PromptTokenizer)


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    request_id: str
    model: str
    inputs: list[str] | list[list[int]]
    dimensions: int | None = None
    # Set by the gateway for engines that tokenize ahead (``InputTokenizer``): the
    # inputs as fed to the model (special tokens added, truncated).
    token_ids: list[list[int]] | None = None


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    vectors: list[list[float]]
    prompt_tokens: int


class EmbeddingEngine(Protocol):
    """Turns texts into vectors."""

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult: ...

    async def close(self) -> None: ...


@runtime_checkable
class InputTokenizer(Protocol):
    """An embedding engine whose tokenizer is at hand: it tokenizes inputs ahead of the run."""

    def tokenize_inputs(self, inputs: list[str] | list[list[int]]) -> list[list[int]]:
        """The inputs as the model is fed them (blocking; thread-safe)."""
        ...


class ContextLengthExceeded(FireboxError):
    """Prompt plus ``max_tokens`` does not fit the model's context."""

    http_status = 400
    status = "INVALID_ARGUMENT"
    error_type = "invalid_request_error"
    default_code = "context_length_exceeded"

    def __init__(self, prompt_tokens: int, max_tokens: int, context_length: int) -> None:
        super().__init__(
            f"The prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) exceeds the "
            f"model's context length ({context_length} tokens). Shorten the prompt, lower "
            'max_tokens, or pass context_length_exceeded_behavior: "truncate".',
            param="max_tokens",
        )
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context_length = context_length


class PromptTooLong(FireboxError):
    """The prompt has more bytes than the model's context can hold, at its tokenizer's densest."""

    http_status = 400
    status = "INVALID_ARGUMENT"
    error_type = "invalid_request_error"
    default_code = "context_length_exceeded"

    def __init__(self, size: int, bytes_per_token: int, context_length: int, param: str) -> None:
        super().__init__(
            f"The prompt is {size} bytes long: even at this model's densest ({bytes_per_token} "
            f"bytes per token) that is more than its context length ({context_length} tokens). "
            "Shorten the prompt.",
            param=param,
        )


class GenerationFailed(FireboxError):
    """The engine could not continue this one request (its other requests go on).

    Raised from the event stream after any output: the serving layer meters
    what was produced and ends a stream with an SSE error event.
    """

    http_status = 500
    status = "INTERNAL"
    error_type = "internal_error"
    default_code = "generation_failed"


class UpstreamError(FireboxError):
    """The engine's upstream server failed or answered with an error."""

    http_status = 502
    status = "UNAVAILABLE"
    error_type = "upstream_error"
    default_code = "upstream_error"


class UpstreamTimeout(FireboxError):
    """The engine's upstream server did not answer in time."""

    http_status = 504
    status = "DEADLINE_EXCEEDED"
    error_type = "upstream_error"
    default_code = "upstream_timeout"
