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
from firebox.billing.invoices import InvoiceService
from firebox.billing.period import PeriodCloseJob, PeriodCloser
from firebox.billing.service import BillingService
from firebox.catalog.service import CatalogService
from firebox.catalog.upload_rules import UploadLimits
from firebox.catalog.uploads import ModelUploads
from firebox.clock import Clock, OffsetClock, SystemClock
from firebox.inference.embeddings import EmbeddingService
from firebox.inference.metering import NoJournal, UsageJournal, UsageSink
from firebox.inference.models import ModelResolver
from firebox.inference.router import DefaultEngineFactory, EngineFactory, EngineRouter
from firebox.inference.serving import InferenceService
from firebox.inference.tokenizer_pool import TokenizerPool
from firebox.limits.audit import AuditLogService
from firebox.limits.plans import PlanLimits
from firebox.limits.quotas import QuotaService
from firebox.limits.suspension import SuspensionService
from firebox.money_wiring import MoneyServices, build_money
from firebox.settings import Settings
from firebox.storage.wiring import Storage, build_storage
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
    money: MoneyServices
    tokenizers: TokenizerPool
    storage: Storage
    model_uploads: ModelUploads
    test_clock: OffsetClock | None = None

    @property
    def billing(self) -> BillingService:
        return self.money.billing

    @property
    def invoices(self) -> InvoiceService:
        return self.money.billing.invoices

    @property
    def period_closer(self) -> PeriodCloser:
        return self.money.billing.closer

    @property
    def period_job(self) -> PeriodCloseJob:
        return self.money.period_job

    @property
    def limits_quotas(self) -> QuotaService:
        return self.money.quotas

    @property
    def limits_plans(self) -> PlanLimits:
        return self.money.plans

    @property
    def limits_audit(self) -> AuditLogService:
        return self.money.audit

    @property
    def limits_suspension(self) -> SuspensionService:
        return self.money.suspension

    async def aclose(self) -> None:
        """Stop engines, then release connections (called at app shutdown)."""
        await self.engines.close()
        self.tokenizers.close()
        await self.money.aclose()
        self.close()

    def close(self) -> None:
        """Write every queued usage record, then release connections."""
        self.money.close()
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
    """Wire the services for ``settings``; tests may inject the db, clock, engines and sink.

    ``usage`` replaces the ledger as the usage sink (tests of serving alone).
    """
    test_clock = None
    if clock is None and settings.test_clock:
        clock = test_clock = OffsetClock()
    clock = clock or SystemClock()
    db = db or Database(
        settings.resolved_database_url(),
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_timeout_s=settings.database_pool_timeout_s,
    )
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
    money = build_money(settings, db, clock, metrics)
    catalog = CatalogService(db, clock, refresh_s=settings.catalog_refresh_s)
    catalog.deployed_models.quotas = money.quotas
    models = ModelResolver(catalog, settings.default_max_completion_tokens)
    models_dir = settings.models_dir
    engines = EngineRouter(engine_factory or DefaultEngineFactory(models_dir), models_dir)
    recorded: UsageSink = usage or money.ingest  # where usage records end up
    sink = CountingUsageSink(recorded, metrics)
    # In-flight requests are journaled beside the ledger's spool; an injected sink has none.
    journal: UsageJournal = (
        money.ingest.journal if usage is None and money.ingest.journal else NoJournal()
    )
    tokenizers = TokenizerPool(
        settings.tokenizer_threads,
        settings.tokenizer_account_share,
        settings.tokenizer_account_queue,
    )
    prompt_cap = settings.max_prompt_bytes
    storage = build_storage(settings, clock)
    model_uploads = ModelUploads(
        db,
        clock,
        catalog,
        storage.blobs,
        storage.signer,
        url_ttl_s=storage.url_ttl_s,
        limits=UploadLimits(
            max_file_bytes=settings.model_upload_max_file_bytes,
            max_files=settings.model_upload_max_files,
            account_quota_bytes=settings.account_storage_quota_bytes,
            max_lora_rank=settings.lora_max_rank,
        ),
        models_dir=models_dir,
    )
    model_uploads.files_dropped.append(engines.retire_under)  # a deleted base frees its engine
    return Services(
        settings=settings,
        db=db,
        clock=clock,
        metrics=metrics,
        key_cache=cache,
        revocations=revocations,
        authenticator=Authenticator(db, clock, cache),
        accounts=AccountService(db, clock, money.account_events),
        users=UserService(db, clock, revocations),
        api_keys=ApiKeyService(db, clock, revocations),
        catalog=catalog,
        engines=engines,
        usage=recorded,
        inference=InferenceService(
            models, engines, sink, clock, money.admission, tokenizers, prompt_cap, journal
        ),
        embeddings=EmbeddingService(
            models, engines, sink, clock, money.admission, tokenizers, prompt_cap
        ),
        money=money,
        tokenizers=tokenizers,
        storage=storage,
        model_uploads=model_uploads,
        test_clock=test_clock,
    )
