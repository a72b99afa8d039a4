"""Durations on the wire: protobuf's ``"600s"``, and the ``"10m"`` / ``"1h"`` people write.

``parse`` accepts a sequence of number+unit parts (``"1h30m"``, ``"1.5s"``,
``"250ms"``); a bare number means seconds. ``emit`` always writes ``"<n>s"``,
as protojson does.
"""

from __future__ import annotations

import math
import re

from firebox.errors import InvalidArgument

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_S = 10 * 365 * 86400.0


def parse(value: object, field: str) -> float:
    """Seconds in ``value`` (a duration string or a number), or a 400 naming ``field``."""
    if isinstance(value, bool):
        raise _bad(value, field)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value.strip().lower(), field)
    else:
        raise _bad(value, field)
    if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_S:
        raise _bad(value, field)
    return seconds


def _parse_text(text: str, field: str) -> float:
    if not text:
        raise _bad(text, field)
    try:
        return float(text)
    except ValueError:
        pass
    position, total = 0, 0.0
    while position < len(text):
        match = _PART.match(text, position)
        if match is None:
            raise _bad(text, field)
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    return total


def emit(seconds: float) -> str:
    """``"600s"``; fractions keep up to millisecond precision (``"1.5s"``)."""
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{round(seconds, 3):g}s"


def _bad(value: object, field: str) -> InvalidArgument:
    return InvalidArgument(
        f'{field} must be a duration such as "600s", "10m" or "1h"; got {value!r}.',
        code="invalid_duration",
        param=field,
    )
