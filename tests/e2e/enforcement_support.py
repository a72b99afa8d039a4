"""Shared pieces of the enforcement end-to-end tests: a priced fake model, accounts, clients."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import OPERATOR_KEY
from tests.support.fake_upstream import FakeUpstream

OPERATOR = {"Authorization": f"Bearer {OPERATOR_KEY}"}
CHEAP = "accounts/firebox/models/fake-8b"  # $0.20 per 1M tokens (dense, up to 16B)
# Outside every SPEC §2 bucket, so it carries its own price: $250,000 per 1M tokens,
# i.e. $0.25 a token: a one-token prompt and one generated token cost $0.50.
DEAR = "accounts/firebox/models/fake-dear"


def write_catalog(data: Path, fake: FakeUpstream) -> Path:
    """A catalog file with two models served by ``fake``: one cheap, one very dear."""
    data.mkdir(parents=True, exist_ok=True)
    catalog = data / "catalog.toml"
    catalog.write_text(
        f"""
[[models]]
id = "fake-8b"
kind = "HF_BASE_MODEL"
parameterCount = 8_000_000_000
contextLength = 512
public = true
[models.engine]
type = "upstream"
urls = ["{fake.url}"]
upstreamModel = "{fake.model}"
timeoutS = 20

[[models]]
id = "fake-dear"
kind = "HF_BASE_MODEL"
contextLength = 512
price = "250000.00"
public = true
[models.engine]
type = "upstream"
urls = ["{fake.url}"]
upstreamModel = "{fake.model}"
timeoutS = 20
"""
    )
    return catalog


@dataclass
class Member:
    account: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def new_member(url: str, account: str) -> Member:
    """An account with one admin user and an API key, created by the operator."""
    with httpx.Client(headers=OPERATOR, timeout=30) as http:
        http.post(f"{url}/v1/accounts", params={"accountId": account}, json={}).raise_for_status()
        http.post(
            f"{url}/v1/accounts/{account}/users", params={"userId": "owner"}, json={"role": "admin"}
        ).raise_for_status()
        created = http.post(f"{url}/v1/accounts/{account}/users/owner/apiKeys", json={})
        created.raise_for_status()
        return Member(account, created.json()["key"])


def chat_body(model: str, max_tokens: int = 4, stream: bool = False) -> dict[str, object]:
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def dear_completion() -> dict[str, object]:
    """A request to the dear model whose worst case equals its cost: exactly $0.50."""
    return {"model": DEAR, "prompt": [1], "max_tokens": 1}
