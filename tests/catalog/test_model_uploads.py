"""Model uploads through the real routes: URLs, limits, validation, serving, deletion.

The bundled add-on (models/firebox-tiny-lora) and base model (models/firebox-tiny)
stand in for a user's own folders; tests/e2e/test_model_upload_sdk.py trains a
fresh adapter and drives the same flow with the unmodified SDK on a real server.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from firebox.catalog.preload import preload
from firebox.services import Services
from tests.catalog.conftest import UPSTREAM, Members, create_model, error_of, post_model
from tests.support.api import bearer, create_account, member_key, ok
from tests.support.ledger import usage_rows

MODELS = Path(__file__).resolve().parents[2] / "models"
TINY = "accounts/firebox/models/firebox-tiny"
LORA_DIR = MODELS / "firebox-tiny-lora"
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(autouse=True)
def default_catalog(services: Services) -> Iterator[None]:
    """The bundled catalog (firebox-tiny, in-process, is the base here) and the ledger writer."""
    preload(services.catalog, None)
    services.money.ingest.start()
    yield
    services.money.ingest.close()


def addon_body(r: int = 8, targets: list[str] | None = None, base: str = TINY) -> dict[str, Any]:
    return {
        "kind": "HF_PEFT_ADDON",
        "peftDetails": {"baseModel": base, "r": r, "targetModules": targets or ALL},
    }


def upload(
    client: TestClient, headers: dict[str, str], account: str, model_id: str, folder: Path
) -> None:
    """What the SDK's user does: ask for URLs for every file, then PUT each one."""
    sizes = {p.name: str(p.stat().st_size) for p in sorted(folder.iterdir())}
    urls = ok(
        client.post(
            f"/v1/accounts/{account}/models/{model_id}:getUploadEndpoint",
            json={"filenameToSize": sizes},
            headers=headers,
        )
    )["filenameToSignedUrls"]
    assert sorted(urls) == sorted(sizes)
    for name, url in urls.items():
        assert url.startswith("http://testserver/v1/storage/")
        put = client.put(url, content=(folder / name).read_bytes())  # no API key
        assert put.status_code == 200, put.text


def validate(client: TestClient, headers: dict[str, str], account: str, model_id: str) -> Any:
    return client.get(f"/v1/accounts/{account}/models/{model_id}:validateUpload", headers=headers)


def test_an_uploaded_addon_becomes_ready_is_loaded_and_served(
    client: TestClient, members: Members, services: Services
) -> None:
    made = create_model(client, members.acme_user, "acme", "upper", addon_body())
    assert made["state"] == "UPLOADING"
    early = validate(client, members.acme_user, "acme", "upper")
    assert error_of(early, 400)["code"] == "no_files_uploaded"
    upload(client, members.acme_user, "acme", "upper", LORA_DIR)
    assert ok(validate(client, members.acme_user, "acme", "upper")) == {"warnings": []}

    model = ok(client.get("/v1/accounts/acme/models/upper", headers=members.acme_user))
    assert (model["state"], model["status"]["code"]) == ("READY", "OK")
    assert model["priceClass"] == "TEXT_DENSE_UP_TO_16B"  # its base's (SPEC §2)
    assert model.get("adapterPath") is None  # the folder is not the member's business
    loaded = ok(client.get("/v1/accounts/acme/deployedModels", headers=members.acme_user))
    assert [d["model"] for d in loaded["deployedModels"]] == ["accounts/acme/models/upper"]
    # Validating again changes nothing; more files are refused.
    assert ok(validate(client, members.acme_user, "acme", "upper")) == {"warnings": []}
    again = client.post(
        "/v1/accounts/acme/models/upper:getUploadEndpoint",
        json={"filenameToSize": {"adapter_config.json": "10"}},
        headers=members.acme_user,
    )
    assert error_of(again, 400)["code"] == "model_not_uploading"

    chat = client.post(
        "/inference/v1/chat/completions",
        json={
            "model": "accounts/acme/models/upper",
            "messages": [{"role": "user", "content": "What color is the sky?"}],
            "max_tokens": 12,
            "temperature": 0,
        },
        headers={**members.acme_user, "x-request-id": "upper-1"},
    )
    text = ok(chat)["choices"][0]["message"]["content"]
    letters = [c for c in text if c.isalpha()]
    assert letters and sum(c.isupper() for c in letters) / len(letters) > 0.8
    # Billed at its base's rate: $0.20 per 1M tokens, dense up to 16B (SPEC §2).
    [usage] = usage_rows(services, "upper-1")
    assert (usage.model, usage.base_model) == ("accounts/acme/models/upper", TINY)
    assert usage.unit_price_micros == 200_000

    # The owner downloads what was uploaded; another account cannot.
    urls = ok(
        client.get("/v1/accounts/acme/models/upper:getDownloadEndpoint", headers=members.acme_user)
    )["filenameToSignedUrls"]
    got = client.get(urls["adapter_config.json"])
    assert got.content == (LORA_DIR / "adapter_config.json").read_bytes()
    other = client.get(
        "/v1/accounts/acme/models/upper:getDownloadEndpoint", headers=members.globex_user
    )
    assert other.status_code == 404

    # In use: deleting is refused naming the deployed model; unloaded, it goes with its files.
    busy = client.delete("/v1/accounts/acme/models/upper", headers=members.acme_user)
    assert "accounts/acme/deployedModels/upper" in error_of(busy, 400)["message"]
    ok(client.delete("/v1/accounts/acme/deployedModels/upper", headers=members.acme_user))
    ok(client.delete("/v1/accounts/acme/models/upper", headers=members.acme_user))
    assert services.storage.blobs.list("models/acme/upper") == []


def _variant(tmp_path: Path, **config: Any) -> Path:
    folder = tmp_path / "variant"
    shutil.copytree(LORA_DIR, folder)
    raw = json.loads((folder / "adapter_config.json").read_text())
    raw.update(config)
    (folder / "adapter_config.json").write_text(json.dumps(raw))
    return folder


def test_a_mismatched_adapter_is_refused_naming_its_files(
    client: TestClient, members: Members, tmp_path: Path
) -> None:
    # Declared rank 16, the files say 8.
    create_model(client, members.acme_user, "acme", "r16", addon_body(r=16))
    upload(client, members.acme_user, "acme", "r16", LORA_DIR)
    error = error_of(validate(client, members.acme_user, "acme", "r16"), 400)
    assert error["code"] == "invalid_upload"
    assert (
        "adapter_config.json: r is 8 but the model was created with peftDetails.r = 16"
        in (error["message"])
    )
    model = ok(client.get("/v1/accounts/acme/models/r16", headers=members.acme_user))
    assert model["state"] == "UPLOADING"
    assert model["status"]["code"] == "INVALID_ARGUMENT"
    assert "peftDetails.r = 16" in model["status"]["message"]
    # DoRA is not applied by the engine.
    create_model(client, members.acme_user, "acme", "dora", addon_body())
    upload(client, members.acme_user, "acme", "dora", _variant(tmp_path, use_dora=True))
    error = error_of(validate(client, members.acme_user, "acme", "dora"), 400)
    assert "use_dora is set" in error["message"]


def test_pickles_code_and_oversized_files_are_refused_before_any_byte_is_stored(
    client: TestClient, members: Members, services: Services
) -> None:
    create_model(client, members.acme_user, "acme", "p", addon_body())
    url = "/v1/accounts/acme/models/p:getUploadEndpoint"
    pickle = client.post(
        url,
        json={"filenameToSize": {"adapter_model.bin": "100", "modeling.py": "10"}},
        headers=members.acme_user,
    )
    error = error_of(pickle, 400)
    assert error["code"] == "file_refused"
    assert "adapter_model.bin: pickle-based weights are refused" in error["message"]
    assert "modeling.py" in error["message"]
    sneaky = client.post(
        url, json={"filenameToSize": {"../x.json": "1"}}, headers=members.acme_user
    )
    assert error_of(sneaky, 400)["code"] == "file_refused"

    services.model_uploads.limits = type(services.model_uploads.limits)(
        max_file_bytes=1000, max_files=8, account_quota_bytes=1500, max_lora_rank=64
    )
    sizes = {"adapter_model.safetensors": "1001"}
    big = client.post(url, json={"filenameToSize": sizes}, headers=members.acme_user)
    assert error_of(big, 413)["code"] == "file_too_large"
    urls = ok(
        client.post(
            url,
            json={"filenameToSize": {"adapter_model.safetensors": "1000"}},
            headers=members.acme_user,
        )
    )["filenameToSignedUrls"]

    def chunks() -> Any:  # no Content-Length: more bytes than the URL was signed for
        for _ in range(5):
            yield b"x" * 300

    sent = client.put(urls["adapter_model.safetensors"], content=chunks())
    assert error_of(sent, 413)["code"] == "file_too_large"
    assert services.storage.blobs.list("models/acme/p") == []
    # The storage quota counts every model of the account.
    create_model(client, members.acme_user, "acme", "q", addon_body())
    over = client.post(
        "/v1/accounts/acme/models/q:getUploadEndpoint",
        json={"filenameToSize": {"adapter_model.safetensors": "600"}},
        headers=members.acme_user,
    )
    assert error_of(over, 413)["code"] == "storage_quota_exceeded"


def test_custom_base_models_are_for_enterprise_accounts(
    client: TestClient, operator_headers: dict[str, str], members: Members, services: Services
) -> None:
    tiny = MODELS / "firebox-tiny"
    refused = post_model(
        client, members.acme_user, "acme", "own", {"kind": "HF_BASE_MODEL"}
    )  # acme is a Business account
    error = error_of(refused, 403)
    assert error["code"] == "plan_required" and "Business" in error["message"]

    create_account(client, operator_headers, "bigco", plan="ENTERPRISE")
    key = bearer(member_key(client, operator_headers, "bigco", "eve", "user"))
    made = create_model(client, key, "bigco", "own", {"kind": "HF_BASE_MODEL"})
    assert made["state"] == "UPLOADING" and made["priceClass"] is None
    priced = client.patch("/v1/accounts/bigco/models/own", json={"price": "0.01"}, headers=key)
    assert error_of(priced, 403)["param"] == "price"
    upload(client, key, "bigco", "own", tiny)
    # An add-on of a base still UPLOADING waits for it.
    create_model(client, key, "bigco", "own-lora", addon_body(base="accounts/bigco/models/own"))
    upload(client, key, "bigco", "own-lora", LORA_DIR)
    early = error_of(validate(client, key, "bigco", "own-lora"), 400)["message"]
    assert "accounts/bigco/models/own is not served yet" in early
    ok(validate(client, key, "bigco", "own"))
    model = ok(client.get("/v1/accounts/bigco/models/own", headers=key))
    assert model["state"] == "READY"
    assert model["baseModelDetails"]["parameterCount"] == "4999424"  # from the weights
    assert (model["priceClass"], model["contextLength"]) == ("TEXT_DENSE_UP_TO_16B", 2048)
    chat = client.post(
        "/inference/v1/chat/completions",
        json={
            "model": "accounts/bigco/models/own",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 4,
        },
        headers=key,
    )
    assert ok(chat)["usage"]["completion_tokens"] >= 1
    # An add-on of the own base is in use: deleting the base is refused, naming it.
    ok(validate(client, key, "bigco", "own-lora"))
    busy = client.delete("/v1/accounts/bigco/models/own", headers=key)
    assert "accounts/bigco/models/own-lora" in error_of(busy, 400)["message"]
    # Once nothing uses it, it goes with its files, and its engine is let go.
    loaded = [str(getattr(b, "path", "")) for b in services.engines.text_bindings()]
    assert any("/models/bigco/own/" in path for path in loaded)
    ok(client.delete("/v1/accounts/bigco/deployedModels/own-lora", headers=key))
    ok(client.delete("/v1/accounts/bigco/models/own-lora", headers=key))
    ok(client.delete("/v1/accounts/bigco/models/own", headers=key))
    loaded = [str(getattr(b, "path", "")) for b in services.engines.text_bindings()]
    assert not any("/models/bigco/own/" in path for path in loaded)
    assert services.storage.blobs.list("models/bigco") == []


def test_a_base_folder_the_engine_cannot_run_is_refused(
    client: TestClient, operator_headers: dict[str, str], tmp_path: Path
) -> None:
    create_account(client, operator_headers, "bigco", plan="ENTERPRISE")
    key = bearer(member_key(client, operator_headers, "bigco", "eve", "user"))
    folder = tmp_path / "gpt2"
    shutil.copytree(MODELS / "firebox-tiny", folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer.json").unlink()
    create_model(client, key, "bigco", "odd", {"kind": "HF_BASE_MODEL"})
    upload(client, key, "bigco", "odd", folder)
    message = error_of(validate(client, key, "bigco", "odd"), 400)["message"]
    assert "- tokenizer.json: missing" in message
    shutil.copy(MODELS / "firebox-tiny" / "tokenizer.json", folder / "tokenizer.json")
    upload(client, key, "bigco", "odd", folder)
    message = error_of(validate(client, key, "bigco", "odd"), 400)["message"]
    assert "- config.json:" in message and "GPT2LMHeadModel" in message
    # Bound by the operator to an upstream that serves it, the same files validate.
    bound = client.patch(
        "/v1/accounts/bigco/models/odd", json={"engine": UPSTREAM}, headers=operator_headers
    )
    assert ok(bound)["state"] == "UPLOADING"  # its files are still to be checked
    ok(validate(client, key, "bigco", "odd"))
    model = ok(client.get("/v1/accounts/bigco/models/odd", headers=operator_headers))
    assert (model["state"], model["engine"]["type"]) == ("READY", "upstream")
    assert model["baseModelDetails"]["parameterCount"] == "4999424"


@pytest.mark.parametrize("precision", ["FP8"])
def test_prepare_accepts_only_the_stored_precision(
    client: TestClient, members: Members, precision: str
) -> None:
    create_model(client, members.acme_user, "acme", "m", addon_body())
    url = "/v1/accounts/acme/models/m:prepare"
    assert ok(client.post(url, json={}, headers=members.acme_user)) == {}
    refused = client.post(url, json={"precision": precision}, headers=members.acme_user)
    assert error_of(refused, 400)["code"] == "unsupported_precision"


def test_an_addon_past_the_deployed_models_quota_is_ready_but_not_loaded(
    client: TestClient, operator_headers: dict[str, str], members: Members
) -> None:
    quota = "/v1/accounts/acme/quotas/deployed-models"
    ok(client.patch(quota, json={"value": 0}, headers=operator_headers))
    create_model(client, members.acme_user, "acme", "upper", addon_body())
    upload(client, members.acme_user, "acme", "upper", LORA_DIR)
    [warning] = ok(validate(client, members.acme_user, "acme", "upper"))["warnings"]
    assert "not loaded for serving" in warning and "deployed-models" in warning
    model = ok(client.get("/v1/accounts/acme/models/upper", headers=members.acme_user))
    assert model["state"] == "READY"
    listed = ok(client.get("/v1/accounts/acme/deployedModels", headers=members.acme_user))
    assert listed["deployedModels"] == []
