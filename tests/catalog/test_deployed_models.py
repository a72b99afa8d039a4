"""``/v1/accounts/{account}/deployedModels``: loading LoRA add-ons for serving, over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from fireworks import BadRequestError, Fireworks, NotFoundError

from firebox.catalog.preload import CatalogFileError, load_catalogs
from firebox.services import Services
from tests.catalog.conftest import (
    UPSTREAM,
    Members,
    addon,
    create_model,
    error_of,
    text_base,
)
from tests.support.api import ok

BASE = "accounts/firebox/models/llama-8b"
PUBLIC_ADDON = "accounts/firebox/models/sql-public"
ACME_ADDON = "accounts/acme/models/sql"


@pytest.fixture
def catalog(client: TestClient, operator_headers: dict[str, str], members: Members) -> None:
    """A served public base, a public platform add-on, a private one, and one of acme's."""
    create_model(
        client, operator_headers, "firebox", "llama-8b", text_base(public=True, engine=UPSTREAM)
    )
    create_model(client, operator_headers, "firebox", "sql-public", addon(BASE, public=True))
    create_model(client, operator_headers, "firebox", "sql-private", addon(BASE))
    create_model(client, operator_headers, "firebox", "unserved", text_base(70e9))
    create_model(client, members.acme_user, "acme", "sql", addon(BASE, displayName="SQL"))


def load(
    client: TestClient, headers: dict[str, str], account: str, model: str, **extra: Any
) -> Any:
    return client.post(
        f"/v1/accounts/{account}/deployedModels", json={"model": model, **extra}, headers=headers
    )


def test_load_get_list_patch_and_unload(
    client: TestClient, members: Members, catalog: None, services: Services
) -> None:
    loaded = ok(load(client, members.acme_user, "acme", ACME_ADDON, description="v1"))
    assert loaded["name"] == "accounts/acme/deployedModels/sql"
    assert (loaded["model"], loaded["state"]) == (ACME_ADDON, "DEPLOYED")
    assert (loaded["displayName"], loaded["description"]) == ("SQL", "v1")
    assert (loaded["serverless"], loaded["default"], loaded["public"]) == (True, True, False)
    assert loaded["createTime"] and loaded["updateTime"]
    assert services.catalog.addon_deployed("acme", ACME_ADDON)
    assert not services.catalog.addon_deployed("globex", ACME_ADDON)

    got = ok(client.get("/v1/accounts/acme/deployedModels/sql", headers=members.acme_contributor))
    assert got == loaded
    listed = ok(client.get("/v1/accounts/acme/deployedModels", headers=members.acme_user))
    assert (listed["deployedModels"], listed["totalSize"], listed["nextPageToken"]) == (
        [loaded],
        1,
        "",
    )

    patched = ok(
        client.patch(
            "/v1/accounts/acme/deployedModels/sql",
            json={"displayName": "SQL v2", "model": ACME_ADDON, "serverless": True},
            headers=members.acme_user,
        )
    )
    assert (patched["displayName"], patched["description"]) == ("SQL v2", "v1")
    other = client.patch(
        "/v1/accounts/acme/deployedModels/sql",
        json={"model": PUBLIC_ADDON},
        headers=members.acme_user,
    )
    assert error_of(other, 400)["code"] == "model_immutable"

    assert (
        ok(client.delete("/v1/accounts/acme/deployedModels/sql", headers=members.acme_user)) == {}
    )
    assert not services.catalog.addon_deployed("acme", ACME_ADDON)
    gone = client.get("/v1/accounts/acme/deployedModels/sql", headers=members.acme_user)
    assert error_of(gone, 404)["code"] == "deployed_model_not_found"
    again = client.delete("/v1/accounts/acme/deployedModels/sql", headers=members.acme_user)
    assert error_of(again, 404)["code"] == "deployed_model_not_found"
    # The add-on itself stays, and can be loaded again.
    ok(client.get("/v1/accounts/acme/models/sql", headers=members.acme_user))
    assert ok(load(client, members.acme_user, "acme", "accounts/acme/models/sql"))


def test_permissions_and_other_accounts(
    client: TestClient, members: Members, catalog: None
) -> None:
    contributor = load(client, members.acme_contributor, "acme", ACME_ADDON)
    assert error_of(contributor, 403)["code"] == "role_forbids"
    reader = client.get("/v1/accounts/acme/deployedModels", headers=members.acme_inference)
    assert error_of(reader, 403)["code"] == "role_forbids"
    ok(load(client, members.acme_user, "acme", ACME_ADDON))

    for method, path in (
        ("GET", "/v1/accounts/acme/deployedModels"),
        ("GET", "/v1/accounts/acme/deployedModels/sql"),
        ("PATCH", "/v1/accounts/acme/deployedModels/sql"),
        ("DELETE", "/v1/accounts/acme/deployedModels/sql"),
        ("POST", "/v1/accounts/acme/deployedModels"),
    ):
        body = {"model": ACME_ADDON} if method in ("POST", "PATCH") else None
        answer = client.request(method, path, json=body, headers=members.globex_user)
        assert error_of(answer, 404)["code"] == "account_not_found", (method, path)
    deleted = client.delete(
        "/v1/accounts/acme/deployedModels/sql", headers=members.acme_contributor
    )
    assert error_of(deleted, 403)["code"] == "role_forbids"
    # Another account's add-on, or a private platform one, is as missing as a made-up one.
    for name in (ACME_ADDON, "accounts/firebox/models/sql-private", "accounts/acme/models/nope"):
        refused = load(client, members.globex_user, "globex", name)
        error = error_of(refused, 404)
        assert (error["code"], error["param"]) == ("model_not_found", None)
        assert repr(name) in error["message"]


def test_what_can_be_loaded(
    client: TestClient, operator_headers: dict[str, str], members: Members, catalog: None
) -> None:
    base = load(client, members.acme_user, "acme", BASE)
    error = error_of(base, 400)
    assert (error["code"], error["param"]) == ("not_a_lora_addon", "model")
    assert "HF_BASE_MODEL" in error["message"]
    missing = client.post("/v1/accounts/acme/deployedModels", json={}, headers=members.acme_user)
    assert error_of(missing, 400)["code"] == "missing_field"
    unknown = load(client, members.acme_user, "acme", ACME_ADDON, replicas=2)
    assert error_of(unknown, 400)["param"] == "replicas"

    deployment = load(
        client, members.acme_user, "acme", ACME_ADDON, deployment="accounts/acme/deployments/d1"
    )
    # Add-ons load onto the account's own deployments (tests/deployments/test_placement.py).
    error = error_of(deployment, 404)
    assert (error["code"], error["param"]) == ("deployment_not_found", "deployment")
    merged = client.post(
        "/v1/accounts/acme/deployedModels?replaceMergedAddon=true",
        json={"model": ACME_ADDON},
        headers=members.acme_user,
    )
    assert error_of(merged, 400)["param"] == "replaceMergedAddon"
    public = load(client, members.acme_user, "acme", ACME_ADDON, public=True)
    assert error_of(public, 400)["code"] == "public_not_settable"

    # An add-on whose base has no engine cannot be served, so it is not loaded.
    create_model(
        client, operator_headers, "firebox", "stranded", addon("accounts/firebox/models/unserved")
    )
    stranded = load(client, operator_headers, "firebox", "accounts/firebox/models/stranded")
    assert error_of(stranded, 400)["code"] == "model_not_served"

    first = ok(load(client, members.acme_user, "acme", ACME_ADDON, serverless=True))
    twice = error_of(load(client, members.acme_user, "acme", "accounts/acme/models/sql"), 409)
    assert twice["code"] == "already_deployed"
    assert first["name"] in twice["message"]
    nobody = load(client, operator_headers, "nowhere", PUBLIC_ADDON)
    assert error_of(nobody, 404)["code"] == "account_not_found"


def test_the_same_id_in_one_account_gets_a_suffix(
    client: TestClient, operator_headers: dict[str, str], members: Members, catalog: None
) -> None:
    create_model(client, operator_headers, "firebox", "sql", addon(BASE, public=True))
    own = ok(load(client, members.acme_user, "acme", ACME_ADDON))
    platform = ok(load(client, members.acme_user, "acme", "sql"))  # the bare name: firebox's
    assert own["name"] == "accounts/acme/deployedModels/sql"
    assert platform["name"].startswith("accounts/acme/deployedModels/sql-")
    assert platform["model"] == "accounts/firebox/models/sql"
    assert (own["public"], platform["public"]) == (False, False)


def test_pages(
    client: TestClient, operator_headers: dict[str, str], members: Members, catalog: None
) -> None:
    for n in range(5):
        create_model(client, members.acme_user, "acme", f"a{n}", addon(BASE))
        ok(load(client, members.acme_user, "acme", f"accounts/acme/models/a{n}"))
    names: list[str] = []
    token = ""
    while True:
        page = ok(
            client.get(
                f"/v1/accounts/acme/deployedModels?pageSize=2&pageToken={token}",
                headers=members.acme_user,
            )
        )
        assert page["totalSize"] == 5
        names += [m["name"].rsplit("/", 1)[1] for m in page["deployedModels"]]
        token = page["nextPageToken"]
        if not token:
            break
    assert names == ["a0", "a1", "a2", "a3", "a4"]
    bad = client.get("/v1/accounts/acme/deployedModels?filter=x", headers=members.acme_user)
    assert error_of(bad, 400)["param"] == "filter"


def test_a_loaded_addon_cannot_be_deleted(
    client: TestClient, operator_headers: dict[str, str], members: Members, catalog: None
) -> None:
    ok(load(client, members.acme_user, "acme", PUBLIC_ADDON))
    refused = client.delete("/v1/accounts/firebox/models/sql-public", headers=operator_headers)
    error = error_of(refused, 400)
    assert error["code"] == "model_is_deployed"
    assert "accounts/acme/deployedModels/sql-public" in error["message"]
    ok(client.delete("/v1/accounts/acme/deployedModels/sql-public", headers=members.acme_user))
    ok(client.delete("/v1/accounts/firebox/models/sql-public", headers=operator_headers))


def test_adapter_path_is_the_operators(
    client: TestClient, operator_headers: dict[str, str], members: Members, catalog: None
) -> None:
    mine = client.post(
        "/v1/accounts/acme/models",
        json={"modelId": "p", "model": addon(BASE, adapterPath="/etc")},
        headers=members.acme_user,
    )
    error = error_of(mine, 403)
    assert (error["code"], error["param"]) == ("operator_only", "adapterPath")
    made = create_model(client, operator_headers, "acme", "p", addon(BASE, adapterPath="/srv/p"))
    assert made["adapterPath"] == "/srv/p"
    shown = ok(client.get("/v1/accounts/acme/models/p", headers=members.acme_user))
    assert shown["adapterPath"] is None
    on_base = client.post(
        "/v1/accounts/firebox/models",
        json={"modelId": "b", "model": text_base(adapterPath="/srv/b")},
        headers=operator_headers,
    )
    assert error_of(on_base, 400)["code"] == "field_not_allowed"


class ThroughTestClient(httpx.BaseTransport):
    """Hands the SDK's requests to the in-process app (its TestClient is another httpx)."""

    def __init__(self, client: TestClient) -> None:
        self._client = client

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self._client.request(
            request.method, str(request.url), headers=dict(request.headers), content=request.read()
        )
        headers = [(k, v) for k, v in answer.headers.multi_items() if k != "content-encoding"]
        return httpx.Response(answer.status_code, headers=headers, content=answer.content)


def test_the_unmodified_sdk(client: TestClient, members: Members, catalog: None) -> None:
    key = members.acme_user["Authorization"].removeprefix("Bearer ")
    sdk = Fireworks(
        api_key=key,
        base_url="http://testserver",
        account_id="acme",
        max_retries=0,
        http_client=httpx.Client(transport=ThroughTestClient(client)),
    )
    loaded = sdk.lora.load(model=ACME_ADDON, display_name="From the SDK")
    assert (loaded.name, loaded.state, loaded.serverless) == (
        "accounts/acme/deployedModels/sql",
        "DEPLOYED",
        True,
    )
    assert loaded.create_time is not None and loaded.display_name == "From the SDK"
    assert [m.model for m in sdk.lora.list()] == [ACME_ADDON]
    assert sdk.lora.get("sql").model == ACME_ADDON
    assert sdk.lora.update("sql", description="tuned").description == "tuned"
    with pytest.raises(BadRequestError):
        sdk.lora.load(model=BASE)
    sdk.lora.unload("sql")
    with pytest.raises(NotFoundError):
        sdk.lora.get("sql")


TOML = """
[[models]]
id = "llama-8b"
kind = "HF_BASE_MODEL"
parameterCount = 8_000_000_000
public = true
engine = { type = "upstream", urls = ["http://vllm:8000/v1"], upstreamModel = "llama" }

[[models]]
id = "llama-8b-sql"
kind = "HF_PEFT_ADDON"
baseModel = "llama-8b"
loraRank = 8
targetModules = ["q_proj"]
upstreamAdapter = "sql"
public = true
deployed = DEPLOYED
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(text)
    return path


def test_catalog_files_load_addons_for_everyone(
    client: TestClient,
    operator_headers: dict[str, str],
    members: Members,
    services: Services,
    tmp_path: Path,
) -> None:
    name = "accounts/firebox/models/llama-8b-sql"
    on = write(tmp_path, TOML.replace("DEPLOYED", "true"))
    assert load_catalogs(services.catalog, [on]) == ["llama-8b", "llama-8b-sql"]
    assert load_catalogs(services.catalog, [on]) == []  # idempotent
    listed = ok(client.get("/v1/accounts/firebox/deployedModels", headers=operator_headers))
    (deployed,) = listed["deployedModels"]
    assert (deployed["name"], deployed["model"]) == (
        "accounts/firebox/deployedModels/llama-8b-sql",
        name,
    )
    assert (deployed["state"], deployed["public"]) == ("DEPLOYED", True)
    assert services.catalog.addon_deployed("acme", name)
    assert services.catalog.addon_deployed("globex", name)
    # Left out, the deployment stays as it is; false unloads it.
    assert (
        load_catalogs(services.catalog, [write(tmp_path, TOML.replace("deployed = DEPLOYED", ""))])
        == []
    )
    assert services.catalog.addon_deployed("acme", name)
    assert load_catalogs(services.catalog, [write(tmp_path, TOML.replace("DEPLOYED", "false"))])
    assert not services.catalog.addon_deployed("acme", name)
    listed = ok(client.get("/v1/accounts/firebox/deployedModels", headers=operator_headers))
    assert listed["deployedModels"] == []


def test_catalog_files_load_only_servable_addons(services: Services, tmp_path: Path) -> None:
    on_base = TOML.replace("DEPLOYED", "true").replace(
        'public = true\nengine = { type = "upstream"',
        'deployed = true\nengine = { type = "upstream"',
    )
    with pytest.raises(CatalogFileError, match=r"models\[0\].*deployed applies to LoRA add-ons"):
        load_catalogs(services.catalog, [write(tmp_path, on_base)])
    unbound = TOML.replace("DEPLOYED", "true").replace(
        'engine = { type = "upstream", urls = ["http://vllm:8000/v1"], upstreamModel = "llama" }',
        "",
    )
    with pytest.raises(CatalogFileError, match=r"models\[1\].*no engine bound"):
        load_catalogs(services.catalog, [write(tmp_path, unbound)])


def test_loading_claims_the_deployed_models_quota(
    client: TestClient, operator_headers: dict[str, str], members: Members, catalog: None
) -> None:
    """SPEC §5: a load beyond the quota is refused naming it; an unload frees a unit."""
    quota = "/v1/accounts/acme/quotas/deployed-models"
    ok(client.patch(quota, json={"value": 1}, headers=operator_headers))
    ok(load(client, members.acme_user, "acme", ACME_ADDON))
    assert ok(client.get(quota, headers=members.acme_user))["usage"] == 1
    error = error_of(load(client, members.acme_user, "acme", PUBLIC_ADDON), 400)
    assert error["code"] == "quota_exceeded" and "deployed-models" in error["message"]
    unloaded = client.delete("/v1/accounts/acme/deployedModels/sql", headers=members.acme_user)
    assert unloaded.status_code == 200, unloaded.text
    assert ok(client.get(quota, headers=members.acme_user))["usage"] == 0
    ok(load(client, members.acme_user, "acme", PUBLIC_ADDON))
