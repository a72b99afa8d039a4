"""``CatalogService.resolve``: the gateway's lookup, from memory, and how replicas converge."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from firebox.catalog.binding import LocalEngine, UpstreamEngine
from firebox.catalog.kinds import ModelKind
from firebox.catalog.price_class import PriceClass
from firebox.catalog.service import CatalogService
from firebox.clock import FakeClock
from firebox.errors import NotFound
from firebox.services import Services
from firebox.store.database import Database
from tests.catalog.conftest import UPSTREAM, Members, addon, create_model, embedding, text_base

BASE = "accounts/firebox/models/llama-8b"


@pytest.fixture
def catalog(
    client: TestClient, operator_headers: dict[str, str], members: Members, services: Services
) -> CatalogService:
    create_model(
        client,
        operator_headers,
        "firebox",
        "llama-8b",
        text_base(8e9, public=True, supportsImageInput=True, engine=UPSTREAM, price="0.25"),
    )
    create_model(client, operator_headers, "firebox", "staging", text_base(70e9))
    create_model(
        client,
        operator_headers,
        "firebox",
        "minilm",
        embedding(public=True, engine={"type": "local"}),
    )
    create_model(client, members.acme_user, "acme", "sql", addon(BASE, description="SQL adapter"))
    create_model(
        client, operator_headers, "acme", "served", addon(BASE, upstreamAdapter="acme-sql")
    )
    return services.catalog


class Queries:
    """Counts the SQL statements a database runs."""

    def __init__(self, db: Database) -> None:
        self.count = 0
        self._db = db

    def __call__(self, *_: Any) -> None:
        self.count += 1

    def __enter__(self) -> Queries:
        event.listen(self._db.engine, "before_cursor_execute", self)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self._db.engine, "before_cursor_execute", self)


def test_resolve_a_base_model_by_full_and_short_name(catalog: CatalogService) -> None:
    full = catalog.resolve("acme", BASE)
    assert catalog.resolve("acme", "llama-8b") == full
    assert full.name == BASE
    assert (full.account_id, full.model_id, full.kind) == (
        "firebox",
        "llama-8b",
        ModelKind.TEXT_BASE,
    )
    assert (full.base_model, full.adapter) == (None, None)
    assert (full.context_length, full.supports_image_input) == (8192, True)
    assert (full.price_class, full.price_micro_usd) == (PriceClass.TEXT_DENSE_UP_TO_16B, 250_000)
    assert full.engine == UpstreamEngine(
        urls=("http://gpu-1:8000/v1", "https://gpu-2.example.com/v1"),
        upstream_model="meta-llama/Llama-3.1-8B-Instruct",
        api_key="sk-upstream-secret",
        timeout_s=30.0,
    )
    embed = catalog.resolve("globex", "minilm")
    assert (embed.kind, embed.engine) == (ModelKind.EMBEDDING, LocalEngine(path=None))
    assert embed.price_class is PriceClass.EMBEDDING_UP_TO_150M


def test_an_addon_resolves_to_its_base_engine_and_price(catalog: CatalogService) -> None:
    tuned = catalog.resolve("acme", "accounts/acme/models/sql")
    assert tuned.kind is ModelKind.LORA_ADDON
    assert tuned.base_model == BASE
    assert tuned.adapter is not None
    assert (tuned.adapter.name, tuned.adapter.rank) == ("accounts/acme/models/sql", 8)
    assert tuned.adapter.target_modules == ("q_proj", "v_proj")
    assert tuned.adapter.upstream_adapter is None
    base = catalog.resolve("acme", BASE)
    assert tuned.engine == base.engine
    assert (tuned.context_length, tuned.supports_image_input) == (8192, True)
    assert (tuned.price_class, tuned.price_micro_usd) == (base.price_class, 250_000)
    served = catalog.resolve("acme", "accounts/acme/models/served")
    assert served.adapter is not None and served.adapter.upstream_adapter == "acme-sql"


@pytest.mark.parametrize(
    ("account", "name"),
    [
        ("globex", "accounts/acme/models/sql"),  # another account's private add-on
        ("acme", "accounts/firebox/models/staging"),  # a private platform model
        ("acme", "staging"),
        ("acme", "accounts/firebox/models/nothing"),
        ("acme", "nothing"),
        ("acme", "accounts/acme/sql"),
        ("acme", "accounts//models/sql"),
        ("acme", ""),
    ],
)
def test_missing_or_invisible_models_are_the_same_not_found(
    catalog: CatalogService, account: str, name: str
) -> None:
    with pytest.raises(NotFound) as caught:
        catalog.resolve(account, name)
    assert caught.value.code == "model_not_found"
    assert caught.value.http_status == 404
    assert repr(name) in caught.value.message
    assert "GET /v1/accounts/firebox/models" in caught.value.message


def test_the_platform_account_sees_its_private_models(catalog: CatalogService) -> None:
    assert catalog.resolve("firebox", "staging").price_class is PriceClass.TEXT_DENSE_16B_TO_80B


def test_a_hit_or_a_miss_never_queries_the_database(
    catalog: CatalogService, database: Database
) -> None:
    catalog.resolve("acme", "llama-8b")  # warm
    with Queries(database) as queries:
        for _ in range(100):
            catalog.resolve("acme", "llama-8b")
            catalog.resolve("acme", "accounts/acme/models/sql")
            with pytest.raises(NotFound):
                catalog.resolve("acme", "made-up")
    assert queries.count == 0


def test_local_writes_apply_at_once(
    client: TestClient, operator_headers: dict[str, str], catalog: CatalogService
) -> None:
    catalog.resolve("acme", "llama-8b")
    create_model(client, operator_headers, "firebox", "fresh", text_base(7e9, public=True))
    assert catalog.resolve("acme", "fresh").name == "accounts/firebox/models/fresh"
    client.delete("/v1/accounts/firebox/models/fresh", headers=operator_headers)
    with pytest.raises(NotFound):
        catalog.resolve("acme", "fresh")


class Timer:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def replica(database: Database, clock: FakeClock) -> Iterator[tuple[CatalogService, Timer]]:
    """A second gateway's catalog on the same database, with a timer the test moves."""
    timer = Timer()
    yield CatalogService(database, clock, refresh_s=5.0, timer=timer), timer


def test_other_replicas_converge_within_the_refresh_interval(
    client: TestClient,
    operator_headers: dict[str, str],
    catalog: CatalogService,
    replica: tuple[CatalogService, Timer],
    database: Database,
) -> None:
    other, timer = replica
    assert other.resolve("acme", "llama-8b").context_length == 8192  # first use loads
    client.patch(
        "/v1/accounts/firebox/models/llama-8b",
        json={"contextLength": 4096},
        headers=operator_headers,
    )
    timer.now = 4.9
    with Queries(database) as queries:
        assert other.resolve("acme", "llama-8b").context_length == 8192  # still fresh enough
    assert queries.count == 0
    timer.now = 5.0
    # The lookup that notices staleness answers at once and refreshes in the background.
    other.resolve("acme", "llama-8b")
    deadline = time.monotonic() + 60  # only the failure path: the refresh runs in a thread
    while time.monotonic() < deadline:
        if other.resolve("acme", "llama-8b").context_length == 4096:
            break
        time.sleep(0.01)
    assert other.resolve("acme", "llama-8b").context_length == 4096
