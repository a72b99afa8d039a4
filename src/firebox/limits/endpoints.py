"""Routes of quotas and per-account limits under ``/v1/accounts/{account}``.

Quota routes are ``async``: a quota's usage may come from the rate limiter
(Redis, async); the service runs its database reads in worker threads.
Limits routes are plain ``def`` (database only), run in FastAPI's pool.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from firebox.http.auth import CurrentPrincipal
from firebox.limits.plans import KEEP, Keep, PlanLimits
from firebox.limits.quotas import QuotaService
from firebox.limits.schemas import Limits, LimitsUpdate, Quota, QuotaList, QuotaUpdate

_DUMP: dict[str, Any] = {"response_model_by_alias": True}


def _quotas(request: Request) -> QuotaService:
    service: QuotaService = request.app.state.services.limits_quotas
    return service


def _plans(request: Request) -> PlanLimits:
    service: PlanLimits = request.app.state.services.limits_plans
    return service


def build_router() -> APIRouter:
    """The quotas and limits routes; services at ``app.state.services.limits_*``."""
    router = APIRouter(prefix="/v1/accounts/{account}", tags=["limits"])

    @router.get("/quotas", response_model=QuotaList, **_DUMP)
    async def list_quotas(request: Request, principal: CurrentPrincipal, account: str) -> QuotaList:
        """Every quota of the account: value, usage and whether the operator can raise it."""
        return await _quotas(request).list(principal, account)

    @router.get("/quotas/{quota_id}", response_model=Quota, **_DUMP)
    async def get_quota(
        request: Request, principal: CurrentPrincipal, account: str, quota_id: str
    ) -> Quota:
        return await _quotas(request).get(principal, account, quota_id)

    @router.patch("/quotas/{quota_id}", response_model=Quota, **_DUMP)
    async def update_quota(
        request: Request,
        principal: CurrentPrincipal,
        account: str,
        quota_id: str,
        body: QuotaUpdate,
    ) -> Quota:
        """Set a quota's value (operator only); ``null`` returns it to the plan's default."""
        return await _quotas(request).update(principal, account, quota_id, body.value)

    @router.get("/limits", response_model=Limits, **_DUMP)
    def get_limits(request: Request, principal: CurrentPrincipal, account: str) -> Limits:
        return Limits.of(_plans(request).get_account_limits(principal, account))

    @router.patch("/limits", response_model=Limits, **_DUMP)
    def update_limits(
        request: Request, principal: CurrentPrincipal, account: str, body: LimitsUpdate
    ) -> Limits:
        """Set per-minute limits (operator only); a field left out is unchanged."""
        given = body.model_fields_set

        def pick(field: str) -> int | Keep | None:
            value: int | None = getattr(body, field)
            return value if field in given else KEEP

        return Limits.of(
            _plans(request).set_account_limits(
                principal,
                account,
                pick("rate_limit_requests_per_minute"),
                prompt_tokens_per_minute=pick("prompt_tokens_per_minute"),
                generated_tokens_per_minute=pick("generated_tokens_per_minute"),
            )
        )

    return router
