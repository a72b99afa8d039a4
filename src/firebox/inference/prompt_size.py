"""The operator's cap on prompt bytes, checked on the event loop before any tokenizing.

The body cap (``FIREBOX_MAX_BODY_BYTES``) bounds what a request may carry
at all; this cap (``FIREBOX_MAX_PROMPT_BYTES``) bounds the text a request
asks a tokenizer to read, for every model: for an upstream model, and for
tokenizers that give no per-model byte rule (``local.token_bytes``), it is
the only bound on the work one request can cause before it is refused.
Measuring costs one pass over the text, microseconds per kilobyte.
"""

from __future__ import annotations

from typing import Any

import orjson

from firebox.errors import InvalidArgument
from firebox.inference.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingCreate


def _text_bytes(items: list[str] | list[list[int]]) -> int:
    """UTF-8 bytes of the texts among ``items`` (token-id arrays are not tokenized)."""
    return sum(len(item.encode()) for item in items if isinstance(item, str))


def prompt_bytes(
    body: ChatCompletionRequest | CompletionRequest | EmbeddingCreate,
    messages: list[dict[str, Any]] | None = None,
) -> int:
    """The bytes of prompt text in ``body``: messages as JSON, prompts or inputs as UTF-8.

    ``messages``: a chat body's messages as dicts, when the caller made them already.
    """
    if isinstance(body, ChatCompletionRequest):
        if messages is None:
            messages = [m.model_dump(exclude_none=True) for m in body.messages]
        return len(orjson.dumps(messages))
    if isinstance(body, CompletionRequest):
        return _text_bytes(body.prompts())
    return _text_bytes(body.inputs())


def check_prompt_bytes(size: int, cap: int, param: str) -> None:
    """Refuse a prompt of ``size`` bytes over the operator's ``cap`` with a 400."""
    if size > cap:
        raise InvalidArgument(
            f"The prompt text is {size} bytes; this server accepts at most {cap} bytes of "
            "prompt per request (the operator sets FIREBOX_MAX_PROMPT_BYTES). Send a shorter "
            "prompt.",
            code="prompt_too_large",
            param=param,
        )
