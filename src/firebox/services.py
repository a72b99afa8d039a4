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
from firebox.deployments.drivers.base import DeploymentDriver
from firebox.deployments.metering import gpu_price_check
from firebox.deployments.placement import PlacementRules
from firebox.deployments.runtime import DeploymentRuntime, build_runtime
from firebox.deployments.wiring import DeploymentSlice, build_deployments
from firebox.finetune.batch_wiring import BatchServices, build_batch
from firebox.finetune.dataset_service import DatasetService
from firebox.finetune.dataset_uploads import DatasetUploads
from firebox.finetune.dataset_wiring import build_datasets
from firebox.finetune.sft_service import SftJobService
from firebox.finetune.sft_wiring import SftServices, build_sft
from firebox.inference.embeddings import EmbeddingService
from firebox.inference.metering import NoJournal, UsageJournal, UsageSink
from firebox.inference.models import ModelResolver
from firebox.inference.router import DefaultEngineFactory, EngineFactory, EngineRouter
from firebox.inference.serving import InferenceService
from firebox.inference.tokenizer_pool import TokenizerPool
from firebox.limits.audit import AuditLogService
from firebox.limits.plans import PlanLimits
from firebox.limits.quotas import QuotaService
from firebox.limits.spend_guard import spend_cap
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
    deployments: DeploymentSlice
    batch: BatchServices
    datasets: DatasetService
    dataset_uploads: DatasetUploads
    model_uploads: ModelUploads
    sft: SftServices | None = None
    test_clock: OffsetClock | None = None
    deployment_runtime: DeploymentRuntime | None = None

    @property
    def sft_jobs(self) -> SftJobService:
        assert self.sft is not None
        return self.sft.jobs

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
        if self.deployment_runtime is not None:
            await self.deployment_runtime.stop()  # its last GPU time reaches the ledger queue first
        if self.sft is not None:
            await self.sft.runner.aclose()  # workers checkpoint; their charges reach the ledger
        await self.batch.runner.aclose()  # before the engines: its lines are cancelled first
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
    deployment_driver: DeploymentDriver | None = None,
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
    deployment_slice = build_deployments(settings, db, clock, money.quotas)
    runtime = build_runtime(
        settings,
        db,
        clock,
        deployment_slice.control,
        catalog.resolve,
        recorded,
        money.billing,
        spend_cap,
        money.suspension.raise_reason,
        deployment_driver,
    )
    deployment_slice.on_change(runtime.on_change)  # the controller reconciles at once
    deployment_slice.service.price_check = gpu_price_check(money.billing, clock)
    money.hooks.register(runtime.suspension_hook)
    models.deployments = runtime.routing
    catalog.deployed_models.placements = PlacementRules(runtime.on_change)
    engines.deployments = runtime
    inference = InferenceService(
        models, engines, sink, clock, money.admission, tokenizers, prompt_cap, journal
    )
    storage = build_storage(settings, clock)
    datasets = build_datasets(settings, db, clock, storage.blobs)
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
    services = Services(
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
        inference=inference,
        embeddings=EmbeddingService(
            models, engines, sink, clock, money.admission, tokenizers, prompt_cap
        ),
        money=money,
        tokenizers=tokenizers,
        deployments=deployment_slice,
        storage=storage,
        datasets=datasets,
        dataset_uploads=DatasetUploads(datasets, db, clock, storage),
        batch=build_batch(settings, db, clock, storage.blobs, inference, models, datasets),
        model_uploads=model_uploads,
        test_clock=test_clock,
        deployment_runtime=runtime,
    )
    services.sft = build_sft(services)
    return services
