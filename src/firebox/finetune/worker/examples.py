"""Training examples as token ids and labels, with the loss on the assistant's words only.

The chat template is rendered message by message: the text a message adds
to the conversation is split into what the template writes before the
assistant speaks (the generation prompt: masked) and what the assistant says
(content and end-of-turn: trained). Hugging Face's own assistant mask needs a
``{% generation %}`` block that most templates lack; this needs only that
rendering a longer conversation extends the text of a shorter one, which is
checked, example by example.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

IGNORE = -100  # the label torch's cross-entropy skips


class ChatTokenizer(Protocol):
    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...

    def __call__(self, text: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True, slots=True)
class Example:
    """One example, encoded."""

    ids: list[int]
    labels: list[int]  # IGNORE where there is no loss

    @property
    def trained(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


class ExampleError(ValueError):
    """An example the trainer cannot use (the dataset validator should have caught it)."""


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                data = json.loads(raw)
            except ValueError as exc:
                raise ExampleError(f"line {number}: not JSON ({exc})") from None
            if not isinstance(data, dict):
                raise ExampleError(f"line {number}: not a JSON object")
            yield data


def _render(tokenizer: ChatTokenizer, messages: list[dict[str, Any]], prompt: bool) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
    if not isinstance(text, str):
        raise ExampleError("the chat template did not render text")
    return text


def chat_pieces(tokenizer: ChatTokenizer, messages: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, trained) pieces that concatenate to the whole."""
    pieces: list[tuple[str, bool]] = []
    done = ""
    for index, message in enumerate(messages):
        upto = [{"role": m["role"], "content": m["content"]} for m in messages[: index + 1]]
        whole = _render(tokenizer, upto, False)
        if message["role"] == "assistant":
            if index == 0:
                raise ExampleError("the conversation starts with the assistant; start it with a "
                                   "system or user message")  # fmt: skip
            asking = _render(tokenizer, upto[:-1], True)
            if not (asking.startswith(done) and whole.startswith(asking)):
                raise ExampleError("the chat template does not render conversations as prefixes")
            pieces.append((asking[len(done) :], False))
            pieces.append((whole[len(asking) :], True))
        else:
            if not whole.startswith(done):
                raise ExampleError("the chat template does not render conversations as prefixes")
            pieces.append((whole[len(done) :], False))
        done = whole
    return [(text, trained) for text, trained in pieces if text]


def encode_pieces(tokenizer: ChatTokenizer, pieces: list[tuple[str, bool]]) -> Example:
    encoded = tokenizer([text for text, _ in pieces], add_special_tokens=False)["input_ids"]
    ids: list[int] = []
    labels: list[int] = []
    for (_, trained), piece_ids in zip(pieces, encoded, strict=True):
        ids.extend(piece_ids)
        labels.extend(piece_ids if trained else [IGNORE] * len(piece_ids))
    return Example(ids, labels)


def encode(tokenizer: ChatTokenizer, data: dict[str, Any], fmt: str, max_length: int) -> Example:
    """One dataset line as an example, cut to ``max_length`` tokens."""
    if fmt == "COMPLETION":
        prompt, completion = data.get("prompt"), data.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise ExampleError("a COMPLETION example needs string 'prompt' and 'completion'")
        bos = str(getattr(tokenizer, "bos_token", None) or "")
        pieces = [(bos, False), (prompt, False), (completion, True)]
    else:
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ExampleError("a CHAT example needs a non-empty 'messages' list")
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                raise ExampleError("every message needs a string 'content'")
        pieces = chat_pieces(tokenizer, messages)
    example = encode_pieces(tokenizer, [(t, k) for t, k in pieces if t])
    if len(example.ids) > max_length:
        example = Example(example.ids[:max_length], example.labels[:max_length])
    if example.trained == 0:
        raise ExampleError("the example has no assistant tokens to learn from")
    return example


def load_examples(tokenizer: ChatTokenizer, path: Path, fmt: str, max_length: int) -> list[Example]:
    examples = []
    for number, data in enumerate(read_jsonl(path), 1):
        try:
            examples.append(encode(tokenizer, data, fmt, max_length))
        except ExampleError as exc:
            raise ExampleError(f"example {number}: {exc}") from None
    if not examples:
        raise ExampleError(f"{path.name} holds no examples")
    return examples
