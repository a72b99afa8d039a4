"""A LoRA add-on is served only while it is loaded, in the caller's account or the platform's."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from firebox.catalog.service import CatalogService
from firebox.clock import FakeClock
from firebox.errors import FailedPrecondition
from firebox.inference.models import ModelResolver
from firebox.services import Services
from firebox.store.database import Database
from tests.catalog.conftest import Members, addon, create_model, error_of
from tests.inference.conftest import (  # noqa: F401 (fixtures)
    ADAPTER,
    fake_upstream,
    register_upstream_models,
    upstream,
)
from tests.support.api import ok
from tests.support.fake_upstream import FakeUpstream

BASE = "accounts/firebox/models/llama-8b"
PLATFORM_ADDON = "accounts/firebox/models/llama-8b-sql"
ACME_ADDON = "accounts/acme/models/sql"


def chat(client: TestClient, headers: dict[str, str], model: str) -> Any:
    return client.post(
        "/inference/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
        headers=headers,
    )


@pytest.fixture
def served(
    client: TestClient,
    operator_headers: dict[str, str],
    members: Members,
    upstream: FakeUpstream,  # noqa: F811
) -> FakeUpstream:
    """The platform base and its public add-on (loaded for everyone), and acme's add-on."""
    register_upstream_models(client, operator_headers, upstream)
    create_model(client, operator_headers, "acme", "sql", addon(BASE, upstreamAdapter=ADAPTER))
    return upstream


def test_an_addon_is_served_only_while_loaded(
    client: TestClient, members: Members, served: FakeUpstream
) -> None:
    before = chat(client, members.acme_user, ACME_ADDON)
    error = error_of(before, 400)
    assert (error["code"], error["param"]) == ("model_not_deployed", "model")
    assert "POST /v1/accounts/acme/deployedModels" in error["message"]
    assert ACME_ADDON in error["message"]
    assert served.requests == []  # refused before any engine work

    loaded = ok(
        client.post(
            "/v1/accounts/acme/deployedModels",
            json={"model": ACME_ADDON},
            headers=members.acme_user,
        )
    )
    answer = ok(chat(client, members.acme_inference, ACME_ADDON))
    assert answer["model"] == ACME_ADDON
    assert served.requests[-1]["model"] == ADAPTER
    # Other accounts cannot see acme's add-on at all.
    assert error_of(chat(client, members.globex_user, ACME_ADDON), 404)["code"] == (
        "model_not_found"
    )

    ok(client.delete(f"/v1/{loaded['name']}", headers=members.acme_user))
    after = chat(client, members.acme_user, ACME_ADDON)
    assert error_of(after, 400)["code"] == "model_not_deployed"
    # The base model never needs loading.
    ok(chat(client, members.acme_user, BASE))


def test_a_platform_loaded_public_addon_serves_every_account(
    client: TestClient,
    operator_headers: dict[str, str],
    members: Members,
    served: FakeUpstream,
) -> None:
    for headers in (members.acme_user, members.globex_user):
        assert ok(chat(client, headers, PLATFORM_ADDON))["model"] == PLATFORM_ADDON
        assert ok(chat(client, headers, "llama-8b-sql"))["model"] == "llama-8b-sql"

    ok(client.delete("/v1/accounts/firebox/deployedModels/llama-8b-sql", headers=operator_headers))
    for headers in (members.acme_user, members.globex_user):
        assert error_of(chat(client, headers, PLATFORM_ADDON), 400)["code"] == (
            "model_not_deployed"
        )

    # An account may load a public add-on for itself alone.
    ok(
        client.post(
            "/v1/accounts/acme/deployedModels",
            json={"model": "llama-8b-sql"},
            headers=members.acme_user,
        )
    )
    ok(chat(client, members.acme_user, PLATFORM_ADDON))
    assert error_of(chat(client, members.globex_user, PLATFORM_ADDON), 400)["code"] == (
        "model_not_deployed"
    )


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


def test_the_check_costs_no_query(
    client: TestClient, members: Members, served: FakeUpstream, services: Services
) -> None:
    resolver = ModelResolver(services.catalog)
    resolver.resolve_text("acme", PLATFORM_ADDON)  # warm
    with Queries(services.db) as queries:
        for _ in range(50):
            assert resolver.resolve_text("acme", PLATFORM_ADDON).adapter == ADAPTER
            with pytest.raises(FailedPrecondition):
                resolver.resolve_text("acme", ACME_ADDON)
    assert queries.count == 0


def test_other_replicas_see_loads_within_the_refresh_interval(
    client: TestClient,
    members: Members,
    served: FakeUpstream,
    database: Database,
    clock: FakeClock,
) -> None:
    replica = CatalogService(database, clock, refresh_s=3600)
    assert not replica.addon_deployed("acme", ACME_ADDON)
    ok(
        client.post(
            "/v1/accounts/acme/deployedModels",
            json={"model": ACME_ADDON},
            headers=members.acme_user,
        )
    )
    assert not replica.addon_deployed("acme", ACME_ADDON)  # its snapshot is an hour fresh
    replica.refresh()  # what the background refresh does once refresh_s has passed
    assert replica.addon_deployed("acme", ACME_ADDON)
    assert replica.addon_deployed("globex", PLATFORM_ADDON)
    assert not replica.addon_deployed("globex", ACME_ADDON)
