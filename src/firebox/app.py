"""Builds the ASGI app: settings -> store -> services -> routers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from firebox import __version__
from firebox.accounts.endpoints import router as accounts_router
from firebox.billing import admin_endpoints as billing_admin
from firebox.billing import endpoints as billing_endpoints
from firebox.catalog.deployed_endpoints import router as deployed_models_router
from firebox.catalog.endpoints import router as catalog_router
from firebox.catalog.upload_endpoints import router as model_uploads_router
from firebox.deployments import endpoints as deployments_endpoints
from firebox.finetune import batch_endpoints, batch_openai_endpoints, sft_endpoints
from firebox.finetune.dataset_endpoints import router as datasets_router
from firebox.http.errors import install_error_handlers
from firebox.http.health import router as health_router
from firebox.http.middleware import BodyLimitMiddleware, RequestContextMiddleware
from firebox.inference.endpoints import build_router as inference_router
from firebox.inference.warmup import warm_local_engines
from firebox.limits import audit_endpoints, suspension_endpoints
from firebox.limits import endpoints as limits_endpoints
from firebox.services import Services
from firebox.storage import endpoints as storage_endpoints
from firebox.storage.signed import URL_PREFIX


def create_app(services: Services) -> FastAPI:
    """An app serving ``services``. The caller migrates and bootstraps first (see ``server``)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        warm = None
        if services.settings.warm_local_engines:
            warm = asyncio.create_task(warm_local_engines(services.catalog, services.engines))
        services.period_job.start()  # month close, invoice retries, credit expiry
        services.money.holds.start()  # reservations of requests a dead process left in flight
        if services.deployment_runtime is not None and services.settings.deployment_controller:
            await (
                services.deployment_runtime.start()
            )  # reconciles the database's deployments at once
        if services.sft is not None:
            services.sft.runner.start()  # fine-tuning jobs: worker processes, checkpoints
        services.batch.runner.start()  # batch inference jobs (continues those left running)
        yield
        if warm is not None:
            warm.cancel()
        await services.aclose()

    app = FastAPI(
        title="Firebox",
        version=__version__,
        description="Self-hostable LLM inference platform: OpenAI-compatible inference "
        "and a Fireworks-compatible control plane.",
        lifespan=lifespan,
    )
    app.state.services = services
    install_error_handlers(app)
    # Inference first: routes are matched in order, and these are the hot ones.
    app.include_router(inference_router("/inference/v1"))
    app.include_router(inference_router("/v1"))
    app.include_router(health_router)
    app.include_router(accounts_router)
    app.include_router(model_uploads_router)  # before catalog_router's /{model}
    app.include_router(catalog_router)
    app.include_router(deployed_models_router)
    app.include_router(deployments_endpoints.build_router())
    app.include_router(billing_endpoints.build_router())
    app.include_router(billing_admin.build_router())
    app.include_router(limits_endpoints.build_router())
    app.include_router(audit_endpoints.build_router())
    app.include_router(suspension_endpoints.build_router())
    app.include_router(storage_endpoints.build_router())
    app.include_router(sft_endpoints.router)
    app.include_router(batch_endpoints.build_router())
    app.include_router(batch_openai_endpoints.build_router())
    app.include_router(datasets_router)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=services.settings.max_body_bytes,
        exempt_prefixes=(URL_PREFIX, "/v1/files"),  # /v1/files: batch_file_max_bytes
        exempt_suffixes=(":upload",),  # streamed to storage under its own size cap
    )
    app.add_middleware(
        RequestContextMiddleware,
        metrics=services.metrics,
        log_requests=services.settings.access_log,
    )
    return app
