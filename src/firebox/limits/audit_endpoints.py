"""``GET /v1/accounts/{account}/auditLog``: the account's enforcement changes, newest first.

Thin: parse paging, call the service (which checks ``BILLING_READ``), return
the page. Plain ``def``: FastAPI runs it in its thread pool.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from firebox.http.auth import CurrentPrincipal
from firebox.http.pagination import Listing
from firebox.limits.audit import AuditLogList, AuditLogService

_DUMP: dict[str, Any] = {"response_model_by_alias": True}


def _audit(request: Request) -> AuditLogService:
    service: AuditLogService = request.app.state.services.limits_audit
    return service


def build_router() -> APIRouter:
    """The audit-log route; the service at ``app.state.services.limits_audit``."""
    router = APIRouter(prefix="/v1/accounts/{account}", tags=["limits"])

    @router.get("/auditLog", response_model=AuditLogList, **_DUMP)
    def list_audit_log(
        request: Request, principal: CurrentPrincipal, account: str, listing: Listing
    ) -> AuditLogList:
        """Suspensions, lifted reasons, quota and limit changes; ``pageSize``/``pageToken``."""
        return _audit(request).list(principal, account, listing.page_size, listing.page_token)

    return router
