"""Counting tokens with a model's own tokenizer, for engines that do not report them.

Uses the ``tokenizers`` library on a ``tokenizer.json`` (the Hugging Face
fast-tokenizer file every modern checkpoint ships), which is light enough to
load in the gateway next to an upstream engine.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from firebox.errors import FailedPrecondition


def load_counter(path: str) -> Callable[[str], int]:
    """A function counting the tokens of a text (no special tokens added)."""
    from tokenizers import Tokenizer

    file = Path(path)
    if file.is_dir():
        file = file / "tokenizer.json"
    if not file.is_file():
        raise FailedPrecondition(
            f"The tokenizer {path!r} set on this model's engine does not exist on the "
            "gateway; the operator must point it at a tokenizer.json or its folder.",
            code="tokenizer_missing",
        )
    tokenizer = Tokenizer.from_file(str(file))

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    return count
