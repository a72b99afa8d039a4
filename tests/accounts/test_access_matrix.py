"""Every control-plane route x own/other account x role.

The expected outcome is written out here by hand from the role table in
docs/api.md, not derived from the code under test: a member of account A
never learns anything about account B (404, same as a missing account), and
inside A gets 403 for what its role does not grant.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.support.api import bearer, create_account, create_key, member_key

ROLES = ("admin", "user", "contributor", "inference-user")
ALL = set(ROLES)
# Which roles may do what, inside their own account (docs/api.md, "Roles").
ALLOWED: dict[str, set[str]] = {
    "account.read": ALL,
    "account.write": {"admin"},
    "users.read": {"admin", "user", "contributor"},
    "users.write": {"admin"},
    "keys.own": {"admin", "user", "contributor"},
    "keys.any": {"admin"},
    "operator": set(),
}


@dataclass(frozen=True)
class Ctx:
    """Names used to fill a route: the account addressed and users inside it."""

    client: TestClient
    operator: dict[str, str]
    account: str
    me: str  # the caller (exists only when account is the caller's own)
    target: str  # another user of the addressed account
    counter: itertools.count[int]


@dataclass(frozen=True)
class Route:
    name: str
    needs: str
    call: Callable[[Ctx, dict[str, str]], Any]


def _fresh_key(ctx: Ctx) -> str:
    return str(create_key(ctx.client, ctx.operator, ctx.account, ctx.target)["keyId"])


ROUTES = [
    Route(
        "get account",
        "account.read",
        lambda c, h: c.client.get(f"/v1/accounts/{c.account}", headers=h),
    ),
    Route(
        "update account",
        "account.write",
        lambda c, h: c.client.patch(
            f"/v1/accounts/{c.account}", json={"displayName": "Renamed"}, headers=h
        ),
    ),
    Route(
        "list users",
        "users.read",
        lambda c, h: c.client.get(f"/v1/accounts/{c.account}/users", headers=h),
    ),
    Route(
        "get user",
        "users.read",
        lambda c, h: c.client.get(f"/v1/accounts/{c.account}/users/{c.target}", headers=h),
    ),
    Route(
        "create user",
        "users.write",
        lambda c, h: c.client.post(
            f"/v1/accounts/{c.account}/users?userId=new-{next(c.counter)}",
            json={"role": "user"},
            headers=h,
        ),
    ),
    Route(
        "update user",
        "users.write",
        lambda c, h: c.client.patch(
            f"/v1/accounts/{c.account}/users/{c.target}", json={"displayName": "T"}, headers=h
        ),
    ),
    Route(
        "create own api key",
        "keys.own",
        lambda c, h: c.client.post(
            f"/v1/accounts/{c.account}/users/{c.me}/apiKeys", json={"apiKey": {}}, headers=h
        ),
    ),
    Route(
        "list own api keys",
        "keys.own",
        lambda c, h: c.client.get(f"/v1/accounts/{c.account}/users/{c.me}/apiKeys", headers=h),
    ),
    Route(
        "create another user's api key",
        "keys.any",
        lambda c, h: c.client.post(
            f"/v1/accounts/{c.account}/users/{c.target}/apiKeys", json={"apiKey": {}}, headers=h
        ),
    ),
    Route(
        "list another user's api keys",
        "keys.any",
        lambda c, h: c.client.get(f"/v1/accounts/{c.account}/users/{c.target}/apiKeys", headers=h),
    ),
    Route(
        "delete another user's api key",
        "keys.any",
        lambda c, h: c.client.post(
            f"/v1/accounts/{c.account}/users/{c.target}/apiKeys:delete",
            json={"keyId": _fresh_key(c)},
            headers=h,
        ),
    ),
]


@pytest.fixture
def world(client: TestClient, operator_headers: dict[str, str]) -> dict[str, Any]:
    """Accounts A and B (Business plan), a member of every role in A, a target user in each."""
    keys: dict[str, str] = {}
    for account in ("alpha", "beta"):
        create_account(client, operator_headers, account, plan="BUSINESS")
        member_key(client, operator_headers, account, "target", "user")
    for role in ROLES:
        keys[role] = member_key(client, operator_headers, "alpha", f"as-{role}", role)
    return {"keys": keys}


def test_matrix(
    client: TestClient, operator_headers: dict[str, str], world: dict[str, Any]
) -> None:
    counter = itertools.count()
    failures: list[str] = []
    for role, route in itertools.product(ROLES, ROUTES):
        headers = bearer(world["keys"][role])
        me = f"as-{role}"
        own = Ctx(client, operator_headers, "alpha", me, "target", counter)
        other = Ctx(client, operator_headers, "beta", me, "target", counter)
        expected_own = 200 if role in ALLOWED[route.needs] else 403
        got_own = route.call(own, headers)
        if got_own.status_code != expected_own:
            failures.append(f"{role} {route.name} own: {got_own.status_code} != {expected_own}")
        got_other = route.call(other, headers)
        if got_other.status_code != 404:
            failures.append(f"{role} {route.name} other: {got_other.status_code} != 404")
        elif "beta" in got_other.text and "target" in got_other.text:
            failures.append(f"{role} {route.name} other: error leaks the user's existence")
        # The operator may do everything, everywhere.
        got_operator = route.call(other, operator_headers) if route.needs != "keys.own" else None
        if got_operator is not None and got_operator.status_code != 200:
            failures.append(f"operator {route.name}: {got_operator.status_code}")
        # Nobody gets anything without a key.
        anonymous = route.call(own, {})
        if anonymous.status_code != 401:
            failures.append(f"anonymous {route.name}: {anonymous.status_code} != 401")
    assert not failures, "\n".join(failures)


def test_other_account_looks_exactly_like_a_missing_one(
    client: TestClient, operator_headers: dict[str, str], world: dict[str, Any]
) -> None:
    admin = bearer(world["keys"]["admin"])
    existing = client.get("/v1/accounts/beta/users/target", headers=admin)
    missing = client.get("/v1/accounts/no-such-account/users/target", headers=admin)
    assert existing.status_code == missing.status_code == 404
    assert existing.json()["error"]["code"] == missing.json()["error"]["code"]


@pytest.mark.parametrize("role", ROLES)
def test_operator_only_routes(client: TestClient, world: dict[str, Any], role: str) -> None:
    headers = bearer(world["keys"][role])
    created = client.post("/v1/accounts?accountId=sneaky", json={}, headers=headers)
    assert created.status_code == 403
    listed = client.get("/v1/accounts", headers=headers)
    assert [a["name"] for a in listed.json()["accounts"]] == ["accounts/alpha"]
