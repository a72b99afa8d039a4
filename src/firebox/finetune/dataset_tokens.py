"""Counting the tokens of dataset examples with a base model's tokenizer and chat template.

A chat example is counted as the trainer sees it: the model's chat template
renders the messages (Jinja2, as ``transformers`` does it) and the
tokenizer (``tokenizers``, on the folder's ``tokenizer.json``) encodes the
text, its special tokens included. Without a tokenizer the count is an
estimate of four bytes a token.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

BYTES_PER_TOKEN = 4  # the estimate used without a tokenizer


class TokenCounter(Protocol):
    """Counts tokens of one example."""

    def count_chat(self, messages: Sequence[dict[str, Any]]) -> int:
        """Tokens of a conversation rendered by the chat template."""
        ...

    def count_text(self, text: str) -> int:
        """Tokens of plain text (a completion example's prompt + completion)."""
        ...


class ByteEstimate:
    """A tokenizer-free estimate: four UTF-8 bytes a token, plus a few per message."""

    def count_chat(self, messages: Sequence[dict[str, Any]]) -> int:
        return sum(4 + self.count_text(str(m.get("content") or "")) for m in messages) + 1

    def count_text(self, text: str) -> int:
        return -(-len(text.encode()) // BYTES_PER_TOKEN)


class TemplateCounter:
    """Counts with a Hugging Face model folder's ``tokenizer.json`` and chat template."""

    def __init__(self, model_dir: Path) -> None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        config: dict[str, Any] = {}
        config_file = model_dir / "tokenizer_config.json"
        if config_file.is_file():
            config = json.loads(config_file.read_text())
        self._special = {
            key: _token_text(config.get(key)) for key in ("bos_token", "eos_token", "pad_token")
        }
        template = config.get("chat_template")
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self._template = env.from_string(template) if isinstance(template, str) else None
        self.max_context = _max_context(model_dir, config)

    def count_chat(self, messages: Sequence[dict[str, Any]]) -> int:
        if self._template is None:
            return sum(4 + self.count_text(str(m.get("content") or "")) for m in messages)
        text = self._template.render(
            messages=list(messages), add_generation_prompt=False, **self._special
        )
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def count_text(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)


def _token_text(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("content") or "")
    return str(value or "")


def _max_context(model_dir: Path, tokenizer_config: dict[str, Any]) -> int | None:
    config_file = model_dir / "config.json"
    if config_file.is_file():
        value = json.loads(config_file.read_text()).get("max_position_embeddings")
        if isinstance(value, int) and value > 0:
            return value
    value = tokenizer_config.get("model_max_length")
    return value if isinstance(value, int) and 0 < value < 10**8 else None


def counter_for(model_dir: Path | None) -> TokenCounter:
    """The counter of the model folder ``model_dir``, or the byte estimate without one."""
    if model_dir is not None and (model_dir / "tokenizer.json").is_file():
        return TemplateCounter(model_dir)
    return ByteEstimate()
