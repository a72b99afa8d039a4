"""``firebox get usage --by deployment``: GPU-seconds per deployment, serverless named."""

from __future__ import annotations

import functools
import sys

import httpx
import pytest

from firebox.cli import context
from firebox.cli.client import ApiClient
from firebox.cli.main import main

USAGE = {
    "groupBy": "deployment",
    "groups": [
        {"key": "", "requests": 3, "promptTokens": 30, "cachedPromptTokens": 0,
         "completionTokens": 9, "amount": "0.000010", "gpuSeconds": 0.0},
        {"key": "accounts/acme/deployments/d1", "requests": 61, "promptTokens": 0,
         "cachedPromptTokens": 0, "completionTokens": 0, "amount": "0.129667",
         "gpuSeconds": 120.0},
    ],
    "total": {"amount": "0.129677"},
}  # fmt: skip


def test_usage_by_deployment_shows_gpu_seconds(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=USAGE)

    fake = functools.partial(ApiClient, transport=httpx.MockTransport(answer))
    monkeypatch.setattr(context, "ApiClient", fake)
    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.setenv("FIREBOX_API_KEY", "fb_test")
    argv = ["firebox", "get", "usage", "--by", "deployment", "--account", "acme"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code in (0, None)
    out = capsys.readouterr().out
    assert seen[0].url.params["groupBy"] == "deployment"
    assert "GPU SECONDS" in out and "DEPLOYMENT" in out
    assert "accounts/acme/deployments/d1" in out and "120" in out
    assert "(serverless)" in out
