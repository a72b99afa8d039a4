"""Catalog files: the models a server registers in the platform account at start.

A TOML file of ``[[models]]`` tables (format in docs/api.md, "Models").
``server.prepare`` loads the bundled ``default_catalog.toml`` and then the
operator's ``FIREBOX_CATALOG_FILE``, so an operator's entry for the same id
wins. Loading is an upsert and idempotent; models not in a file are left
alone. An add-on entry with ``deployed = true`` is also loaded for serving
in the platform account (``deployed = false`` unloads it there). A bad
entry stops the start with a message naming the file, the entry and the
field: serving a misconfigured catalog (a model without a price, SPEC §2)
would be worse than not starting.
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from firebox.catalog.kinds import ImageVariant, ModelKind
from firebox.catalog.schemas import BaseModelDetailsSpec, EngineSpec, ModelSpec, PeftDetailsSpec
from firebox.catalog.service import CatalogService
from firebox.errors import FireboxError
from firebox.wire import RequestModel

DEFAULT_CATALOG = Path(__file__).with_name("default_catalog.toml")

log = logging.getLogger("firebox.catalog")


class CatalogFileError(Exception):
    """A catalog file cannot be loaded; the message says where and why."""


class CatalogEntry(RequestModel):
    """One ``[[models]]`` table: a model of the platform account, with flat keys."""

    id: str = Field(min_length=1, max_length=63)
    kind: ModelKind
    display_name: str | None = Field(default=None, max_length=63)
    description: str | None = Field(default=None, max_length=999)
    public: bool | None = None
    parameter_count: int | None = Field(default=None, ge=1)
    moe: bool | None = None
    model_type: str | None = None
    context_length: int | None = None
    supports_image_input: bool | None = None
    supports_tools: bool | None = None
    supports_lora: bool | None = None
    image_variant: ImageVariant | None = None
    price: str | None = None
    engine: EngineSpec | None = None
    base_model: str | None = None
    lora_rank: int | None = None
    target_modules: list[str] | None = None
    upstream_adapter: str | None = None
    adapter_path: str | None = Field(default=None, max_length=1024)
    deployed: bool | None = Field(
        default=None,
        description="A LoRA add-on only: true loads it for serving in the platform account "
        "(every account may call it if it is public), false unloads it there; absent leaves "
        "it as it is.",
    )

    def to_spec(self) -> ModelSpec:
        """The same ``ModelSpec`` the API takes, so files obey the API's rules."""
        given = self.model_fields_set
        fields: dict[str, Any] = {
            name: getattr(self, name)
            for name in (
                "kind", "display_name", "description", "public", "context_length",
                "supports_image_input", "supports_tools", "supports_lora", "image_variant",
                "price", "engine", "upstream_adapter", "adapter_path",
            )
            if name in given
        }  # fmt: skip
        if given & {"parameter_count", "moe", "model_type"}:
            fields["base_model_details"] = BaseModelDetailsSpec(
                parameter_count=self.parameter_count,
                moe=bool(self.moe),
                model_type=self.model_type,
            )
        if self.deployed is not None and self.kind is not ModelKind.LORA_ADDON:
            raise ValueError("deployed applies to LoRA add-ons (HF_PEFT_ADDON) only")
        if given & {"base_model", "lora_rank", "target_modules"}:
            if not (self.base_model and self.lora_rank and self.target_modules):
                raise ValueError("a LoRA add-on needs baseModel, loraRank and targetModules")
            fields["peft_details"] = PeftDetailsSpec(
                base_model=self.base_model,
                r=self.lora_rank,
                target_modules=self.target_modules,
            )
        return ModelSpec(**fields)


@dataclass(frozen=True)
class LoadedEntry:
    """A validated entry and where it came from, for error messages."""

    model_id: str
    spec: ModelSpec
    where: str  # "path: models[i] (id 'x')"
    deployed: bool | None = None  # load (or unload) it for serving in the platform account


def _explain(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:3]:
        where = ".".join(str(p) for p in error["loc"]) or "entry"
        message = str(error["msg"])
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif where == "price" and error["type"] == "string_type":
            message = 'write prices as strings, e.g. price = "0.90"'
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def read_catalog(path: Path) -> list[LoadedEntry]:
    """Parse and validate every entry of a catalog file (nothing is written)."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogFileError(f"{path}: catalog file not found (FIREBOX_CATALOG_FILE)") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CatalogFileError(f"{path}: cannot read it as TOML: {exc}") from None
    unknown = sorted(set(document) - {"models"})
    if unknown:
        raise CatalogFileError(f"{path}: unknown top-level keys {unknown}; only [[models]]")
    tables = document.get("models", [])
    if not isinstance(tables, list):
        raise CatalogFileError(f"{path}: 'models' must be an array of tables ([[models]])")
    entries: list[LoadedEntry] = []
    seen: set[str] = set()
    for number, table in enumerate(tables):
        label = f"{path}: models[{number}]"
        if isinstance(table, dict) and isinstance(table.get("id"), str):
            label += f" (id {table['id']!r})"
        try:
            entry = CatalogEntry.model_validate(table)
            spec = entry.to_spec()
        except ValidationError as exc:
            raise CatalogFileError(f"{label}: {_explain(exc)}") from None
        except ValueError as exc:
            raise CatalogFileError(f"{label}: {exc}") from None
        if entry.id in seen:
            raise CatalogFileError(f"{label}: id {entry.id!r} appears twice in this file")
        seen.add(entry.id)
        entries.append(LoadedEntry(entry.id, spec, label, entry.deployed))
    return entries


def load_catalogs(service: CatalogService, paths: list[Path]) -> list[str]:
    """Upsert the entries of ``paths``; a later file's entry replaces an earlier one's.

    Entries are merged before anything is written, so a model listed in two
    files is written once, as the last file says, and a restart with the
    same files writes nothing. Returns the ids created or changed.
    """
    merged: dict[str, LoadedEntry] = {}
    for path in paths:
        for entry in read_catalog(path):
            merged[entry.model_id] = entry  # keeps the first position: bases before add-ons
    changed = []
    for entry in merged.values():
        try:
            upserted = service.upsert_platform_model(entry.model_id, entry.spec)
            loaded = entry.deployed is not None and service.deployed_models.set_platform_deployed(
                entry.model_id, entry.deployed
            )
            if upserted or loaded:
                changed.append(entry.model_id)
        except FireboxError as exc:
            field = f" ({exc.param})" if exc.param else ""
            raise CatalogFileError(f"{entry.where}{field}: {exc.message}") from None
    return changed


def preload(service: CatalogService, catalog_file: Path | None) -> list[str]:
    """Load the bundled catalog and the operator's file; returns the ids that changed."""
    paths = [DEFAULT_CATALOG] + ([catalog_file] if catalog_file is not None else [])
    changed = load_catalogs(service, paths)
    if changed:
        log.info("catalog: created or updated %s", ", ".join(changed))
    service.refresh()  # warm the index, so the first inference request finds it built
    return changed
