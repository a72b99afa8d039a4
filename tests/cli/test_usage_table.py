"""``firebox get usage --by model`` in an 80-column terminal: whole headers, short model names.

The command runs in-process through ``main()``; the server's answer comes from an
``httpx.MockTransport`` behind the real ``ApiClient``.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import httpx
import pytest
from rich.cells import cell_len

from firebox.cli import context
from firebox.cli.client import ApiClient
from firebox.cli.main import main

HEADERS = ("MODEL", "REQUESTS", "PROMPT TOKENS", "CACHED", "COMPLETION TOKENS", "AMOUNT")


def group(key: str, amount: str) -> dict[str, Any]:
    return {
        "key": key,
        "requests": 12345,
        "promptTokens": 1234567,
        "cachedPromptTokens": 120000,
        "completionTokens": 7654321,
        "amount": amount,
    }


USAGE = {
    "groupBy": "model",
    "groups": [
        group("accounts/firebox/models/llama-v3p1-8b-instruct", "123.456789"),
        group("accounts/firebox/models/qwen2p5-7b", "1.000000"),
        group("accounts/firebox/models/shared-name", "0.500000"),
        group("accounts/acme/models/shared-name", "0.250000"),
    ],
    "total": {"amount": "125.206789"},
}


def run_usage(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/accounts/acme/usage"
        return httpx.Response(200, json=USAGE)

    fake = functools.partial(ApiClient, transport=httpx.MockTransport(answer))
    monkeypatch.setattr(context, "ApiClient", fake)
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("FIREBOX_API_KEY", "fb_test")
    argv = ["firebox", "get", "usage", "--by", "model", "--account", "acme"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code in (0, None)
    return capsys.readouterr().out


def test_usage_by_model_fits_80_columns_with_whole_headers(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run_usage(monkeypatch, capsys)
    lines = out.splitlines()
    assert all(cell_len(line) <= 80 for line in lines), out
    header_lines = [line for line in lines if line.startswith("┃")]
    assert len(header_lines) == 1, out  # no header folded onto a second line
    assert [part.strip() for part in header_lines[0].strip("┃").split("┃")] == list(HEADERS)


def test_usage_by_model_shortens_unambiguous_model_names(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run_usage(monkeypatch, capsys)
    first_cells = "".join(line.split("│")[1].strip() for line in out.splitlines() if "│" in line)
    assert "llama-v3p1-8b-instruct" in first_cells
    assert "qwen2p5-7b" in first_cells
    assert "accounts/firebox/models/llama" not in first_cells
    # Two rows end in the same id: both keep their full names.
    assert "accounts/firebox/models/shared-name" in first_cells
    assert "accounts/acme/models/shared-name" in first_cells
