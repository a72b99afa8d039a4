"""How many bytes of text one token can stand for, so a prompt too long to fit is refused unread.

Tokenizing costs time proportional to the text (seconds for megabytes), while
the context check needs only the token count. If every token of a tokenizer
covers at most ``L`` bytes of the text it was given, a text of ``B`` bytes
yields at least ``B / L`` tokens; when ``B > L x context`` it cannot fit, and
it can be refused from its length alone, before any tokenizing.

That holds only when the tokenizer keeps every byte of its input: a
normalizer may shrink text (NFKC turns the 4-byte U+1D400 into ``A``, a
factor allowed for below), and some steps drop text outright (whitespace
splitters, accent stripping, ``[UNK]`` standing for a whole word, special
tokens that swallow the spaces beside them). For those no byte bound exists,
and ``max_bytes_per_token`` says so (``None``): such a model relies on the
operator's prompt cap and the tokenizer pool alone.

``L`` is the UTF-8 length of the longest vocabulary entry or added token,
which is at least the text it covers: a byte-level entry spells each byte as
one character, a SentencePiece ``▁`` (3 bytes) stands for a 1-byte space, and
a byte-fallback ``<0x0A>`` for one byte.
"""

from __future__ import annotations

import json
from typing import Any

from transformers import PreTrainedTokenizerBase

# How much each normalizer may shrink UTF-8 text, at most. NFC/NFD compose at
# most three 3-byte Hangul jamo into one 3-byte syllable; NFKC/NFKD map a 4-byte
# mathematical letter to one ASCII byte; lower-casing maps e.g. U+1E9E (3 bytes)
# to U+00DF (2 bytes). Prepend only adds text.
_NORMALIZER_SHRINK = {"NFC": 3, "NFD": 3, "NFKC": 4, "NFKD": 4, "Lowercase": 2, "Prepend": 1}
# Pre-tokenizers that split text without removing any of it.
_KEEPING_PRE_TOKENIZERS = frozenset({"ByteLevel", "Metaspace", "Digits", "Punctuation", "Split"})


def _shrink(normalizer: dict[str, Any] | None) -> int | None:
    """How many times the normalizer may shorten text; None when it may drop text."""
    if normalizer is None:
        return 1
    kind = normalizer.get("type")
    if kind == "Sequence":
        factor = 1
        for step in normalizer.get("normalizers", []):
            inner = _shrink(step)
            if inner is None:
                return None
            factor *= inner
        return factor
    if kind == "Replace":
        pattern = normalizer.get("pattern", {})
        literal = pattern.get("String") if isinstance(pattern, dict) else None
        content = str(normalizer.get("content", ""))
        if not isinstance(literal, str) or not literal or not content:
            return None  # a regex may match any length; an empty content deletes text
        return max(1, -(-len(literal.encode()) // len(content.encode())))
    return _NORMALIZER_SHRINK.get(str(kind))


def _keeps_text(pre_tokenizer: dict[str, Any] | None) -> bool:
    if pre_tokenizer is None:
        return True
    kind = pre_tokenizer.get("type")
    if kind == "Sequence":
        return all(_keeps_text(step) for step in pre_tokenizer.get("pretokenizers", []))
    if kind == "Split" and str(pre_tokenizer.get("behavior")) == "Removed":
        return False
    return kind in _KEEPING_PRE_TOKENIZERS


def _covers_every_byte(model: dict[str, Any], pre_tokenizer: dict[str, Any] | None) -> bool:
    """Whether no piece of text can become an unknown token (which may stand for any length)."""
    if model.get("type") != "BPE":
        return False
    if model.get("byte_fallback"):
        return not model.get("fuse_unk")

    def byte_level(step: dict[str, Any] | None) -> bool:
        if step is None:
            return False
        if step.get("type") == "Sequence":
            return any(byte_level(s) for s in step.get("pretokenizers", []))
        return step.get("type") == "ByteLevel"

    return byte_level(pre_tokenizer)


def max_bytes_per_token(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The most bytes of input text one token can stand for, or None when unbounded."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None  # a slow (Python) tokenizer: nothing to inspect
    spec: dict[str, Any] = json.loads(backend.to_str())
    shrink = _shrink(spec.get("normalizer"))
    pre_tokenizer = spec.get("pre_tokenizer")
    model = spec.get("model") or {}
    if (
        shrink is None
        or not _keeps_text(pre_tokenizer)
        or not _covers_every_byte(model, pre_tokenizer)
    ):
        return None
    added = spec.get("added_tokens") or []
    if any(token.get("lstrip") or token.get("rstrip") for token in added):
        return None  # such a token swallows any run of spaces beside it
    vocab = model.get("vocab") or {}
    longest = max(
        [len(str(entry).encode()) for entry in vocab]
        + [len(str(token.get("content", "")).encode()) for token in added]
        + [1]
    )
    return longest * shrink
