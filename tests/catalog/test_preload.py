"""Catalog files: the bundled default, the operator's FIREBOX_CATALOG_FILE, and bad entries."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from firebox.catalog.binding import LocalEngine, UpstreamEngine
from firebox.catalog.preload import CatalogFileError, load_catalogs, preload
from firebox.catalog.price_class import PriceClass
from firebox.server import prepare
from firebox.services import Services
from firebox.settings import Settings
from tests.catalog.conftest import create_model, text_base
from tests.conftest import OPERATOR_KEY
from tests.support.api import ok

OPERATOR_FILE = """
[[models]]
id = "all-minilm-l6-v2"
kind = "EMBEDDING_MODEL"
displayName = "MiniLM (operator)"
parameterCount = 22_700_000
contextLength = 512
public = true
engine = { type = "local", path = "/srv/minilm" }

[[models]]
id = "llama-405b"
kind = "HF_BASE_MODEL"
displayName = "Llama 3.1 405B"
parameterCount = 405_000_000_000
contextLength = 131072
public = true
price = "3.00"
engine = { type = "upstream", urls = ["http://vllm:8000/v1"], upstreamModel = "llama-405b" }

[[models]]
id = "llama-405b-sql"
kind = "HF_PEFT_ADDON"
baseModel = "llama-405b"
loraRank = 16
targetModules = ["q_proj", "k_proj"]
upstreamAdapter = "sql"
public = true
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(text)
    return path


def test_default_catalog_registers_the_bundled_models(
    services: Services, client: TestClient, operator_headers: dict[str, str]
) -> None:
    assert sorted(preload(services.catalog, None)) == [
        "all-minilm-l6-v2",
        "firebox-tiny",
        "firebox-tiny-lora",
    ]
    listed = ok(client.get("/v1/accounts/firebox/models", headers=operator_headers))
    by_name = {m["name"]: m for m in listed["models"]}
    tiny = by_name["accounts/firebox/models/firebox-tiny"]
    assert (tiny["kind"], tiny["priceClass"], tiny["engine"]) == (
        "HF_BASE_MODEL",
        "TEXT_DENSE_UP_TO_16B",
        {"type": "local", "path": "firebox-tiny"},
    )
    lora = by_name["accounts/firebox/models/firebox-tiny-lora"]
    assert lora["peftDetails"]["baseModel"] == "accounts/firebox/models/firebox-tiny"
    resolved_lora = services.catalog.resolve("demo", "firebox-tiny-lora")
    assert resolved_lora.price_class == services.catalog.resolve("demo", "firebox-tiny").price_class
    model = by_name["accounts/firebox/models/all-minilm-l6-v2"]
    assert (model["kind"], model["public"], model["contextLength"]) == (
        "EMBEDDING_MODEL",
        True,
        256,
    )
    assert model["baseModelDetails"]["parameterCount"] == "22700000"
    assert (model["priceClass"], model["engine"]) == (
        "EMBEDDING_UP_TO_150M",
        {"type": "local", "path": None},
    )
    resolved = services.catalog.resolve("demo", "all-minilm-l6-v2")
    assert resolved.engine == LocalEngine(path=None)


def test_loading_is_idempotent_and_the_operator_file_wins(
    services: Services, client: TestClient, operator_headers: dict[str, str], tmp_path: Path
) -> None:
    path = write(tmp_path, OPERATOR_FILE)
    assert preload(services.catalog, path) == [
        "all-minilm-l6-v2",
        "firebox-tiny",
        "firebox-tiny-lora",
        "llama-405b",
        "llama-405b-sql",
    ]
    create_model(client, operator_headers, "firebox", "by-api", text_base(7e9))
    before = ok(client.get("/v1/accounts/firebox/models", headers=operator_headers))
    minilm = next(m for m in before["models"] if m["name"].endswith("all-minilm-l6-v2"))
    assert (minilm["displayName"], minilm["contextLength"]) == ("MiniLM (operator)", 512)
    assert minilm["engine"] == {"type": "local", "path": "/srv/minilm"}

    # A restart with the same files writes nothing, and the model made by API stays.
    assert preload(services.catalog, path) == []
    assert ok(client.get("/v1/accounts/firebox/models", headers=operator_headers)) == before

    big = services.catalog.resolve("demo", "llama-405b")
    assert (big.price_class, big.price_micro_usd) == (None, 3_000_000)
    sql = services.catalog.resolve("demo", "llama-405b-sql")
    assert sql.engine == UpstreamEngine(urls=("http://vllm:8000/v1",), upstream_model="llama-405b")
    assert sql.adapter is not None and sql.adapter.upstream_adapter == "sql"
    assert sql.price_micro_usd == 3_000_000

    # Dropping the operator file brings the bundled entry back; other models stay.
    assert preload(services.catalog, None) == ["all-minilm-l6-v2"]
    assert services.catalog.resolve("demo", "all-minilm-l6-v2").context_length == 256
    assert services.catalog.resolve("demo", "llama-405b").name.endswith("llama-405b")


def test_an_entry_describes_its_model_completely(
    services: Services, client: TestClient, operator_headers: dict[str, str], tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        '[[models]]\nid = "m"\nkind = "HF_BASE_MODEL"\nparameterCount = 7_000_000_000\n'
        'description = "first"\nprice = "0.10"\n',
    )
    assert load_catalogs(services.catalog, [path]) == ["m"]
    path.write_text(
        '[[models]]\nid = "m"\nkind = "HF_BASE_MODEL"\nparameterCount = 7_000_000_000\n'
    )
    assert load_catalogs(services.catalog, [path]) == ["m"]
    model = ok(client.get("/v1/accounts/firebox/models/m", headers=operator_headers))
    assert (model["description"], model["price"]) == ("", None)
    assert model["priceClass"] == PriceClass.TEXT_DENSE_UP_TO_16B.value


BAD_ENTRIES = [
    (
        "no-price",
        '[[models]]\nid = "huge"\nkind = "HF_BASE_MODEL"\nparameterCount = 405_000_000_000\n',
        "models[0] (id 'huge') (price): accounts/firebox/models/huge is a dense text model of "
        "405,000,000,000 parameters, which fits no price class",
    ),
    (
        "float-price",
        '[[models]]\nid = "m"\nkind = "HF_BASE_MODEL"\nprice = 0.9\n',
        'price: write prices as strings, e.g. price = "0.90"',
    ),
    (
        "unknown-key",
        '[[models]]\nid = "m"\nkind = "EMBEDDING_MODEL"\nweights = "x"\n',
        "models[0] (id 'm'): weights: unknown key",
    ),
    ("not-toml", "[[models]\nid = 1", "cannot read it as TOML"),
    ("top-level", 'name = "x"\n', "unknown top-level keys ['name']"),
    (
        "duplicate",
        '[[models]]\nid = "m"\nkind = "FLUMINA_BASE_MODEL"\nimageVariant = "SDXL"\n' * 2,
        "models[1] (id 'm'): id 'm' appears twice",
    ),
    (
        "missing-base",
        '[[models]]\nid = "a"\nkind = "HF_PEFT_ADDON"\nbaseModel = "nope"\nloraRank = 8\n'
        'targetModules = ["q_proj"]\n',
        "(peftDetails.baseModel): Base model 'nope' was not found",
    ),
    (
        "half-peft",
        '[[models]]\nid = "a"\nkind = "HF_PEFT_ADDON"\nbaseModel = "nope"\n',
        "needs baseModel, loraRank and targetModules",
    ),
    (
        "bad-url",
        '[[models]]\nid = "m"\nkind = "EMBEDDING_MODEL"\nparameterCount = 1000\n'
        'engine = { type = "upstream", urls = ["file:///etc"], upstreamModel = "m" }\n',
        "engine.upstream.urls: Value error, 'file:///etc' is not an http:// or https:// URL",
    ),
    ("bad-kind", '[[models]]\nid = "m"\nkind = "HF_TEFT_ADDON"\n', "kind: Input should be"),
    ("bad-id", '[[models]]\nid = "Big_Model"\nkind = "FLUMINA_BASE_MODEL"\n', "Invalid model id"),
]


@pytest.mark.parametrize(
    ("text", "expected"), [c[1:] for c in BAD_ENTRIES], ids=[c[0] for c in BAD_ENTRIES]
)
def test_a_bad_entry_fails_with_a_message_naming_file_entry_and_field(
    services: Services, tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(CatalogFileError) as caught:
        preload(services.catalog, path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    assert expected in message, message


def test_a_missing_file_is_named(services: Services, tmp_path: Path) -> None:
    with pytest.raises(CatalogFileError, match="catalog file not found"):
        preload(services.catalog, tmp_path / "nope.toml")


def test_server_start_loads_the_catalogs_or_refuses_to_start(tmp_path: Path) -> None:
    good = write(tmp_path, OPERATOR_FILE)
    settings = Settings(data_dir=tmp_path / "data", admin_key=OPERATOR_KEY, catalog_file=good)
    services, _ = prepare(settings)
    try:
        assert services.catalog.resolve("demo", "llama-405b-sql").base_model == (
            "accounts/firebox/models/llama-405b"
        )
        assert services.catalog.resolve("demo", "all-minilm-l6-v2").context_length == 512
    finally:
        services.close()
    bad = tmp_path / "bad.toml"
    bad.write_text('[[models]]\nid = "huge"\nkind = "HF_BASE_MODEL"\nparameterCount = 1e12\n')
    settings = Settings(data_dir=tmp_path / "data", admin_key=OPERATOR_KEY, catalog_file=bad)
    with pytest.raises(CatalogFileError, match="fits no price class"):
        prepare(settings)


def test_the_documented_example_loads(services: Services, tmp_path: Path) -> None:
    docs = (Path(__file__).parents[2] / "docs" / "api.md").read_text()
    example = docs.split("```toml\n", 1)[1].split("```", 1)[0]
    path = write(tmp_path, example)
    assert preload(services.catalog, path) == [
        "all-minilm-l6-v2",
        "firebox-tiny",
        "firebox-tiny-lora",
        "llama-v3p1-8b-instruct",
        "llama-8b-sql",
        "sdxl",
    ]
    assert services.catalog.resolve("firebox", "sdxl").price_class is PriceClass.IMAGE_SDXL
