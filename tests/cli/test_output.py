"""Table and JSON rendering of ``Printer``, captured from Rich consoles."""

from __future__ import annotations

import io
import json

from rich.console import Console

from firebox.cli.output import (
    Column,
    OutputFormat,
    Printer,
    cell,
    fit_widths,
    humanize,
    short_names,
)


def printer(fmt: OutputFormat) -> tuple[Printer, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    made = Printer(
        fmt,
        console=Console(file=out, width=120, color_system=None),
        stderr=Console(file=err, width=120, color_system=None),
    )
    return made, out, err


ACCOUNT = {
    "name": "accounts/acme",
    "displayName": "[bold]Acme[/bold]",
    "email": None,
    "createTime": "2030-01-02T03:04:05.123456Z",
}


def test_cell_formats() -> None:
    assert cell(None) == ""
    assert cell(True) == "true"
    assert cell(3) == "3"
    assert cell({"a": 1}) == '{"a": 1}'
    assert cell("2030-01-02T03:04:05.123456Z") == "2030-01-02 03:04:05 UTC"
    assert cell("2030-01-02T03:04:05+02:00") == "2030-01-02 03:04:05+02:00"
    assert cell("not 2030-01-02T03:04:05Z") == "not 2030-01-02T03:04:05Z"


def test_humanize() -> None:
    assert humanize("displayName") == "Display name"
    assert humanize("name") == "Name"


def test_resource_as_table_shows_markup_literally() -> None:
    made, out, _ = printer(OutputFormat.TABLE)
    made.resource(ACCOUNT)
    text = out.getvalue()
    assert "Display name" in text
    assert "[bold]Acme[/bold]" in text
    assert "2030-01-02 03:04:05 UTC" in text


def test_resource_as_json_is_the_object() -> None:
    made, out, err = printer(OutputFormat.JSON)
    made.resource(ACCOUNT)
    assert json.loads(out.getvalue()) == ACCOUNT
    assert err.getvalue() == ""


def test_listing_as_table_and_json() -> None:
    columns = (Column("NAME", "name"), Column("EMAIL", "email"))
    made, out, err = printer(OutputFormat.TABLE)
    made.listing([ACCOUNT], columns, field="accounts", total_size=1)
    assert "NAME" in out.getvalue() and "accounts/acme" in out.getvalue()
    assert "total: 1" in err.getvalue()

    made, out, _ = printer(OutputFormat.JSON)
    made.listing([ACCOUNT], columns, field="accounts", total_size=1)
    assert json.loads(out.getvalue()) == {"accounts": [ACCOUNT], "totalSize": 1}


def test_secret_goes_alone_to_stdout_in_table_mode() -> None:
    key = {"keyId": "key_1", "displayName": "ci", "key": "fb_" + "x" * 150}
    made, out, err = printer(OutputFormat.TABLE)
    made.secret(key, "key")
    assert out.getvalue() == key["key"] + "\n"  # never wrapped, nothing else
    assert "key_1" in err.getvalue() and key["key"] not in err.getvalue()

    made, out, _ = printer(OutputFormat.JSON)
    made.secret(key, "key")
    assert json.loads(out.getvalue()) == key


def test_done_prints_message_or_json() -> None:
    made, out, _ = printer(OutputFormat.TABLE)
    made.done("Deleted API key key_1.", {})
    assert out.getvalue() == "Deleted API key key_1.\n"
    made, out, _ = printer(OutputFormat.JSON)
    made.done("Deleted API key key_1.", {})
    assert json.loads(out.getvalue()) == {}


def test_short_names_keep_full_names_only_where_ambiguous() -> None:
    names = [
        "accounts/firebox/models/x",
        "accounts/firebox/models/y",
        "accounts/acme/models/y",
        "2030-01-02",
    ]
    assert short_names(names) == [
        "x",
        "accounts/firebox/models/y",
        "accounts/acme/models/y",
        "2030-01-02",
    ]


def test_fit_widths_narrows_the_widest_columns_never_below_their_header() -> None:
    headers = ["ID", "PROMPT TOKENS", "AMOUNT"]
    rows = [["a" * 40, "12", "1.5"]]
    assert fit_widths(headers, rows, room=60) is None  # fits as it is
    widths = fit_widths(headers, rows, room=30)
    assert widths == [11, 13, 6]  # the long id folds; headers stay whole
    assert fit_widths(headers, rows, room=20) is None  # not even the headers fit


def test_listing_never_overflows_a_narrow_console() -> None:
    out = io.StringIO()
    made = Printer(
        OutputFormat.TABLE,
        console=Console(file=out, width=50, color_system=None),
        stderr=Console(file=io.StringIO(), width=50, color_system=None),
    )
    columns = (Column("NAME", "name"), Column("DISPLAY NAME", "displayName"))
    made.listing([{**ACCOUNT, "name": "accounts/" + "a" * 80}], columns, field="accounts")
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 50 for line in lines)
    assert sum(line.startswith("┃") for line in lines) == 1
