"""Which characters a request's text may hold, decided once for every store.

PostgreSQL cannot store a NUL in a text column (the driver raises) while
SQLite stores it, so without a rule at the edge the same request is a 500 on
one store and a 200 on the other. The rule, applied identically everywhere:

- NUL (U+0000) is refused in every string of every request: bodies, prompts,
  path segments and query parameters.
- In control-plane bodies (names, ids, display names, emails, descriptions,
  engine bindings) every other control character (C0, DEL, C1) is refused
  too, except tab, line feed and carriage return, which text pasted from a
  file may carry.
- In the URL (path segments: account, user and model ids; query parameters:
  ids, ``filter``, ``pageToken``) no control character at all is accepted:
  those values are single-line by nature.
- Prompts and embedding inputs refuse only NUL: any other character is the
  model's business, not the store's.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

# C0 controls, DEL and C1 controls: Unicode category Cc.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# The same, less tab, line feed and carriage return.
_CONTROL_BUT_WHITESPACE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")

CODE = "invalid_characters"
_NUL_ESCAPE = b"\\u0000"  # how orjson (and JSON) writes a NUL


def _describe(char: str) -> str:
    return f"U+{ord(char):04X}"


def nul_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored, or None: it holds a NUL."""
    if "\x00" in value:
        return "contains a NUL character (U+0000); remove it"
    return None


def text_problem(value: str) -> str | None:
    """Why ``value`` is not acceptable body text, or None (tab and newlines are text)."""
    found = _CONTROL_BUT_WHITESPACE.search(value)
    if found:
        return f"contains the control character {_describe(found.group())}; remove it"
    return None


def url_problem(value: str) -> str | None:
    """Why ``value`` is not acceptable in a URL path or query, or None."""
    found = _CONTROL.search(value)
    if found:
        return f"contains the control character {_describe(found.group())}; remove it"
    return None


def strings_in(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str]]:
    """Every string in a JSON-like value (keys included), with its location."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            key_path = (*path, str(key))
            if isinstance(key, str):
                yield key_path, key
            yield from strings_in(item, key_path)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from strings_in(item, (*path, str(index)))


def first_nul(value: Any) -> str | None:
    """The dotted location (``messages.1.content``) of the first string holding a NUL.

    Every inference body passes here, so the common answer (no NUL) comes from
    one orjson encoding (C, under a µs for a chat body; NUL is always encoded
    as the escape ``\\u0000``, in keys too) instead of a Python walk over every
    string (about 10 µs). Only a body whose encoding holds that escape, or
    that orjson cannot encode, is walked, to find and name the string.
    """
    try:
        if _NUL_ESCAPE not in orjson.dumps(value):
            return None
    except TypeError:  # not plain JSON (orjson.JSONEncodeError is one): walk it
        pass
    for path, text in strings_in(value):
        if "\x00" in text:
            return ".".join(path)
    return None
