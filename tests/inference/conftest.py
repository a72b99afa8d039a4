"""A fake vLLM-shaped upstream serving a base model and a LoRA add-on, for gateway tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.catalog.conftest import addon, post_model, text_base
from tests.support.api import ok
from tests.support.fake_upstream import FakeUpstream

ADAPTER = "acme-sql-lora"


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(
        model="meta-llama/Llama-3.1-8B", adapters=(ADAPTER,), context_length=512
    ) as fake:
        yield fake


@pytest.fixture
def upstream(fake_upstream: FakeUpstream) -> Iterator[FakeUpstream]:
    fake_upstream.reset()
    yield fake_upstream
    fake_upstream.reset()


def register_upstream_models(
    client: TestClient, operator: dict[str, str], fake: FakeUpstream, **base_extra: Any
) -> None:
    """``accounts/firebox/models/llama-8b`` on the fake, and its add-on ``llama-8b-sql``, loaded."""
    engine = {"type": "upstream", "urls": [fake.url], "upstreamModel": fake.model, "timeoutS": 5}
    body = text_base(8e9, public=True, engine=engine, **base_extra)
    body["contextLength"] = 512
    ok(post_model(client, operator, "firebox", "llama-8b", body))
    ok(
        post_model(
            client,
            operator,
            "firebox",
            "llama-8b-sql",
            addon("accounts/firebox/models/llama-8b", public=True, upstreamAdapter=ADAPTER),
        )
    )
    # Loaded in the platform account: served to every account.
    ok(
        client.post(
            "/v1/accounts/firebox/deployedModels",
            json={"model": "accounts/firebox/models/llama-8b-sql"},
            headers=operator,
        )
    )
