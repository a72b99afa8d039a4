"""Loading and unloading tell the engine serving the add-on's base; its refusal changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from firebox.accounts.bootstrap import run_bootstrap
from firebox.catalog.binding import EngineBinding, UpstreamEngine
from firebox.clock import FakeClock
from firebox.inference.engine import (
    ChoiceFinished,
    EmbeddingEngine,
    EngineCapabilities,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
    UpstreamError,
)
from firebox.inference.models import ModelRef, ModelResolver
from firebox.inference.router import EngineRouter
from firebox.services import Services, build_services
from firebox.settings import Settings
from firebox.store.database import Database
from tests.catalog.conftest import UPSTREAM, Members, addon, create_model, error_of, text_base
from tests.conftest import OPERATOR_KEY
from tests.support.api import ok

BASE = "accounts/firebox/models/llama-8b"
LOCAL_BASE = "accounts/firebox/models/tiny"
ACME_ADDON = "accounts/acme/models/sql"


class Engine:
    """A text engine that answers "ok" and records what it is asked to generate."""

    capabilities = EngineCapabilities(params=frozenset({"max_tokens"}))

    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        self.log = log

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        self.log.append(("generate", request.adapter))
        yield TextDelta(index=0, text="ok", token_count=1)
        yield ChoiceFinished(index=0, finish_reason="stop")

    async def close(self) -> None:
        pass


class LoadingEngine(Engine):
    """Loads adapters at run time, as an upstream does; ``fail`` makes it refuse."""

    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        super().__init__(log)
        self.fail: Exception | None = None

    async def load_adapter(self, name: str, path: str | None) -> None:
        self.log.append(("load", name, path))
        if self.fail is not None:
            raise self.fail

    async def unload_adapter(self, name: str) -> None:
        self.log.append(("unload", name))
        if self.fail is not None:
            raise self.fail


class RegistryEngine(Engine):
    """Is told where an adapter's files are, as the in-process engine is."""

    def register_adapter(self, name: str, path: str) -> None:
        self.log.append(("register", name, path))


class Engines:
    """The factory: a ``LoadingEngine`` for upstream bindings, a ``RegistryEngine`` for local."""

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []
        self.upstream = LoadingEngine(self.log)
        self.local = RegistryEngine(self.log)

    def text(self, binding: EngineBinding, model: ModelRef) -> Engine:
        return self.upstream if isinstance(binding, UpstreamEngine) else self.local

    def embedding(self, binding: EngineBinding, model: ModelRef) -> EmbeddingEngine:
        raise AssertionError("no embeddings here")

    def calls(self, kind: str) -> list[tuple[Any, ...]]:
        return [call for call in self.log if call[0] == kind]


@pytest.fixture
def engines() -> Engines:
    return Engines()


@pytest.fixture
def services(
    settings: Settings, database: Database, clock: FakeClock, engines: Engines
) -> Iterator[Services]:
    built = build_services(settings, db=database, clock=clock, engine_factory=engines)
    run_bootstrap(database, clock, admin_key=OPERATOR_KEY, with_demo=True)
    yield built
    built.revocations.close()


@pytest.fixture
def bases(client: TestClient, operator_headers: dict[str, str], members: Members) -> None:
    create_model(
        client, operator_headers, "firebox", "llama-8b", text_base(public=True, engine=UPSTREAM)
    )
    create_model(
        client,
        operator_headers,
        "firebox",
        "tiny",
        text_base(public=True, engine={"type": "local"}),
    )


def load(client: TestClient, headers: dict[str, str], account: str, model: str) -> Any:
    return client.post(
        f"/v1/accounts/{account}/deployedModels", json={"model": model}, headers=headers
    )


def chat(client: TestClient, headers: dict[str, str], model: str) -> Any:
    return client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        headers=headers,
    )


def test_the_engine_of_the_base_loads_and_drops_the_adapter(
    client: TestClient,
    operator_headers: dict[str, str],
    members: Members,
    bases: None,
    engines: Engines,
) -> None:
    create_model(client, operator_headers, "acme", "sql", addon(BASE, adapterPath="/srv/sql"))
    ok(load(client, members.acme_user, "acme", ACME_ADDON))
    assert engines.calls("load") == [("load", ACME_ADDON, "/srv/sql")]
    ok(chat(client, members.acme_user, ACME_ADDON))
    assert engines.calls("generate") == [("generate", ACME_ADDON)]
    ok(client.delete("/v1/accounts/acme/deployedModels/sql", headers=members.acme_user))
    assert engines.calls("unload") == [("unload", ACME_ADDON)]


def test_an_adapter_the_upstream_started_with_is_never_dropped(
    client: TestClient,
    operator_headers: dict[str, str],
    members: Members,
    bases: None,
    engines: Engines,
) -> None:
    create_model(client, operator_headers, "acme", "sql", addon(BASE, upstreamAdapter="sql-v1"))
    ok(load(client, members.acme_user, "acme", ACME_ADDON))
    assert engines.calls("load") == [("load", "sql-v1", None)]  # the upstream: nothing to do
    ok(client.delete("/v1/accounts/acme/deployedModels/sql", headers=members.acme_user))
    assert engines.calls("unload") == []


def test_the_last_unload_drops_an_adapter_loaded_in_several_accounts(
    client: TestClient,
    operator_headers: dict[str, str],
    members: Members,
    bases: None,
    engines: Engines,
) -> None:
    name = "accounts/firebox/models/shared"
    create_model(
        client, operator_headers, "firebox", "shared", addon(BASE, public=True, adapterPath="/s")
    )
    ok(load(client, operator_headers, "firebox", name))
    ok(load(client, members.acme_user, "acme", name))
    assert engines.calls("load") == [("load", name, "/s")] * 2  # loading twice is harmless
    ok(client.delete("/v1/accounts/acme/deployedModels/shared", headers=members.acme_user))
    assert engines.calls("unload") == []  # still loaded for everyone
    ok(chat(client, members.globex_user, name))
    ok(client.delete("/v1/accounts/firebox/deployedModels/shared", headers=operator_headers))
    assert engines.calls("unload") == [("unload", name)]


def test_an_engine_refusal_leaves_everything_as_it_was(
    client: TestClient,
    operator_headers: dict[str, str],
    members: Members,
    bases: None,
    engines: Engines,
) -> None:
    create_model(client, operator_headers, "acme", "sql", addon(BASE, adapterPath="/srv/sql"))
    engines.upstream.fail = UpstreamError("The model server refused: no such folder.")
    refused = error_of(load(client, members.acme_user, "acme", ACME_ADDON), 502)
    assert (refused["code"], refused["message"]) == (
        "upstream_error",
        "The model server refused: no such folder.",
    )
    listed = ok(client.get("/v1/accounts/acme/deployedModels", headers=members.acme_user))
    assert listed["deployedModels"] == []
    assert error_of(chat(client, members.acme_user, ACME_ADDON), 400)["code"] == (
        "model_not_deployed"
    )

    engines.upstream.fail = None
    ok(load(client, members.acme_user, "acme", ACME_ADDON))
    engines.upstream.fail = UpstreamError("The model server is down.")
    path = "/v1/accounts/acme/deployedModels/sql"
    assert error_of(client.delete(path, headers=members.acme_user), 502)["code"] == (
        "upstream_error"
    )
    assert ok(client.get(path, headers=members.acme_user))["state"] == "DEPLOYED"
    ok(chat(client, members.acme_user, ACME_ADDON))
    engines.upstream.fail = None
    ok(client.delete(path, headers=members.acme_user))
    assert error_of(client.get(path, headers=members.acme_user), 404)["code"] == (
        "deployed_model_not_found"
    )


def test_the_in_process_engine_is_given_the_adapter_folder(
    client: TestClient,
    operator_headers: dict[str, str],
    members: Members,
    bases: None,
    engines: Engines,
    services: Services,
) -> None:
    name = "accounts/acme/models/upper"
    create_model(
        client, operator_headers, "acme", "upper", addon(LOCAL_BASE, adapterPath="/srv/upper")
    )
    ok(load(client, members.acme_user, "acme", name))
    assert engines.calls("register") == [("register", name, "/srv/upper")]
    ok(chat(client, members.acme_user, name))
    assert engines.calls("register") == [("register", name, "/srv/upper")]  # once is enough
    assert engines.calls("generate") == [("generate", name)]

    # A restarted gateway registers it again on first use.
    router = EngineRouter(Engines())
    ref = ModelResolver(services.catalog).resolve_text("acme", name)
    fresh = asyncio.run(router.text_engine(ref))
    assert isinstance(fresh, RegistryEngine)
    assert fresh.log == [("register", name, "/srv/upper")]

    # Without the adapter's folder the in-process engine cannot serve an add-on.
    create_model(client, members.acme_user, "acme", "bare", addon(LOCAL_BASE))
    bare = error_of(load(client, members.acme_user, "acme", "accounts/acme/models/bare"), 400)
    assert (bare["code"], bare["param"]) == ("adapter_path_missing", "model")
    listed = ok(client.get("/v1/accounts/acme/deployedModels", headers=members.acme_user))
    assert [m["model"] for m in listed["deployedModels"]] == [name]
