"""Accounts, users and API keys through the HTTP API, on every configured database."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient

from firebox.clock import FakeClock
from tests.support.api import bearer, create_account, create_key, create_user, member_key, ok


def test_create_account_has_no_user_and_fireworks_shape(
    client: TestClient, operator_headers: dict[str, str]
) -> None:
    account = create_account(client, operator_headers, "acme", plan="ENTERPRISE")
    assert account["name"] == "accounts/acme"
    assert account["plan"] == "ENTERPRISE"
    assert account["accountType"] == "ENTERPRISE"
    assert account["state"] == "READY"
    assert account["suspendState"] == "UNSUSPENDED"
    assert account["createTime"].endswith("Z")
    users = ok(client.get("/v1/accounts/acme/users", headers=operator_headers))
    assert users == {"users": [], "nextPageToken": "", "totalSize": 0}


def test_duplicate_and_invalid_account_ids(
    client: TestClient, operator_headers: dict[str, str]
) -> None:
    create_account(client, operator_headers, "acme")
    again = client.post("/v1/accounts?accountId=acme", json={}, headers=operator_headers)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "already_exists"
    for bad in ("Acme", "-acme", "a_b", "x" * 64, "acme-"):
        response = client.post(f"/v1/accounts?accountId={bad}", json={}, headers=operator_headers)
        assert response.status_code == 400, bad
        assert response.json()["error"]["param"] == "accountId"
    missing = client.post("/v1/accounts", json={}, headers=operator_headers)
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "accountId"


def test_only_the_operator_creates_accounts_or_changes_plans(
    client: TestClient, operator_headers: dict[str, str]
) -> None:
    create_account(client, operator_headers, "acme")
    admin = bearer(member_key(client, operator_headers, "acme", "root", "admin"))
    created = client.post("/v1/accounts?accountId=other", json={}, headers=admin)
    assert created.status_code == 403
    plan = client.patch("/v1/accounts/acme", json={"plan": "ENTERPRISE"}, headers=admin)
    assert plan.status_code == 403
    assert plan.json()["error"]["param"] == "plan"
    renamed = ok(client.patch("/v1/accounts/acme", json={"displayName": "ACME Inc"}, headers=admin))
    assert renamed["displayName"] == "ACME Inc"
    upgraded = ok(
        client.patch("/v1/accounts/acme", json={"plan": "ENTERPRISE"}, headers=operator_headers)
    )
    assert upgraded["plan"] == "ENTERPRISE"


def test_developer_plan_has_a_single_user(
    client: TestClient, operator_headers: dict[str, str]
) -> None:
    create_account(client, operator_headers, "solo", plan="DEVELOPER")
    create_user(client, operator_headers, "solo", "first", "admin")
    second = client.post(
        "/v1/accounts/solo/users?userId=second", json={"role": "user"}, headers=operator_headers
    )
    assert second.status_code == 403
    error = second.json()["error"]
    assert error["code"] == "plan_upgrade_required"
    assert "Business plan" in error["message"]
    ok(client.patch("/v1/accounts/solo", json={"plan": "BUSINESS"}, headers=operator_headers))
    create_user(client, operator_headers, "solo", "second", "user")
    down = client.patch("/v1/accounts/solo", json={"plan": "DEVELOPER"}, headers=operator_headers)
    assert down.status_code == 400
    assert down.json()["error"]["code"] == "plan_user_limit"


def test_one_email_may_belong_to_several_accounts_once_each(
    client: TestClient, operator_headers: dict[str, str]
) -> None:
    create_account(client, operator_headers, "one")
    create_account(client, operator_headers, "two")
    create_user(client, operator_headers, "one", "ann", "admin", email="ann@example.com")
    create_user(client, operator_headers, "two", "ann", "user", email="ann@example.com")
    dup = client.post(
        "/v1/accounts/one/users?userId=ann2",
        json={"role": "user", "email": "ann@example.com"},
        headers=operator_headers,
    )
    assert dup.status_code == 409
    assert dup.json()["error"]["param"] == "email"


def test_user_id_defaults_from_email_and_validation(
    client: TestClient, operator_headers: dict[str, str]
) -> None:
    create_account(client, operator_headers, "acme")
    user = ok(
        client.post(
            "/v1/accounts/acme/users",
            json={"role": "contributor", "email": "Jane.Doe@acme.io"},
            headers=operator_headers,
        )
    )
    assert user["name"] == "accounts/acme/users/jane-doe"
    assert user["role"] == "contributor"
    bad_role = client.post(
        "/v1/accounts/acme/users?userId=x", json={"role": "owner"}, headers=operator_headers
    )
    assert bad_role.status_code == 400
    assert bad_role.json()["error"]["param"] == "role"
    bad_email = client.post(
        "/v1/accounts/acme/users?userId=x",
        json={"role": "user", "email": "not-an-email"},
        headers=operator_headers,
    )
    assert bad_email.status_code == 400
    unknown = client.post(
        "/v1/accounts/acme/users?userId=x",
        json={"role": "user", "nickname": "x"},
        headers=operator_headers,
    )
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "unknown_field"
    no_account = client.post(
        "/v1/accounts/ghost/users?userId=x", json={"role": "user"}, headers=operator_headers
    )
    assert no_account.status_code == 404


def test_last_admin_cannot_be_demoted(client: TestClient, operator_headers: dict[str, str]) -> None:
    create_account(client, operator_headers, "acme")
    create_user(client, operator_headers, "acme", "boss", "admin")
    demote = client.patch(
        "/v1/accounts/acme/users/boss", json={"role": "user"}, headers=operator_headers
    )
    assert demote.status_code == 400
    assert demote.json()["error"]["code"] == "last_admin"
    create_user(client, operator_headers, "acme", "deputy", "admin")
    demoted = ok(
        client.patch(
            "/v1/accounts/acme/users/boss", json={"role": "user"}, headers=operator_headers
        )
    )
    assert demoted["role"] == "user"


def test_role_change_takes_effect_on_the_next_request(
    client: TestClient, operator_headers: dict[str, str]
) -> None:
    create_account(client, operator_headers, "acme")
    create_user(client, operator_headers, "acme", "boss", "admin")
    key = bearer(member_key(client, operator_headers, "acme", "dev", "admin"))
    ok(client.get("/v1/accounts/acme/users/boss/apiKeys", headers=key))  # cached as admin now
    ok(client.patch("/v1/accounts/acme/users/dev", json={"role": "user"}, headers=operator_headers))
    assert client.get("/v1/accounts/acme/users/boss/apiKeys", headers=key).status_code == 403


def test_api_key_lifecycle(client: TestClient, operator_headers: dict[str, str]) -> None:
    create_account(client, operator_headers, "acme")
    create_user(client, operator_headers, "acme", "alice", "user", email="alice@acme.io")
    created = create_key(client, operator_headers, "acme", "alice", displayName="laptop")
    secret = created["key"]
    assert secret.startswith("fb_") and len(secret) > 40
    assert created["displayName"] == "laptop"
    assert created["email"] == "alice@acme.io"
    assert secret.startswith(created["prefix"])
    alice = bearer(secret)
    listed = ok(client.get("/v1/accounts/acme/users/alice/apiKeys", headers=alice))
    assert [k["keyId"] for k in listed["apiKeys"]] == [created["keyId"]]
    assert listed["apiKeys"][0]["key"] is None  # the secret is never shown again
    ok(
        client.post(
            "/v1/accounts/acme/users/alice/apiKeys:delete",
            json={"keyId": created["keyId"]},
            headers=operator_headers,
        )
    )
    after = client.get("/v1/accounts/acme", headers=alice)
    assert after.status_code == 401
    assert after.json()["error"]["code"] == "invalid_api_key"
    again = client.post(
        "/v1/accounts/acme/users/alice/apiKeys:delete",
        json={"keyId": created["keyId"]},
        headers=operator_headers,
    )
    assert again.status_code == 404


def test_api_key_expiry_follows_the_clock(
    client: TestClient, operator_headers: dict[str, str], clock: FakeClock
) -> None:
    create_account(client, operator_headers, "acme")
    create_user(client, operator_headers, "acme", "alice", "admin")
    expires = (clock.now() + timedelta(hours=1)).isoformat()
    secret = create_key(client, operator_headers, "acme", "alice", expireTime=expires)["key"]
    ok(client.get("/v1/accounts/acme", headers=bearer(secret)))
    clock.advance(timedelta(hours=1, seconds=1))
    expired = client.get("/v1/accounts/acme", headers=bearer(secret))
    assert expired.status_code == 401
    assert expired.json()["error"]["code"] == "api_key_expired"
    past = client.post(
        "/v1/accounts/acme/users/alice/apiKeys",
        json={"apiKey": {"expireTime": "2000-01-01T00:00:00Z"}},
        headers=operator_headers,
    )
    assert past.status_code == 400
    assert past.json()["error"]["param"] == "expireTime"


def test_missing_and_malformed_credentials(client: TestClient) -> None:
    none = client.get("/v1/accounts/demo")
    assert none.status_code == 401
    assert none.json()["error"]["code"] == "missing_api_key"
    basic = client.get("/v1/accounts/demo", headers={"Authorization": "Basic abc"})
    assert basic.status_code == 401
    wrong = client.get("/v1/accounts/demo", headers=bearer("fb_not_a_real_key"))
    assert wrong.status_code == 401


def test_pagination_walks_every_account_once(
    client: TestClient, operator_headers: dict[str, str]
) -> None:
    for i in range(7):
        create_account(client, operator_headers, f"acct-{i}")
    seen: list[str] = []
    token = ""
    while True:
        page = ok(
            client.get(f"/v1/accounts?pageSize=3&pageToken={token}", headers=operator_headers)
        )
        seen += [a["name"] for a in page["accounts"]]
        assert page["totalSize"] == 9  # 7 + firebox + demo
        token = page["nextPageToken"]
        if not token:
            break
    assert len(seen) == len(set(seen)) == 9
    assert seen == sorted(seen)
    bad = client.get("/v1/accounts?pageToken=%%%", headers=operator_headers)
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_page_token"
    unsupported = client.get("/v1/accounts?filter=plan%3DBUSINESS", headers=operator_headers)
    assert unsupported.status_code == 400
    assert unsupported.json()["error"]["param"] == "filter"


def test_member_lists_only_its_own_account(
    client: TestClient, operator_headers: dict[str, str]
) -> None:
    create_account(client, operator_headers, "acme")
    key = bearer(member_key(client, operator_headers, "acme", "alice", "inference-user"))
    page = ok(client.get("/v1/accounts", headers=key))
    assert [a["name"] for a in page["accounts"]] == ["accounts/acme"]
