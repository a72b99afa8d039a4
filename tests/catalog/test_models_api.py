"""Creating, reading, changing and deleting models through the HTTP API, on every database."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.catalog.conftest import (
    UPSTREAM,
    Members,
    addon,
    create_model,
    embedding,
    error_of,
    post_model,
    text_base,
)
from tests.support.api import ok

OP_BASE = "accounts/firebox/models/llama-8b"


def _platform_base(client: TestClient, op: dict[str, str], **extra: object) -> dict[str, object]:
    return create_model(
        client,
        op,
        "firebox",
        "llama-8b",
        text_base(8e9, public=True, supportsImageInput=True, engine=UPSTREAM, **extra),
    )


def test_operator_creates_a_text_base_model_in_the_sdk_shape(
    client: TestClient, operator_headers: dict[str, str]
) -> None:
    model = _platform_base(client, operator_headers, description="Llama 3.1 8B")
    assert model["name"] == OP_BASE
    assert model["kind"] == "HF_BASE_MODEL"
    assert model["state"] == "READY"
    assert (model["public"], model["contextLength"], model["supportsImageInput"]) == (
        True,
        8192,
        True,
    )
    assert model["baseModelDetails"] == {
        "parameterCount": "8000000000",
        "moe": False,
        "modelType": None,
    }
    assert model["peftDetails"] is None
    assert (model["supportsLora"], model["supportsServerless"]) == (True, True)
    assert (model["priceClass"], model["price"]) == ("TEXT_DENSE_UP_TO_16B", None)
    assert model["createTime"].endswith("Z") and model["updateTime"] == model["createTime"]
    # The operator sees the binding, but never the upstream's API key.
    assert model["engine"] == {
        "type": "upstream",
        "urls": ["http://gpu-1:8000/v1", "https://gpu-2.example.com/v1"],
        "upstreamModel": "meta-llama/Llama-3.1-8B-Instruct",
        "apiKeySet": True,
        "timeoutS": 30.0,
        "tokenizer": None,
    }
    assert "sk-upstream-secret" not in client.get(f"/v1/{OP_BASE}", headers=operator_headers).text
    got = ok(client.get(f"/v1/{OP_BASE}", headers=operator_headers))
    assert got == model


def test_model_id_in_the_query_or_the_body(
    client: TestClient, operator_headers: dict[str, str]
) -> None:
    by_query = client.post(
        "/v1/accounts/firebox/models?modelId=by-query",
        json={"model": embedding()},
        headers=operator_headers,
    )
    assert ok(by_query)["name"] == "accounts/firebox/models/by-query"
    clash = client.post(
        "/v1/accounts/firebox/models?modelId=one",
        json={"modelId": "two", "model": embedding()},
        headers=operator_headers,
    )
    assert error_of(clash, 400)["param"] == "modelId"
    missing = client.post(
        "/v1/accounts/firebox/models", json={"model": embedding()}, headers=operator_headers
    )
    assert error_of(missing, 400)["code"] == "missing_field"
    bad = post_model(client, operator_headers, "firebox", "Bad_Id", embedding())
    assert error_of(bad, 400)["code"] == "invalid_id"
    again = post_model(client, operator_headers, "firebox", "by-query", embedding())
    assert error_of(again, 409)["code"] == "already_exists"
    nowhere = post_model(client, operator_headers, "nowhere", "x", embedding())
    assert error_of(nowhere, 404)["code"] == "account_not_found"
    unknown = post_model(client, operator_headers, "firebox", "y", embedding(weights="x"))
    assert error_of(unknown, 400)["code"] == "unknown_field"
    cluster = client.post(
        "/v1/accounts/firebox/models",
        json={"modelId": "z", "model": embedding(), "cluster": "accounts/firebox/clusters/c"},
        headers=operator_headers,
    )
    assert error_of(cluster, 400)["param"] == "cluster"


def test_lora_addon_inherits_from_its_base(
    client: TestClient, operator_headers: dict[str, str], members: Members
) -> None:
    _platform_base(client, operator_headers)
    made = create_model(client, members.acme_user, "acme", "tuned", addon(OP_BASE))
    assert made["name"] == "accounts/acme/models/tuned"
    assert made["kind"] == "HF_PEFT_ADDON"
    assert made["peftDetails"] == {
        "baseModel": OP_BASE,
        "r": 8,
        "targetModules": ["q_proj", "v_proj"],
    }
    assert made["baseModelDetails"] is None
    assert (made["contextLength"], made["supportsImageInput"]) == (8192, True)
    assert (made["priceClass"], made["supportsServerless"]) == ("TEXT_DENSE_UP_TO_16B", True)
    assert made["engine"] is None  # bindings are shown to the operator only
    # The short name of a platform model works as a base too.
    short = create_model(client, members.acme_user, "acme", "tuned-2", addon("llama-8b"))
    assert short["peftDetails"]["baseModel"] == OP_BASE
    # The kind defaults to HF_PEFT_ADDON, as in the Fireworks API.
    body = addon(OP_BASE)
    del body["kind"]
    assert create_model(client, members.acme_user, "acme", "tuned-3", body)["kind"] == (
        "HF_PEFT_ADDON"
    )


def test_addon_fields_that_belong_to_the_base_are_refused(
    client: TestClient, operator_headers: dict[str, str]
) -> None:
    _platform_base(client, operator_headers)
    for field, value in (
        ("price", "0.10"),
        ("contextLength", 4096),
        ("engine", {"type": "local"}),
        ("baseModelDetails", {"parameterCount": "1"}),
    ):
        refused = post_model(
            client, operator_headers, "firebox", "addon", addon(OP_BASE, **{field: value})
        )
        error = error_of(refused, 400)
        assert (error["code"], error["param"]) == ("field_not_allowed", field)
    no_peft = post_model(client, operator_headers, "firebox", "a", {"kind": "HF_PEFT_ADDON"})
    assert error_of(no_peft, 400)["param"] == "peftDetails"
    adapter = create_model(
        client, operator_headers, "firebox", "vllm-addon", addon(OP_BASE, upstreamAdapter="sql")
    )
    assert adapter["upstreamAdapter"] == "sql"


def test_addon_base_must_be_a_visible_text_base(
    client: TestClient, operator_headers: dict[str, str], members: Members
) -> None:
    _platform_base(client, operator_headers)
    create_model(client, operator_headers, "firebox", "private-base", text_base(7e9))
    create_model(client, operator_headers, "globex", "globex-base", text_base(7e9))
    create_model(client, operator_headers, "firebox", "embed", embedding(public=True))
    for base in (
        "accounts/firebox/models/private-base",
        "accounts/globex/models/globex-base",
        "accounts/firebox/models/missing",
        "not/a/name",
    ):
        refused = post_model(client, members.acme_user, "acme", "t", addon(base))
        error = error_of(refused, 400)
        assert (error["code"], error["param"]) == ("base_model_not_found", "peftDetails.baseModel")
    embed = post_model(client, members.acme_user, "acme", "t", addon("embed"))
    assert error_of(embed, 400)["code"] == "invalid_base_model"
    # The operator may build on a base inside the add-on's own account.
    own = create_model(
        client, operator_headers, "globex", "g-addon", addon("accounts/globex/models/globex-base")
    )
    assert own["peftDetails"]["baseModel"] == "accounts/globex/models/globex-base"


def test_members_manage_addons_only_and_never_bindings(
    client: TestClient, operator_headers: dict[str, str], members: Members
) -> None:
    _platform_base(client, operator_headers)
    base = post_model(client, members.acme_user, "acme", "mine", text_base(7e9))
    assert error_of(base, 403)["code"] == "plan_required"
    embed = post_model(client, members.acme_user, "acme", "emb", embedding())
    assert error_of(embed, 403)["code"] == "operator_only"
    for field, value in (("engine", UPSTREAM), ("upstreamAdapter", "other-tenant-adapter")):
        bound = post_model(client, members.acme_user, "acme", "t", addon(OP_BASE, **{field: value}))
        error = error_of(bound, 403)
        assert (error["code"], error["param"]) == ("operator_only", field)
    contributor = post_model(client, members.acme_contributor, "acme", "t", addon(OP_BASE))
    assert error_of(contributor, 403)["code"] == "role_forbids"
    elsewhere = post_model(client, members.acme_user, "globex", "t", addon(OP_BASE))
    assert error_of(elsewhere, 404)["code"] == "account_not_found"

    create_model(client, members.acme_user, "acme", "t", addon(OP_BASE))
    patched = client.patch(
        "/v1/accounts/acme/models/t",
        json={"displayName": "Tuned", "description": "SQL"},
        headers=members.acme_user,
    )
    assert (ok(patched)["displayName"], ok(patched)["description"]) == ("Tuned", "SQL")
    rebind = client.patch(
        "/v1/accounts/acme/models/t", json={"engine": None}, headers=members.acme_user
    )
    assert error_of(rebind, 403)["param"] == "engine"
    # A base model the operator put into acme is the operator's to change.
    create_model(client, operator_headers, "acme", "acme-base", text_base(7e9))
    touch = client.patch(
        "/v1/accounts/acme/models/acme-base", json={"displayName": "x"}, headers=members.acme_user
    )
    assert error_of(touch, 403)["code"] == "plan_required"
    drop = client.delete("/v1/accounts/acme/models/acme-base", headers=members.acme_user)
    assert error_of(drop, 403)["code"] == "plan_required"
    platform = client.patch(
        f"/v1/{OP_BASE}", json={"displayName": "mine now"}, headers=members.acme_user
    )
    assert error_of(platform, 403)["code"] == "operator_only"
    assert ok(client.delete("/v1/accounts/acme/models/t", headers=members.acme_user)) == {}
    gone = client.get("/v1/accounts/acme/models/t", headers=members.acme_user)
    assert error_of(gone, 404)["code"] == "model_not_found"


def test_visibility_of_private_and_public_models(
    client: TestClient, operator_headers: dict[str, str], members: Members
) -> None:
    _platform_base(client, operator_headers)
    create_model(client, operator_headers, "firebox", "staging", text_base(7e9))
    create_model(client, members.acme_user, "acme", "secret", addon(OP_BASE))

    # Public platform models: readable by every caller, even an inference-only key.
    for headers in (members.acme_user, members.acme_inference, members.globex_user):
        assert ok(client.get(f"/v1/{OP_BASE}", headers=headers))["name"] == OP_BASE
        listed = ok(client.get("/v1/accounts/firebox/models", headers=headers))
        assert [m["name"] for m in listed["models"]] == [OP_BASE]
        assert listed["totalSize"] == 1
        assert listed["models"][0]["engine"] is None
        hidden = error_of(client.get("/v1/accounts/firebox/models/staging", headers=headers), 404)
        absent = error_of(client.get("/v1/accounts/firebox/models/nothing", headers=headers), 404)
        assert hidden["code"] == absent["code"] == "model_not_found"
        assert hidden["message"] == absent["message"].replace("nothing", "staging")
    everything = ok(client.get("/v1/accounts/firebox/models", headers=operator_headers))
    assert {m["name"] for m in everything["models"]} == {
        OP_BASE,
        "accounts/firebox/models/staging",
    }

    # Another account's private model: the same 404 as for nothing at all.
    other = client.get("/v1/accounts/acme/models/secret", headers=members.globex_user)
    missing = client.get("/v1/accounts/acme/models/nothing", headers=members.globex_user)
    assert error_of(other, 404) == error_of(missing, 404)
    assert error_of(client.get("/v1/accounts/acme/models", headers=members.globex_user), 404)[
        "code"
    ] == ("account_not_found")
    # An account's own list holds only its own models (no public ones mixed in).
    own = ok(client.get("/v1/accounts/acme/models", headers=members.acme_contributor))
    assert [m["name"] for m in own["models"]] == ["accounts/acme/models/secret"]
    # inference-user has no resources.read in its own account.
    denied = client.get("/v1/accounts/acme/models", headers=members.acme_inference)
    assert error_of(denied, 403)["code"] == "role_forbids"
    # Only platform models can be public.
    shared = post_model(client, operator_headers, "acme", "p", text_base(7e9, public=True))
    assert error_of(shared, 400)["code"] == "public_outside_platform"


def test_patch_updates_and_keeps_the_rules(
    client: TestClient, operator_headers: dict[str, str], members: Members
) -> None:
    _platform_base(client, operator_headers)
    create_model(client, members.acme_user, "acme", "t", addon(OP_BASE))
    patched = ok(
        client.patch(
            f"/v1/{OP_BASE}",
            json={
                "contextLength": 131072,
                "baseModelDetails": {"parameterCount": "70000000000", "moe": False},
                "engine": {"type": "local", "path": "/models/llama"},
            },
            headers=operator_headers,
        )
    )
    assert patched["priceClass"] == "TEXT_DENSE_16B_TO_80B"
    assert patched["engine"] == {"type": "local", "path": "/models/llama"}
    assert patched["updateTime"] >= patched["createTime"]
    # The add-on follows its base.
    tuned = ok(client.get("/v1/accounts/acme/models/t", headers=members.acme_user))
    assert (tuned["contextLength"], tuned["priceClass"]) == (131072, "TEXT_DENSE_16B_TO_80B")

    kind = client.patch(
        f"/v1/{OP_BASE}", json={"kind": "EMBEDDING_MODEL"}, headers=operator_headers
    )
    assert error_of(kind, 400)["code"] == "kind_immutable"
    same_kind = client.patch(
        f"/v1/{OP_BASE}", json={"kind": "HF_BASE_MODEL"}, headers=operator_headers
    )
    assert same_kind.status_code == 200
    too_big = client.patch(
        f"/v1/{OP_BASE}",
        json={"baseModelDetails": {"parameterCount": "405000000000"}},
        headers=operator_headers,
    )
    assert error_of(too_big, 400)["code"] == "price_required"
    priced = ok(
        client.patch(
            f"/v1/{OP_BASE}",
            json={"baseModelDetails": {"parameterCount": "405000000000"}, "price": "3.00"},
            headers=operator_headers,
        )
    )
    assert (priced["priceClass"], priced["price"]) == (None, "3.00")
    unprice = client.patch(f"/v1/{OP_BASE}", json={"price": None}, headers=operator_headers)
    assert error_of(unprice, 400)["code"] == "price_required"
    unbound = ok(client.patch(f"/v1/{OP_BASE}", json={"engine": None}, headers=operator_headers))
    assert (unbound["engine"], unbound["supportsServerless"]) == (None, False)
    missing = client.patch("/v1/accounts/firebox/models/nothing", json={}, headers=operator_headers)
    assert error_of(missing, 404)["code"] == "model_not_found"


def test_deleting_a_base_with_addons_is_refused_naming_them(
    client: TestClient, operator_headers: dict[str, str], members: Members
) -> None:
    _platform_base(client, operator_headers)
    create_model(client, members.acme_user, "acme", "one", addon(OP_BASE))
    create_model(client, members.globex_user, "globex", "two", addon(OP_BASE))
    refused = client.delete(f"/v1/{OP_BASE}", headers=operator_headers)
    error = error_of(refused, 400)
    assert error["code"] == "model_has_addons"
    assert "accounts/acme/models/one" in error["message"]
    assert "accounts/globex/models/two" in error["message"]
    ok(client.delete("/v1/accounts/acme/models/one", headers=members.acme_user))
    ok(client.delete("/v1/accounts/globex/models/two", headers=operator_headers))
    assert ok(client.delete(f"/v1/{OP_BASE}", headers=operator_headers)) == {}
    assert client.get(f"/v1/{OP_BASE}", headers=operator_headers).status_code == 404


def test_image_models_say_which_pipeline(
    client: TestClient, operator_headers: dict[str, str]
) -> None:
    for variant, price_class in (
        ("SDXL", "IMAGE_SDXL"),
        ("SDXL_CONTROLNET", "IMAGE_SDXL_CONTROLNET"),
    ):
        made = create_model(
            client,
            operator_headers,
            "firebox",
            f"sdxl-{variant.lower().replace('_', '-')}",
            {"kind": "FLUMINA_BASE_MODEL", "imageVariant": variant, "public": True},
        )
        assert (made["imageVariant"], made["priceClass"]) == (variant, price_class)
    bare = post_model(client, operator_headers, "firebox", "img", {"kind": "FLUMINA_BASE_MODEL"})
    assert error_of(bare, 400)["param"] == "imageVariant"
    wrong = post_model(client, operator_headers, "firebox", "t", text_base(imageVariant="SDXL"))
    assert error_of(wrong, 400)["code"] == "field_not_allowed"


def test_engine_bindings_are_validated(
    client: TestClient, operator_headers: dict[str, str]
) -> None:
    for engine in (
        {"type": "upstream", "urls": ["ftp://gpu:21/v1"], "upstreamModel": "m"},
        {"type": "upstream", "urls": ["gpu-1:8000/v1"], "upstreamModel": "m"},
        {"type": "upstream", "urls": [], "upstreamModel": "m"},
        {"type": "upstream", "urls": ["http://gpu:8000/v1"]},
        {"type": "upstream", "urls": ["http://gpu:8000/v1"], "upstreamModel": "m", "timeoutS": 0},
        {"type": "remote", "urls": ["http://gpu:8000/v1"]},
        {"type": "local", "path": "/w", "extra": 1},
    ):
        refused = post_model(client, operator_headers, "firebox", "e", embedding(engine=engine))
        assert error_of(refused, 400)["param"].startswith("model.engine"), engine
    local = create_model(
        client, operator_headers, "firebox", "e", embedding(engine={"type": "local"})
    )
    assert local["engine"] == {"type": "local", "path": None}


def test_pagination(client: TestClient, operator_headers: dict[str, str], members: Members) -> None:
    _platform_base(client, operator_headers)
    ids = [f"m{n:02d}" for n in range(7)]
    for model_id in reversed(ids):
        create_model(client, members.acme_user, "acme", model_id, addon(OP_BASE))
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = ok(
            client.get(
                "/v1/accounts/acme/models",
                params={"pageSize": 3, "pageToken": token},
                headers=members.acme_user,
            )
        )
        pages += 1
        assert page["totalSize"] == 7
        seen += [m["name"].rsplit("/", 1)[1] for m in page["models"]]
        token = page["nextPageToken"]
        if not token:
            break
    assert seen == ids
    assert pages == 3
    bad = client.get(
        "/v1/accounts/acme/models", params={"pageToken": "!!"}, headers=members.acme_user
    )
    assert error_of(bad, 400)["code"] == "invalid_page_token"
    masked = client.get(f"/v1/{OP_BASE}", params={"readMask": "name"}, headers=members.acme_user)
    assert error_of(masked, 400)["param"] == "readMask"
    assert client.get(
        f"/v1/{OP_BASE}", params={"readMask": "*"}, headers=members.acme_user
    ).is_success
