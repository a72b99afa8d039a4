"""The object graph of one gateway process, built once by ``app.py``.

Every service receives its dependencies here, explicitly; nothing reaches for
a global. Tests build the same graph with a fake clock or another database.
"""

from __future__ import annotations

from dataclasses import dataclass

from firebox.accounts.key_cache import KeyCache
from firebox.accounts.key_service import ApiKeyService, Authenticator
from firebox.accounts.revocation import (
    InProcessRevocationBus,
    RedisRevocationBus,
    RevocationBus,
)
from firebox.accounts.service import AccountService, UserService
from firebox.catalog.service import CatalogService
from firebox.clock import Clock, SystemClock
from firebox.inference.embeddings import EmbeddingService
from firebox.inference.metering import CollectingUsageSink, UsageSink
from firebox.inference.models import ModelResolver
from firebox.inference.router import DefaultEngineFactory, EngineFactory, EngineRouter
from firebox.inference.serving import InferenceService
from firebox.settings import Settings
from firebox.store.database import Database
from firebox.telemetry.metrics import Metrics
from firebox.telemetry.usage import CountingUsageSink


@dataclass
class Services:
    """Everything a request handler may call."""

    settings: Settings
    db: Database
    clock: Clock
    metrics: Metrics
    key_cache: KeyCache
    revocations: RevocationBus
    authenticator: Authenticator
    accounts: AccountService
    users: UserService
    api_keys: ApiKeyService
    catalog: CatalogService
    engines: EngineRouter
    usage: UsageSink
    inference: InferenceService
    embeddings: EmbeddingService

    async def aclose(self) -> None:
        """Stop engines, then release connections (called at app shutdown)."""
        await self.engines.close()
        self.close()

    def close(self) -> None:
        self.revocations.close()
        self.db.dispose()


def build_services(
    settings: Settings,
    *,
    db: Database | None = None,
    clock: Clock | None = None,
    engine_factory: EngineFactory | None = None,
    usage: UsageSink | None = None,
) -> Services:
    """Wire the services for ``settings``; tests may inject the db, clock, engines and sink."""
    clock = clock or SystemClock()
    db = db or Database(settings.resolved_database_url())
    metrics = Metrics()
    cache = KeyCache(ttl_s=settings.key_cache_ttl_s)
    revocations: RevocationBus
    if settings.redis_url:

        def channel_lost() -> None:
            # Revocations sent while we were cut off are lost: forget every cached key.
            metrics.revocation_channel_errors.inc()
            cache.clear()

        revocations = RedisRevocationBus(settings.redis_url, on_disconnect=channel_lost)
    else:
        revocations = InProcessRevocationBus()
    revocations.subscribe(cache.invalidate)
    catalog = CatalogService(db, clock, refresh_s=settings.catalog_refresh_s)
    models = ModelResolver(catalog)
    models_dir = settings.models_dir
    engines = EngineRouter(engine_factory or DefaultEngineFactory(models_dir), models_dir)
    recorded = usage or CollectingUsageSink()  # where usage records end up
    sink = CountingUsageSink(recorded, metrics)
    return Services(
        settings=settings,
        db=db,
        clock=clock,
        metrics=metrics,
        key_cache=cache,
        revocations=revocations,
        authenticator=Authenticator(db, clock, cache),
        accounts=AccountService(db, clock),
        users=UserService(db, clock, revocations),
        api_keys=ApiKeyService(db, clock, revocations),
        catalog=catalog,
        engines=engines,
        usage=recorded,
        inference=InferenceService(models, engines, sink, clock),
        embeddings=EmbeddingService(models, engines, sink, clock),
    )
