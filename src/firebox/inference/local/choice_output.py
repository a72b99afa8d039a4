"""From one choice's token ids to ``TextDelta`` events: text, stop strings, logprobs.

Text is decoded incrementally over a short window of recent tokens (vLLM's
prefix/read offsets), so each token costs two small decodes however long the
answer is, and a delta is released only when it does not end in a partial
UTF-8 character (the byte-level tokens of one emoji arrive one by one).
Stop strings are matched on the decoded text; the last ``len(stop) - 1``
characters are held back until they cannot start a stop string, so the stop
string itself is never streamed and the answer ends right before it.

Tokens whose text is held back are counted (and their logprobs carried) on
the next delta that releases text, or on the choice's final delta.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from firebox.inference.engine import TextDelta
from firebox.inference.local.sampling import TokenLogprob

_WINDOW = 6  # prompt tokens decoded with the first output tokens (spacing rules)
_TRIM_AT = 64


def _decode(tokenizer: PreTrainedTokenizerBase, ids: list[int], skip_special: bool) -> str:
    """``tokenizer.decode``, straight through the Rust tokenizer when that is the same thing.

    The wrapper adds tens of microseconds per call, twice per generated token
    per sequence; it differs only when it cleans up tokenization spaces.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return str(backend.decode(ids, skip_special_tokens=skip_special))
    return str(tokenizer.decode(ids, skip_special_tokens=skip_special))


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-ins for bytes (``bytes_to_unicode``), inverted."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class TokenTexts:
    """Each token's exact bytes and display text, cached (logprob entries name tokens by them).

    A token may be part of a UTF-8 character (byte-level BPE, sentencepiece
    byte fallback): its ``bytes`` are then the raw bytes, and its text is
    ``bytes:\\xNN...`` as OpenAI's completions API writes such tokens.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer
        self._texts: dict[int, tuple[str, bytes]] = {}
        self._byte_level = self._decoder_type(tokenizer) == "ByteLevel"
        self._alphabet = _byte_level_alphabet() if self._byte_level else {}

    @staticmethod
    def _decoder_type(tokenizer: PreTrainedTokenizerBase) -> str:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            return ""
        decoder = json.loads(backend.to_str()).get("decoder") or {}
        return str(decoder.get("type", ""))

    def _raw_bytes(self, token: int) -> bytes:
        converted = self._tokenizer.convert_ids_to_tokens(token)
        raw = converted if isinstance(converted, str) else ""
        if self._byte_level and raw and all(c in self._alphabet for c in raw):
            return bytes(self._alphabet[c] for c in raw)
        fallback = _BYTE_FALLBACK.fullmatch(raw or "")
        if fallback:
            return bytes([int(fallback.group(1), 16)])
        if raw and "\u2581" in raw:  # sentencepiece word start
            return raw.replace("\u2581", " ").encode("utf-8")
        return _decode(self._tokenizer, [token], False).encode("utf-8")

    def _entry(self, token: int) -> tuple[str, bytes]:
        entry = self._texts.get(token)
        if entry is None:
            data = self._raw_bytes(token)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text = "bytes:" + "".join(f"\\x{b:02x}" for b in data)
            entry = (text, data)
            self._texts[token] = entry
        return entry

    def __call__(self, token: int) -> str:
        return self._entry(token)[0]

    def bytes(self, token: int) -> list[int]:
        return list(self._entry(token)[1])


class IncrementalDetokenizer:
    """Text of tokens added one at a time, never splitting a UTF-8 character."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, context: list[int]) -> None:
        self._tokenizer = tokenizer
        self._ids = list(context[-_WINDOW:])
        self._prefix = 0
        self._read = len(self._ids)

    def _texts(self) -> tuple[str, str]:
        before = _decode(self._tokenizer, self._ids[self._prefix : self._read], True)
        after = _decode(self._tokenizer, self._ids[self._prefix :], True)
        return before, after

    def add(self, token: int) -> str:
        self._ids.append(token)
        before, after = self._texts()
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self._advance()
        return after[len(before) :]

    def flush(self) -> str:
        """Whatever is still held (an incomplete character at the very end, as decode gives it)."""
        before, after = self._texts()
        self._advance()
        return after[len(before) :] if len(after) > len(before) else ""

    def _advance(self) -> None:
        self._prefix, self._read = self._read, len(self._ids)
        if self._prefix > _TRIM_AT:
            del self._ids[: self._prefix]
            self._read -= self._prefix
            self._prefix = 0


class ChoiceOutput:
    """Builds the deltas of one choice; ``stopped`` once a stop string was found."""

    def __init__(
        self,
        *,
        index: int,
        kind: Literal["chat", "completion"],
        tokenizer: PreTrainedTokenizerBase,
        texts: TokenTexts,
        prompt_ids: list[int],
        stops: tuple[str, ...],
        logprobs: bool,
        text_offset: int = 0,
    ) -> None:
        self.index = index
        self._kind = kind
        self._texts = texts
        self._detok = IncrementalDetokenizer(tokenizer, prompt_ids)
        self._stops = tuple(s for s in stops if s)
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self._held = ""
        self._logprobs = logprobs
        self._offset = text_offset
        self._pending_tokens = 0
        self._pending_lp: list[TokenLogprob] = []
        self.stopped = False

    def add(
        self, token: int, logprob: TokenLogprob | None, *, hidden: bool = False
    ) -> TextDelta | None:
        """Account for a new token; a delta if it released text.

        A ``hidden`` token (the end-of-sequence token that ends the choice) is
        counted and gets its logprob, but its text is not part of the answer.
        """
        self._pending_tokens += 1
        if logprob is not None:
            self._pending_lp.append(logprob)
        if hidden:
            return None
        text = self._release(self._detok.add(token), final=False)
        return self._delta(text) if text else None

    def finish(self) -> TextDelta | None:
        """The last delta: held text (unless a stop string ended it) and uncounted tokens."""
        text = "" if self.stopped else self._release(self._detok.flush(), final=True)
        if text or self._pending_tokens:
            return self._delta(text)
        return None

    def _release(self, new: str, *, final: bool) -> str:
        if self.stopped:
            return ""
        self._held += new
        if not self._stops:
            text, self._held = self._held, ""
            return text
        cut = min((i for i in (self._held.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            text, self._held = self._held[:cut], ""
            return text
        keep = 0 if final else self._hold
        split = max(len(self._held) - keep, 0)
        text, self._held = self._held[:split], self._held[split:]
        return text

    def _delta(self, text: str) -> TextDelta:
        logprobs = self._format(self._pending_lp) if self._logprobs else None
        delta = TextDelta(
            index=self.index, text=text, logprobs=logprobs, token_count=self._pending_tokens
        )
        self._pending_tokens = 0
        self._pending_lp = []
        return delta

    def _format(self, entries: list[TokenLogprob]) -> dict[str, Any]:
        if self._kind == "chat":
            return {"content": [self._chat_entry(e) for e in entries]}
        tokens, offsets = [], []
        for e in entries:
            text = self._texts(e.token)
            tokens.append(text)
            offsets.append(self._offset)
            self._offset += len(text)
        return {
            "tokens": tokens,
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [
                {self._texts(e.token): e.logprob} | {self._texts(t): lp for t, lp in e.top}
                for e in entries
            ],
            "text_offset": offsets,
        }

    def _chat_entry(self, e: TokenLogprob) -> dict[str, Any]:
        text = self._texts(e.token)
        return {
            "token": text,
            "logprob": e.logprob,
            "bytes": self._texts.bytes(e.token),
            "top_logprobs": [
                {"token": self._texts(tok), "logprob": lp, "bytes": self._texts.bytes(tok)}
                for tok, lp in e.top
            ],
        }


def echo_delta(
    index: int,
    prompt_text: str,
    prompt_ids: list[int],
    prompt_logprobs: list[TokenLogprob] | None,
    texts: TokenTexts,
) -> TextDelta:
    """A completion choice's echoed prompt: its text, and logprobs (None for the first token)."""
    if prompt_logprobs is None:
        return TextDelta(index=index, text=prompt_text)
    tokens = [texts(t) for t in prompt_ids]
    offsets, offset = [], 0
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    top: list[dict[str, float] | None] = [None]
    top += [
        {texts(e.token): e.logprob} | {texts(t): lp for t, lp in e.top} for e in prompt_logprobs
    ]
    logprobs = {
        "tokens": tokens,
        "token_logprobs": [None] + [e.logprob for e in prompt_logprobs],
        "top_logprobs": top,
        "text_offset": offsets,
    }
    return TextDelta(index=index, text=prompt_text, logprobs=logprobs)
