"""From a request to prompt token ids and a token limit, before the scheduler sees it.

Chat requests are rendered with the tokenizer's own chat template (with the
generation prompt), then tokenized without adding special tokens again (the
template writes them); completion prompts are tokenized as the tokenizer
does by default, or taken as given when they are token ids. The context
check happens here, on the caller's side, so an oversized request fails
before it queues; with ``max_bytes`` (see ``token_bytes``) a text too long
to fit is refused from its length, before it is tokenized at all.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from firebox.errors import InvalidArgument
from firebox.inference.engine import ContextLengthExceeded, GenerationRequest, PromptTooLong


class ByteLimit:
    """A text longer than ``bytes_per_token`` x ``context_length`` bytes cannot fit."""

    def __init__(self, bytes_per_token: int, context_length: int) -> None:
        self.bytes_per_token = bytes_per_token
        self.context_length = context_length

    def check(self, text: str, param: str) -> None:
        limit = self.bytes_per_token * self.context_length
        if len(text) <= limit // 4:
            return  # a character is at most 4 bytes: no need to encode
        size = len(text.encode())
        if size > limit:
            raise PromptTooLong(size, self.bytes_per_token, self.context_length, param)


def _text_content(content: Any) -> Any:
    """OpenAI content parts flattened to text, which every chat template understands."""
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            elif isinstance(part, dict):
                raise InvalidArgument(
                    f"Message content of type {part.get('type')!r} is not supported by this model; "
                    "send text only.",
                    param="messages",
                )
        return "".join(texts)
    return content


def chat_prompt_ids(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    max_bytes: ByteLimit | None = None,
) -> list[int]:
    """The token ids of ``messages`` rendered by the model's chat template.

    The byte rule applies to the rendered text: a template may trim or
    repeat what the messages hold.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidArgument(
            "This model has no chat template; use the completions endpoint instead.",
            code="chat_template_missing",
        )
    normalized = [{**m, "content": _text_content(m.get("content"))} for m in messages]
    try:
        text = tokenizer.apply_chat_template(normalized, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # jinja raises whatever the template raises (e.g. role order)
        raise InvalidArgument(
            f"The model's chat template refused these messages: {exc}", param="messages"
        ) from exc
    if max_bytes is not None:
        max_bytes.check(str(text), "messages")
    ids: list[int] = tokenizer(str(text), add_special_tokens=False)["input_ids"]
    return ids


def completion_prompt_ids(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | list[int],
    vocab_size: int,
    max_bytes: ByteLimit | None = None,
) -> list[int]:
    """A completion prompt's ids: tokenized (with the tokenizer's special tokens) or as given."""
    if isinstance(prompt, str):
        if max_bytes is not None:
            max_bytes.check(prompt, "prompt")
        ids: list[int] = tokenizer(prompt)["input_ids"]
        return ids
    if not all(type(t) is int and 0 <= t < vocab_size for t in prompt):
        raise InvalidArgument(
            f"prompt holds a value that is not a token id of this model (0 to {vocab_size - 1}).",
            param="prompt",
        )
    return list(prompt)


def prompt_ids(
    tokenizer: PreTrainedTokenizerBase,
    request: GenerationRequest,
    vocab_size: int,
    max_bytes: ByteLimit | None = None,
) -> list[int]:
    if request.kind == "chat":
        if not request.messages:
            raise InvalidArgument("messages must hold at least one message.", param="messages")
        ids = chat_prompt_ids(tokenizer, request.messages, max_bytes)
    else:
        if request.prompt is None:
            raise InvalidArgument("prompt is required.", param="prompt")
        ids = completion_prompt_ids(tokenizer, request.prompt, vocab_size, max_bytes)
    if not ids:
        raise InvalidArgument(
            "The prompt is empty: it must hold at least one token.", param="prompt"
        )
    return ids


def resolve_max_tokens(
    prompt_tokens: int, max_tokens: int | None, context_length: int, truncate: bool
) -> int:
    """The output budget: ``max_tokens`` (default: the rest of the context), checked against it.

    Raises ``ContextLengthExceeded`` when prompt plus ``max_tokens`` does not
    fit, unless ``truncate`` (then ``max_tokens`` is capped); a prompt that
    leaves no room at all for output is refused either way.
    """
    room = context_length - prompt_tokens
    if max_tokens is None:
        if room < 1:
            raise ContextLengthExceeded(prompt_tokens, 1, context_length)
        return room
    if max_tokens < 0:
        raise InvalidArgument("max_tokens must not be negative.", param="max_tokens")
    if max_tokens <= room:
        return max_tokens
    if truncate and room >= 1:
        return room
    raise ContextLengthExceeded(prompt_tokens, max_tokens, context_length)
