"""The auth dependency: ``Authorization: Bearer <key>`` to a ``Principal``.

Use ``CurrentPrincipal`` as a parameter type in an endpoint. A cached key
costs no thread hop; an uncached one is looked up in the thread pool so the
event loop never waits on the database.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from firebox.accounts.key_service import Authenticator
from firebox.accounts.principal import Principal
from firebox.errors import Unauthenticated


def bearer_secret(request: Request) -> str:
    """The secret of the bearer token (also accepted as ``x-api-key``)."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, secret = header.partition(" ")
        if scheme.lower() == "bearer" and secret.strip():
            return secret.strip()
        raise Unauthenticated(
            "Malformed Authorization header; send 'Authorization: Bearer <API key>'."
        )
    api_key = request.headers.get("x-api-key")
    if api_key:
        return api_key.strip()
    raise Unauthenticated(
        "No API key; send 'Authorization: Bearer <API key>'.", code="missing_api_key"
    )


async def authenticate(request: Request) -> Principal:
    """Resolve the caller and keep it on ``request.state.principal`` for logs."""
    authenticator: Authenticator = request.app.state.services.authenticator
    secret = bearer_secret(request)
    principal = authenticator.cached(secret)
    if principal is None:
        principal = await run_in_threadpool(authenticator.resolve, secret)
    request.state.principal = principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(authenticate)]
