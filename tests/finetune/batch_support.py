"""Helpers of the batch tests: an in-process app serving firebox-tiny, batch input lines."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
import torch
from fastapi.testclient import TestClient
from sqlalchemy import select

from firebox.app import create_app
from firebox.billing.models import UsageRecordRow
from firebox.clock import FakeClock
from firebox.server import initialize
from firebox.services import Services, build_services
from firebox.settings import Settings
from firebox.store.database import Database
from tests.conftest import OPERATOR_KEY, REDIS_URL

TINY = "accounts/firebox/models/firebox-tiny"
QUESTIONS = ["What color is the sky?", "Name a fruit.", "Count to three.", "Say hello.", "Why?"]


@dataclass
class App:
    services: Services
    client: TestClient
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def app(
    tmp_path: Path, database: Database, clock: FakeClock, key: str | None = None, **extra: Any
) -> Iterator[App]:
    """The whole gateway in process, its batch runner polling fast; the demo account's key.

    ``key``: the demo key a first start on the same database issued (a restart issues none).
    """
    torch.set_num_threads(1)
    if REDIS_URL and key is None:  # a fresh database: no counters of an earlier test's "demo"
        redis.Redis.from_url(REDIS_URL).flushdb()
    settings = Settings(
        data_dir=tmp_path / "data",
        admin_key=OPERATOR_KEY,
        access_log=False,
        bootstrap_demo=True,
        warm_local_engines=False,
        batch_poll_s=0.2,
        redis_url=REDIS_URL,  # CI: admission (the batch price, no rate limit) in Redis too
        **extra,
    )
    services = build_services(settings, db=database, clock=clock)
    key = initialize(services).demo_key or key
    assert key is not None
    with TestClient(create_app(services), raise_server_exceptions=False) as client:
        yield App(services, client, key)
    services.revocations.close()


def batch_lines(count: int, max_tokens: int = 4) -> list[dict[str, Any]]:
    """``count`` OpenAI batch request lines, greedy, each a different question."""
    return [
        {
            "custom_id": f"q-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": TINY,
                "messages": [{"role": "user", "content": f"{QUESTIONS[i % 5]} ({i})"}],
                "max_tokens": max_tokens,
                "temperature": 0,
            },
        }
        for i in range(count)
    ]


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def wait_for(check: Callable[[], Any], timeout_s: float = 180.0, what: str = "it") -> Any:
    """Poll ``check`` until it returns something truthy (generous: the machine is shared)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout_s} s")


def usage_rows(services: Services, prefix: str) -> list[UsageRecordRow]:
    """Ledger rows whose request id starts with ``prefix`` (after the writer caught up)."""
    assert services.money.ingest.flush(30.0), "the ledger writer did not catch up"
    with services.db.transaction() as session:
        rows = session.scalars(
            select(UsageRecordRow).where(UsageRecordRow.request_id.startswith(prefix))
        ).all()
        session.expunge_all()
    return list(rows)


class ThroughTestClient(httpx.BaseTransport):
    """Hands an SDK's requests to the in-process app (its TestClient is another httpx)."""

    def __init__(self, client: TestClient) -> None:
        self._client = client

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self._client.request(
            request.method, str(request.url), headers=dict(request.headers), content=request.read()
        )
        headers = [(k, v) for k, v in answer.headers.multi_items() if k != "content-encoding"]
        return httpx.Response(answer.status_code, headers=headers, content=answer.content)
