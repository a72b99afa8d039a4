"""OpenAI-compatible request bodies, validated before any work is done.

Unknown parameters are refused, naming the parameter, rather than ignored:
a client that asks for something Firebox would not do must find out. Known
Fireworks/OpenAI parameters that Firebox does not implement get their own
message. Which optional parameters a request may use also depends on the
engine serving the model (``EngineCapabilities``): ``optional_params_used``
tells the serving layer what to check.

Sampling parameters are held to the ranges vLLM and OpenAI use, and no
number may be NaN or infinite (``allow_inf_nan=False``; JSON bodies cannot
carry them either, see ``endpoints.parse_body``): an engine must never be
handed a value it cannot sample with, since one such request used to stop
every request sharing its batch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from firebox import text
from firebox.errors import InvalidArgument

# Parameters that the Fireworks or OpenAI APIs define but Firebox does not implement.
NOT_IMPLEMENTED = frozenset(
    {
        "echo_last",
        "functions",
        "function_call",
        "ignore_eos",
        "metadata",
        "mirostat_lr",
        "mirostat_target",
        "prediction",
        "prompt_cache_isolation_key",
        "prompt_cache_key",
        "prompt_truncate_len",
        "raw_output",
        "reasoning_effort",
        "reasoning_history",
        "return_token_ids",
        "safe_tokenization",
        "service_tier",
        "speculation",
        "thinking",
        "typical_p",
        "modalities",
        "audio",
        "store",
        "web_search_options",
        "suffix",
        "best_of",
        "images",
    }
)

# Optional parameters an engine must declare to be used (everything else is core).
OPTIONAL_PARAMS = frozenset(
    {
        "logprobs",
        "top_logprobs",
        "echo",
        "seed",
        "top_k",
        "min_p",
        "repetition_penalty",
        "response_format",
        "tools",
        "tool_choice",
        "logit_bias",
        "parallel_tool_calls",
        "prompt_cache_max_len",
    }
)
# Bounds of the sampling parameters, as vLLM's OpenAI server and OpenAI enforce them.
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # a signed 64-bit integer
LOGIT_BIAS_LIMIT = 100.0
MAX_TOKEN_ID = 2**31 - 1  # token ids are int32 in every tokenizer; the vocabulary is checked later

# Those the engine receives verbatim (they have no SamplingParams field).
PASSTHROUGH = frozenset({"tools", "tool_choice", "logit_bias", "parallel_tool_calls"})


def refuse_nul(data: Any) -> Any:
    """Refuse a NUL anywhere in an inference body, naming the parameter.

    Only NUL: the store cannot keep it (PostgreSQL refuses it in text), and no
    tokenizer needs it; every other character of a prompt is the model's business.
    ``endpoints.parse_body`` calls it on every inference body before validation,
    when the raw JSON holds the escape a NUL needs (not as a model validator:
    pydantic calling back into Python cost every request ~5 µs).
    """
    where = text.first_nul(data)
    if where is not None:
        raise InvalidArgument(
            f"Parameter {where!r} contains a NUL character (U+0000); remove it.",
            code=text.CODE,
            param=where,
        )
    return data


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema", "grammar"]


class _GenerationBody(BaseModel):
    """Fields shared by chat and completions."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, allow_inf_nan=False)

    model: str = Field(min_length=1, max_length=512)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1, le=MAX_TOKEN_ID)  # -1 and 0: disabled
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    user: str | None = Field(default=None, max_length=256)
    response_format: ResponseFormat | None = None
    prompt_cache_max_len: int | None = Field(default=None, ge=0)
    perf_metrics_in_response: bool = False
    context_length_exceeded_behavior: Literal["error", "truncate"] = "error"
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    logit_bias: dict[str, float] | None = None
    parallel_tool_calls: bool | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 16:
            raise ValueError("at most 16 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        """Keys are token ids (decimal strings), values in [-100, 100] (OpenAI's range)."""
        for key, bias in (value or {}).items():
            if not key.isascii() or not key.isdigit() or int(key) > MAX_TOKEN_ID:
                raise ValueError(f"key {key!r} is not a token id (a non-negative integer)")
            if not -LOGIT_BIAS_LIMIT <= bias <= LOGIT_BIAS_LIMIT:
                raise ValueError(f"the bias of token {key} must be between -100 and 100")
        return value

    @model_validator(mode="after")
    def _no_unknown(self) -> _GenerationBody:
        for name in self.model_extra or {}:
            if name in NOT_IMPLEMENTED:
                raise InvalidArgument(
                    f"Parameter {name!r} is not supported by Firebox; remove it.",
                    code="unsupported_parameter",
                    param=name,
                )
            raise InvalidArgument(
                f"Unknown parameter {name!r}; see the API reference for the accepted ones.",
                code="unknown_parameter",
                param=name,
            )
        both = self.max_tokens is not None and self.max_completion_tokens is not None
        if both and self.max_tokens != self.max_completion_tokens:
            raise InvalidArgument(
                "max_tokens and max_completion_tokens disagree; send only one.",
                param="max_completion_tokens",
            )
        return self

    def check_vocabulary(self, vocab_size: int | None) -> None:
        """Refuse ``logit_bias`` token ids outside the model's vocabulary, when it is known."""
        if not self.logit_bias or vocab_size is None:
            return
        outside = sorted((k for k in self.logit_bias if int(k) >= vocab_size), key=int)
        if outside:
            raise InvalidArgument(
                f"logit_bias names token {outside[0]}, outside the model's vocabulary "
                f"(token ids 0 to {vocab_size - 1}).",
                param=f"logit_bias.{outside[0]}",
            )

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def token_limit(self) -> int | None:
        return self.max_tokens if self.max_tokens is not None else self.max_completion_tokens

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def optional_params_used(self) -> list[str]:
        """Optional parameters set to a non-default value, for the engine check."""
        used = []
        for name in sorted(OPTIONAL_PARAMS & self.model_fields_set):
            value = getattr(self, name)
            if value in (None, False, 0) and name not in ("seed",):
                continue
            if name == "response_format" and value is not None and value.type == "text":
                continue
            if name == "repetition_penalty" and value == 1.0:
                continue
            if name == "top_k" and value == -1:
                continue
            used.append(name)
        return used

    def passthrough(self) -> dict[str, Any]:
        """The verbatim parameters, for engines that take them."""
        out: dict[str, Any] = {}
        for name in PASSTHROUGH:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.response_format is not None and self.response_format.type != "text":
            out["response_format"] = self.response_format.model_dump(exclude_none=True)
        return out


class ImageUrl(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageUrl | None = None

    @model_validator(mode="after")
    def _matches_type(self) -> ContentPart:
        if self.type == "text" and self.text is None:
            raise ValueError("a text part needs 'text'")
        if self.type == "image_url" and self.image_url is None:
            raise ValueError("an image_url part needs 'image_url'")
        return self


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def image_count(self) -> int:
        if isinstance(self.content, list):
            return sum(1 for part in self.content if part.type == "image_url")
        return 0


class ChatCompletionRequest(_GenerationBody):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False

    def image_count(self) -> int:
        return sum(m.image_count() for m in self.messages)

    def optional_params_used(self) -> list[str]:
        used = super().optional_params_used()
        if self.logprobs and "logprobs" not in used:
            used.append("logprobs")
        return used


class CompletionRequest(_GenerationBody):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=20)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("prompt must not be empty")
        return value

    def prompts(self) -> list[str] | list[list[int]]:
        """The prompts of a (possibly batched) request."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], int):
            return [p]
        return p  # type: ignore[return-value]


class EmbeddingCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=512)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = Field(default=None, max_length=256)

    def inputs(self) -> list[str] | list[list[int]]:
        value = self.input
        if isinstance(value, str):
            return [value]
        if not value:
            raise InvalidArgument("input must not be empty.", param="input")
        if isinstance(value[0], int):
            return [value]
        if len(value) > 2048:
            raise InvalidArgument("At most 2048 inputs per request.", param="input")
        return value
