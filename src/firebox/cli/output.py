"""How results reach stdout: a Rich table for people, or JSON for scripts.

Values are always wrapped in ``Text`` so that a display name such as
``[bold]`` is printed as typed, never read as Rich markup.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

_WORD_START = re.compile(r"(?<!^)(?=[A-Z])")
_TIMESTAMP = re.compile(r"^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(?:\.\d+)?(Z|[+-]\d{2}:\d{2})$")


class OutputFormat(StrEnum):
    """The ``-o/--output`` choices."""

    TABLE = "table"
    JSON = "json"


@dataclass(frozen=True)
class Column:
    """One column of a list table: its header and the JSON field it shows."""

    header: str
    field: str


def humanize(field: str) -> str:
    """``displayName`` -> ``Display name``: a label for a camelCase JSON field."""
    return _WORD_START.sub(" ", field).capitalize()


def cell(value: Any) -> str:
    """A JSON value as table text: empty for null, ``true``/``false``, times to the second."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    text = str(value)
    stamp = _TIMESTAMP.match(text)
    if stamp:  # tables show seconds; -o json keeps the full precision
        day, clock, zone = stamp.groups()
        return f"{day} {clock}{' UTC' if zone in ('Z', '+00:00') else zone}"
    return text


def short_names(names: Sequence[str]) -> list[str]:
    """Resource names shortened to their last segment where no other name shares it.

    ``accounts/firebox/models/x`` reads as ``x`` in a table unless another row is
    ``accounts/acme/models/x``; those keep their full names. ``-o json`` always
    has the full names.
    """
    last = [name.rsplit("/", 1)[-1] for name in names]
    seen: dict[str, int] = {}
    for segment in last:
        seen[segment] = seen.get(segment, 0) + 1
    return [seg if seg and seen[seg] == 1 else name for name, seg in zip(names, last, strict=True)]


def _width(text: str) -> int:
    return max((cell_len(line) for line in text.splitlines()), default=0)


def fit_widths(
    headers: Sequence[str], rows: Sequence[Sequence[str]], room: int
) -> list[int] | None:
    """Content widths for a table's columns in ``room`` cells, headers kept on one line.

    Rich, short of space, narrows every wrapping column alike, down to a letter
    per line for headers too (``PROMPT TOKENS`` as ``PRO/MPT/TOK/ENS``), and its
    ``min_width`` is not honoured by that last resort: the table overflows.
    Here the widest columns give up width first (a water level), never below
    their header, and their cells fold. None: the natural widths fit, or not
    even the headers do (then Rich wraps as it can).
    """
    floors = [_width(header) for header in headers]
    natural = [max([floor, *(_width(row[i]) for row in rows)]) for i, floor in enumerate(floors)]
    if sum(natural) <= room or sum(floors) > room:
        return None

    def widths_at(level: int) -> list[int]:
        return [max(floor, min(want, level)) for floor, want in zip(floors, natural, strict=True)]

    low, high = 0, max(natural)  # widths_at(low) fits (it is the floors), widths_at(high) not
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if sum(widths_at(middle)) <= room else (low, middle)
    widths = widths_at(low)
    spare = room - sum(widths)
    for i, want in enumerate(natural):  # hand out what the level left, left to right
        if spare and widths[i] < want:
            widths[i] += 1
            spare -= 1
    return widths


def to_json(data: Any) -> str:
    """The JSON text printed for ``-o json``: indented, keys in the server's order."""
    return json.dumps(data, indent=2, ensure_ascii=False)


def fields_table(obj: dict[str, Any]) -> Table:
    """A borderless field/value table of one JSON object, in the server's key order."""
    table = Table(show_header=False, box=None)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for field, value in obj.items():
        table.add_row(Text(humanize(field)), Text(cell(value)))
    return table


def table_of(headers: Sequence[str], rows: Sequence[Sequence[str]], width: int) -> Table:
    """A list table no wider than ``width``: headers on one line, cells folded to fit."""
    table = Table(header_style="bold")  # default box, one space of padding each side
    room = width - (3 * len(headers) + 1)  # the borders and the padding
    fitted = fit_widths(headers, rows, room)
    widths: list[int | None] = list(fitted) if fitted else [None] * len(headers)
    for header, column_width in zip(headers, widths, strict=True):
        table.add_column(header, overflow="fold", width=column_width)
    for row in rows:
        table.add_row(*(Text(value) for value in row))
    return table


class Printer:
    """Prints resources, lists and notes in the chosen format.

    In JSON mode stdout carries exactly one JSON document and nothing else,
    so notes meant for people go to stderr.
    """

    def __init__(
        self,
        fmt: OutputFormat,
        *,
        console: Console | None = None,
        stderr: Console | None = None,
    ) -> None:
        self.format = fmt
        self.console = console or Console()
        self.stderr = stderr or Console(stderr=True)

    @property
    def is_json(self) -> bool:
        return self.format is OutputFormat.JSON

    def json(self, data: Any) -> None:
        """Print ``data`` as plain JSON text (no wrapping, no colour)."""
        self.console.file.write(to_json(data) + "\n")
        self.console.file.flush()

    def resource(self, obj: dict[str, Any]) -> None:
        """One resource: a two-column field/value table, or the object as JSON."""
        if self.is_json:
            self.json(obj)
        else:
            self.console.print(fields_table(obj))

    def secret(self, obj: dict[str, Any], field: str) -> None:
        """A resource holding a secret (``field``) that the server shows only once.

        JSON: the whole object. Table: the other fields and a warning on
        stderr, and the secret alone on stdout, so that
        ``KEY=$(firebox create api-key --user u)`` captures just the secret.
        """
        if self.is_json:
            self.json(obj)
            return
        self.stderr.print(fields_table({k: v for k, v in obj.items() if k != field}))
        self.stderr.print(
            Text("Copy this secret now; it cannot be shown again:", style="bold yellow")
        )
        self.console.print(Text(cell(obj.get(field)), style="bold green"), soft_wrap=True)

    def listing(
        self,
        items: Sequence[dict[str, Any]],
        columns: Iterable[Column],
        *,
        field: str,
        total_size: int | None = None,
    ) -> None:
        """A list: one row per item, or ``{field: [...], "totalSize": n}`` as JSON."""
        total = len(items) if total_size is None else total_size
        if self.is_json:
            self.json({field: list(items), "totalSize": total})
            return
        cols = list(columns)
        rows = [[cell(item.get(col.field)) for col in cols] for item in items]
        self.console.print(table_of([col.header for col in cols], rows, self.console.width))
        self.note(f"total: {total}")

    def done(self, message: str, data: dict[str, Any]) -> None:
        """Confirm an action with no resource to show: ``message``, or ``data`` as JSON."""
        if self.is_json:
            self.json(data)
        else:
            self.console.print(Text(message), highlight=False)

    def note(self, message: str) -> None:
        """A line for people on stderr, kept out of stdout so that pipes see only data."""
        self.stderr.print(Text(message, style="dim"), highlight=False)
