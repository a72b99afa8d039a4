"""Small helpers that drive the control-plane API the way a user would."""

from __future__ import annotations

from typing import Any

import httpx


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def create_account(
    client: httpx.Client, operator: dict[str, str], account: str, plan: str = "BUSINESS"
) -> dict[str, Any]:
    return ok(
        client.post(
            f"/v1/accounts?accountId={account}",
            json={"displayName": account.title(), "plan": plan},
            headers=operator,
        )
    )


def create_user(
    client: httpx.Client,
    headers: dict[str, str],
    account: str,
    user: str,
    role: str,
    email: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"role": role}
    if email:
        body["email"] = email
    return ok(
        client.post(f"/v1/accounts/{account}/users?userId={user}", json=body, headers=headers)
    )


def create_key(
    client: httpx.Client, headers: dict[str, str], account: str, user: str, **spec: Any
) -> dict[str, Any]:
    return ok(
        client.post(
            f"/v1/accounts/{account}/users/{user}/apiKeys", json={"apiKey": spec}, headers=headers
        )
    )


def member_key(
    client: httpx.Client, operator: dict[str, str], account: str, user: str, role: str
) -> str:
    """Create ``user`` with ``role`` in ``account`` and return a fresh key of theirs."""
    create_user(client, operator, account, user, role, email=f"{user}@{account}.example.com")
    return str(create_key(client, operator, account, user)["key"])
