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
        table = Table(header_style="bold")
        cols = list(columns)
        for index, col in enumerate(cols):
            table.add_column(col.header, overflow="fold", no_wrap=index == 0)
        for item in items:
            table.add_row(*(Text(cell(item.get(col.field))) for col in cols))
        self.console.print(table)
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
