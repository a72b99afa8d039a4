"""Routes of accounts, users and API keys under ``/v1/accounts``.

Thin by design: parse, call the service with the principal, return a schema.
Handlers are plain ``def``: FastAPI runs them in its thread pool, so a
database call never blocks the event loop that streams inference.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request

from firebox.accounts.key_service import ApiKeyService
from firebox.accounts.schemas import (
    Account,
    AccountCreate,
    AccountList,
    AccountUpdate,
    ApiKey,
    ApiKeyCreate,
    ApiKeyDelete,
    ApiKeyList,
    User,
    UserCreate,
    UserList,
    UserUpdate,
)
from firebox.accounts.service import AccountService, UserService
from firebox.http.auth import CurrentPrincipal
from firebox.http.pagination import Listing

router = APIRouter(prefix="/v1/accounts", tags=["accounts"])


def _accounts(request: Request) -> AccountService:
    service: AccountService = request.app.state.services.accounts
    return service


def _users(request: Request) -> UserService:
    service: UserService = request.app.state.services.users
    return service


def _keys(request: Request) -> ApiKeyService:
    service: ApiKeyService = request.app.state.services.api_keys
    return service


_DUMP: dict[str, Any] = {"response_model_by_alias": True}


@router.post("", response_model=Account, status_code=200, **_DUMP)
def create_account(
    request: Request,
    principal: CurrentPrincipal,
    account_id: Annotated[str, Query(alias="accountId", min_length=1, max_length=63)],
    body: Annotated[AccountCreate, Body()] = AccountCreate(),
) -> Account:
    """Create an account (operator only). No user is created with it."""
    return _accounts(request).create(principal, account_id, body)


@router.get("", response_model=AccountList, **_DUMP)
def list_accounts(request: Request, principal: CurrentPrincipal, listing: Listing) -> AccountList:
    """Every account for the operator; one's own account for anyone else."""
    return _accounts(request).list(principal, listing.page_size, listing.page_token)


@router.get("/{account}", response_model=Account, **_DUMP)
def get_account(request: Request, principal: CurrentPrincipal, account: str) -> Account:
    return _accounts(request).get(principal, account)


@router.patch("/{account}", response_model=Account, **_DUMP)
def update_account(
    request: Request, principal: CurrentPrincipal, account: str, body: AccountUpdate
) -> Account:
    return _accounts(request).update(principal, account, body)


@router.post("/{account}/users", response_model=User, **_DUMP)
def create_user(
    request: Request,
    principal: CurrentPrincipal,
    account: str,
    body: UserCreate,
    user_id: Annotated[str | None, Query(alias="userId", max_length=63)] = None,
) -> User:
    return _users(request).create(principal, account, user_id, body)


@router.get("/{account}/users", response_model=UserList, **_DUMP)
def list_users(
    request: Request, principal: CurrentPrincipal, account: str, listing: Listing
) -> UserList:
    return _users(request).list(principal, account, listing.page_size, listing.page_token)


@router.get("/{account}/users/{user}", response_model=User, **_DUMP)
def get_user(request: Request, principal: CurrentPrincipal, account: str, user: str) -> User:
    return _users(request).get(principal, account, user)


@router.patch("/{account}/users/{user}", response_model=User, **_DUMP)
def update_user(
    request: Request, principal: CurrentPrincipal, account: str, user: str, body: UserUpdate
) -> User:
    return _users(request).update(principal, account, user, body)


@router.post("/{account}/users/{user}/apiKeys", response_model=ApiKey, **_DUMP)
def create_api_key(
    request: Request,
    principal: CurrentPrincipal,
    account: str,
    user: str,
    body: Annotated[ApiKeyCreate, Body()] = ApiKeyCreate(),
) -> ApiKey:
    """Issue a key; its secret (``key``) is in this answer only."""
    return _keys(request).create(principal, account, user, body.api_key)


@router.get("/{account}/users/{user}/apiKeys", response_model=ApiKeyList, **_DUMP)
def list_api_keys(
    request: Request, principal: CurrentPrincipal, account: str, user: str, listing: Listing
) -> ApiKeyList:
    return _keys(request).list(principal, account, user, listing.page_size, listing.page_token)


@router.post("/{account}/users/{user}/apiKeys:delete")
def delete_api_key(
    request: Request, principal: CurrentPrincipal, account: str, user: str, body: ApiKeyDelete
) -> dict[str, Any]:
    """Revoke a key: the next request with it, on any replica, gets a 401."""
    _keys(request).delete(principal, account, user, body.key_id)
    return {}
