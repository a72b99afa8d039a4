"""The unmodified ``fireworks-ai`` SDK drives accounts, users and API keys."""

from __future__ import annotations

import fireworks
import httpx
import pytest
from fireworks import Fireworks

from tests.conftest import OPERATOR_KEY
from tests.support.server import RunningServer

pytestmark = pytest.mark.slow


def _create_account(server: RunningServer, account: str, plan: str = "BUSINESS") -> None:
    # The SDK has no account creation (on Fireworks that is a sign-up); the operator uses REST.
    response = httpx.post(
        f"{server.url}/v1/accounts",
        params={"accountId": account},
        json={"displayName": account, "plan": plan},
        headers={"Authorization": f"Bearer {OPERATOR_KEY}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text


def test_sdk_user_and_api_key_lifecycle(server: RunningServer) -> None:
    _create_account(server, "sdk-acme")
    operator = Fireworks(api_key=OPERATOR_KEY, base_url=server.url, account_id="sdk-acme")

    account = operator.accounts.get()
    assert account.name == "accounts/sdk-acme"
    assert account.suspend_state == "UNSUSPENDED"
    assert "accounts/sdk-acme" in [a.name for a in operator.accounts.list()]

    user = operator.users.create(
        role="admin", user_id="alice", email="alice@acme.example.com", display_name="Alice"
    )
    assert user.name == "accounts/sdk-acme/users/alice"
    assert user.role == "admin"
    assert [u.name for u in operator.users.list()] == ["accounts/sdk-acme/users/alice"]
    assert operator.users.get("alice").email == "alice@acme.example.com"

    created = operator.api_keys.create("alice", api_key={"display_name": "sdk key"})
    assert created.key and created.key_id
    assert created.display_name == "sdk key"

    alice = Fireworks(api_key=created.key, base_url=server.url, account_id="sdk-acme")
    second = alice.api_keys.create("alice", api_key={"display_name": "second"})
    listed = list(alice.api_keys.list("alice"))
    assert {k.key_id for k in listed} == {created.key_id, second.key_id}
    assert all(k.key is None for k in listed)

    updated = alice.users.update("alice", role="admin", display_name="Alice A.")
    assert updated.display_name == "Alice A."

    alice.api_keys.delete("alice", key_id=second.key_id)
    assert [k.key_id for k in alice.api_keys.list("alice")] == [created.key_id]

    revoked = Fireworks(
        api_key=second.key, base_url=server.url, account_id="sdk-acme", max_retries=0
    )
    with pytest.raises(fireworks.AuthenticationError):
        revoked.accounts.get()


def test_sdk_errors_map_to_sdk_exceptions(server: RunningServer) -> None:
    _create_account(server, "sdk-errs", plan="DEVELOPER")
    operator = Fireworks(
        api_key=OPERATOR_KEY, base_url=server.url, account_id="sdk-errs", max_retries=0
    )
    with pytest.raises(fireworks.NotFoundError):
        operator.users.get("nobody")
    with pytest.raises(fireworks.BadRequestError) as bad:
        operator.users.create(role="overlord", user_id="x")
    assert "role" in str(bad.value)
    operator.users.create(role="admin", user_id="solo")
    with pytest.raises(fireworks.PermissionDeniedError) as plan:
        operator.users.create(role="user", user_id="second")
    assert "Business plan" in str(plan.value)
    with pytest.raises(fireworks.ConflictError):
        operator.users.create(role="admin", user_id="solo")

    key = operator.api_keys.create("solo", api_key={}).key
    assert key
    member = Fireworks(api_key=key, base_url=server.url, account_id="demo", max_retries=0)
    with pytest.raises(fireworks.NotFoundError):
        member.accounts.get()  # another account: not found, never forbidden


def test_operational_endpoints(server: RunningServer) -> None:
    assert httpx.get(f"{server.url}/readyz", timeout=60).json()["database"] == "ok"
    metrics = httpx.get(f"{server.url}/metrics", timeout=60).text
    assert "firebox_http_requests_total" in metrics
    spec = httpx.get(f"{server.url}/openapi.json", timeout=60).json()
    assert "/v1/accounts/{account}/users/{user}/apiKeys" in spec["paths"]
    response = httpx.get(
        f"{server.url}/v1/accounts/demo", headers={"x-request-id": "trace-1"}, timeout=60
    )
    assert response.status_code == 401
    assert response.headers["x-request-id"] == "trace-1"
    assert '"requestId":"trace-1"' in server.log()  # the structured access log
