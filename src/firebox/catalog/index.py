"""The in-memory model index the inference gateway resolves names with.

Every inference request names a model, so resolving one must cost a dict
lookup, not a query. The index is a ``CatalogSnapshot`` (a dict from full
name to a frozen ``ResolvedModel``, and the set of LoRA add-ons loaded for
serving in each account) and is replaced whole, never mutated, so readers
need no lock. It is rebuilt:

- synchronously, in the writer's thread, after every write on this replica
  (a model created here is usable at once);
- in the background when a lookup finds it older than ``refresh_s``, so
  writes made on other replicas arrive within about that long. The lookup
  that notices answers from the current snapshot and starts one refresh
  thread; it never waits for the database, so ``resolve`` is safe to call
  from the event loop.

A lookup of an unknown name never goes to the database: otherwise anyone
could make every replica query it by asking for made-up models.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from firebox.catalog.binding import EngineBinding, binding_from_json
from firebox.catalog.kinds import ImageVariant, ModelKind, model_name
from firebox.catalog.models import ModelRow
from firebox.catalog.price_class import PriceClass, classify

log = logging.getLogger("firebox.catalog")


@dataclass(frozen=True, slots=True)
class LoraAdapter:
    """What an engine needs to apply a LoRA add-on on top of its base model."""

    name: str  # the add-on's full name
    rank: int
    target_modules: tuple[str, ...]
    upstream_adapter: str | None  # the adapter's name on a vLLM upstream, if any
    path: str | None = None  # the adapter's folder, for engines that load it at run time


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """Everything the router needs to serve and price a request for one model.

    For a LoRA add-on, the context length, vision flag, price class, explicit
    price and engine are its base model's (SPEC §2: billed at the base rate).
    ``engine`` None means no engine is bound: the model cannot be served.
    """

    name: str
    account_id: str
    model_id: str
    kind: ModelKind
    public: bool
    base_model: str | None
    adapter: LoraAdapter | None
    context_length: int | None
    supports_image_input: bool
    price_class: PriceClass | None
    price_micro_usd: int | None
    engine: EngineBinding | None
    create_time: datetime | None = None

    def visible_to(self, account_id: str, platform_account: str) -> bool:
        """Whether members of ``account_id`` may use this model."""
        return self.account_id == account_id or (
            self.public and self.account_id == platform_account
        )


def resolve_row(row: ModelRow, base: ModelRow | None) -> ResolvedModel:
    """The resolved form of ``row``; ``base`` is its base model's row for an add-on."""
    kind = ModelKind(row.kind)
    source = base if kind is ModelKind.LORA_ADDON and base is not None else row
    adapter = None
    if kind is ModelKind.LORA_ADDON:
        adapter = LoraAdapter(
            name=model_name(row.account_id, row.model_id),
            rank=row.lora_rank or 0,
            target_modules=tuple(row.target_modules or ()),
            upstream_adapter=row.upstream_adapter,
            path=row.adapter_path,
        )
    variant = ImageVariant(source.image_variant) if source.image_variant else None
    return ResolvedModel(
        name=model_name(row.account_id, row.model_id),
        account_id=row.account_id,
        model_id=row.model_id,
        kind=kind,
        public=row.public,
        base_model=model_name(base.account_id, base.model_id) if base is not None else None,
        adapter=adapter,
        context_length=source.context_length,
        supports_image_input=source.supports_image_input,
        price_class=classify(ModelKind(source.kind), source.parameter_count, source.moe, variant),
        price_micro_usd=source.price_micro_usd,
        engine=binding_from_json(source.engine),
        create_time=row.create_time,
    )


def build_entries(rows: list[ModelRow]) -> dict[str, ResolvedModel]:
    """The index content for every model row of every account."""
    by_pk = {row.pk: row for row in rows}
    entries: dict[str, ResolvedModel] = {}
    for row in rows:
        base = by_pk.get(row.base_model_pk) if row.base_model_pk is not None else None
        resolved = resolve_row(row, base)
        entries[resolved.name] = resolved
    return entries


@dataclass(frozen=True, slots=True)
class CatalogSnapshot:
    """The index's content: every model, and which add-ons are loaded where.

    ``deployed`` holds ``(account, add-on full name)`` for every LoRA add-on
    loaded for serving (state DEPLOYED) in that account.
    """

    models: Mapping[str, ResolvedModel]
    deployed: frozenset[tuple[str, str]] = frozenset()


class ModelIndex:
    """A snapshot of the catalog, replaced whole on every rebuild."""

    def __init__(
        self,
        load: Callable[[], CatalogSnapshot],
        refresh_s: float,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._refresh_s = refresh_s
        self._timer = timer
        self._snapshot: CatalogSnapshot | None = None
        self._loaded_at = 0.0
        self._rebuild_lock = threading.Lock()  # one rebuild at a time, newest wins
        self._refreshing = threading.Lock()  # held while a background refresh runs

    def get(self, name: str) -> ResolvedModel | None:
        """The model called ``name`` (a full name), from memory."""
        return self._current().models.get(name)

    def is_deployed(self, account_id: str, name: str) -> bool:
        """Whether the add-on called ``name`` is loaded for serving in ``account_id``."""
        return (account_id, name) in self._current().deployed

    def all(self) -> list[ResolvedModel]:
        """Every model of the current snapshot, ordered by name."""
        models = self._current().models
        return [models[name] for name in sorted(models)]

    def rebuild(self) -> None:
        """Reload from the database now, in the calling thread."""
        with self._rebuild_lock:
            snapshot = self._load()
            self._snapshot = snapshot
            self._loaded_at = self._timer()

    def _current(self) -> CatalogSnapshot:
        snapshot = self._snapshot
        if snapshot is None:
            self.rebuild()  # the very first lookup of the process
            snapshot = self._snapshot or CatalogSnapshot({})
        elif self._timer() - self._loaded_at >= self._refresh_s:
            self._refresh_in_background()
        return snapshot

    def _refresh_in_background(self) -> None:
        if not self._refreshing.acquire(blocking=False):
            return  # a refresh is already under way

        def run() -> None:
            try:
                self.rebuild()
            except Exception:
                # Keep answering from the old snapshot; try again after refresh_s.
                log.warning("catalog refresh failed; serving the previous snapshot", exc_info=True)
                self._loaded_at = self._timer()
            finally:
                self._refreshing.release()

        threading.Thread(target=run, name="catalog-refresh", daemon=True).start()
