"""Operator routes that block and unblock an account for abuse (SPEC §4).

``POST /v1/accounts/{account}:block {"reason": "..."}`` raises
``BLOCKED_BY_ABUSE_RULE``; ``POST /v1/accounts/{account}:unblock`` lifts it.
Both answer the account's suspension. The service checks that the caller is
the operator. Plain ``def``: FastAPI runs them in its thread pool.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import Field

from firebox.http.auth import CurrentPrincipal
from firebox.limits.suspension import AccountSuspension, SuspensionService
from firebox.wire import RequestModel

_DUMP: dict[str, Any] = {"response_model_by_alias": True}


class BlockRequest(RequestModel):
    """Why the operator blocks the account; shown to its users on every refusal."""

    reason: str = Field(min_length=1, max_length=500)


def _suspension(request: Request) -> SuspensionService:
    service: SuspensionService = request.app.state.services.limits_suspension
    return service


def build_router() -> APIRouter:
    """The block/unblock routes; the service at ``app.state.services.limits_suspension``."""
    router = APIRouter(prefix="/v1/accounts", tags=["limits"])

    @router.post("/{account}:block", response_model=AccountSuspension, **_DUMP)
    def block_account(
        request: Request, principal: CurrentPrincipal, account: str, body: BlockRequest
    ) -> AccountSuspension:
        return _suspension(request).block(principal, account, body.reason)

    @router.post("/{account}:unblock", response_model=AccountSuspension, **_DUMP)
    def unblock_account(
        request: Request, principal: CurrentPrincipal, account: str
    ) -> AccountSuspension:
        return _suspension(request).unblock(principal, account)

    return router
