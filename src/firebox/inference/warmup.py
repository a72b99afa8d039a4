"""Loading in-process engines at start, so the first request does not pay for it.

Loading torch and a model takes seconds; without a warm-up the first caller
of a local model would wait for it. Runs in the background after the server
starts answering; a failure is logged and left for the first request to
report.
"""

from __future__ import annotations

import logging

from firebox.catalog.binding import LocalEngine
from firebox.catalog.kinds import ModelKind
from firebox.catalog.service import CatalogService
from firebox.inference.models import ModelResolver
from firebox.inference.router import EngineRouter

log = logging.getLogger("firebox.inference")

PLATFORM_ACCOUNT = "firebox"


async def warm_local_engines(catalog: CatalogService, engines: EngineRouter) -> None:
    """Create the engine of every platform model bound to the in-process engine."""
    for model in catalog.visible_models(PLATFORM_ACCOUNT):
        if not isinstance(model.engine, LocalEngine) or model.kind is ModelKind.LORA_ADDON:
            continue
        ref = ModelResolver.ref(model)
        try:
            if model.kind is ModelKind.EMBEDDING:
                await engines.embedding_engine(ref)
            elif model.kind is ModelKind.TEXT_BASE:
                await engines.text_engine(ref)
            log.info("warmed the in-process engine of %s", model.name)
        except Exception:
            log.exception("could not load the in-process engine of %s", model.name)
