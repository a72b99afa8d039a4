"""The audit log and the operator's block/unblock through the HTTP API."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from firebox.app import create_app
from firebox.limits import audit_endpoints, suspension_endpoints
from firebox.limits.audit import AuditLogService
from firebox.limits.hooks import SuspensionHooks
from firebox.limits.suspension import SuspensionService
from firebox.services import Services
from tests.limits.test_spend_guard import FakeMoney
from tests.support.api import bearer, create_account, member_key, ok


@pytest.fixture
def api(services: Services) -> Iterator[TestClient]:
    """The app with the limits routes, wired here until ``services.py`` wires them."""
    if not hasattr(services, "limits_suspension"):
        hooks = SuspensionHooks()
        services.limits_suspension = SuspensionService(  # type: ignore[attr-defined]
            services.db, services.clock, FakeMoney(), hooks
        )
    if not hasattr(services, "limits_audit"):
        services.limits_audit = AuditLogService(services.db)  # type: ignore[attr-defined]
    app = create_app(services)
    paths = {getattr(route, "path", "") for route in app.routes}
    if "/v1/accounts/{account}/auditLog" not in paths:
        app.include_router(audit_endpoints.build_router())
    if "/v1/accounts/{account}:block" not in paths:
        app.include_router(suspension_endpoints.build_router())
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_operator_blocks_and_unblocks_and_the_log_shows_it(
    api: TestClient, operator_headers: dict[str, str]
) -> None:
    create_account(api, operator_headers, "acme")
    admin = bearer(member_key(api, operator_headers, "acme", "root", "admin"))
    assert ok(api.get("/v1/accounts/acme/auditLog", headers=admin)) == {
        "auditLogEntries": [],
        "nextPageToken": "",
        "totalSize": 0,
    }
    blocked = ok(
        api.post("/v1/accounts/acme:block", json={"reason": "spam"}, headers=operator_headers)
    )
    assert blocked["name"] == "accounts/acme"
    assert blocked["suspendState"] == "BLOCKED_BY_ABUSE_RULE"
    assert [(r["reason"], r["detail"]) for r in blocked["reasons"]] == [
        ("BLOCKED_BY_ABUSE_RULE", "spam")
    ]
    account = ok(api.get("/v1/accounts/acme", headers=admin))
    assert account["suspendState"] == "BLOCKED_BY_ABUSE_RULE"
    unblocked = ok(api.post("/v1/accounts/acme:unblock", headers=operator_headers))
    assert unblocked == {"name": "accounts/acme", "suspendState": "UNSUSPENDED", "reasons": []}
    assert ok(api.get("/v1/accounts/acme", headers=admin))["suspendState"] == "UNSUSPENDED"

    log = ok(api.get("/v1/accounts/acme/auditLog", headers=admin))
    assert log["totalSize"] == 2
    newest, oldest = log["auditLogEntries"]
    assert newest["action"] == "UNSUSPENDED"
    assert oldest["action"] == "SUSPENDED"
    assert oldest["detail"]["reason"] == "BLOCKED_BY_ABUSE_RULE"
    assert oldest["detail"]["detail"] == "spam"
    assert oldest["actor"].startswith("accounts/")
    assert oldest["name"].startswith("accounts/acme/auditLog/")
    assert oldest["time"].endswith("Z") or "+00:00" in oldest["time"]


def test_only_the_operator_blocks(api: TestClient, operator_headers: dict[str, str]) -> None:
    create_account(api, operator_headers, "acme")
    admin = bearer(member_key(api, operator_headers, "acme", "root", "admin"))
    refused = api.post("/v1/accounts/acme:block", json={"reason": "x"}, headers=admin)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "operator_only"
    refused = api.post("/v1/accounts/acme:unblock", headers=admin)
    assert refused.status_code == 403
    missing = api.post("/v1/accounts/ghost:block", json={"reason": "x"}, headers=operator_headers)
    assert missing.status_code == 404
    empty = api.post("/v1/accounts/acme:block", json={"reason": ""}, headers=operator_headers)
    assert empty.status_code == 400
    extra = api.post(
        "/v1/accounts/acme:block", json={"reason": "x", "bogus": 1}, headers=operator_headers
    )
    assert extra.status_code == 400
    assert ok(api.get("/v1/accounts/acme/auditLog", headers=operator_headers))["totalSize"] == 0


def test_audit_log_pages_and_permissions(api: TestClient, operator_headers: dict[str, str]) -> None:
    create_account(api, operator_headers, "acme")
    create_account(api, operator_headers, "other")
    for i in range(3):
        ok(api.post("/v1/accounts/acme:block", json={"reason": f"r{i}"}, headers=operator_headers))
        ok(api.post("/v1/accounts/acme:unblock", headers=operator_headers))
    user = bearer(member_key(api, operator_headers, "acme", "u", "user"))
    first = ok(api.get("/v1/accounts/acme/auditLog?pageSize=4", headers=user))
    assert first["totalSize"] == 6
    assert len(first["auditLogEntries"]) == 4
    assert first["nextPageToken"]
    second = ok(
        api.get(
            f"/v1/accounts/acme/auditLog?pageSize=4&pageToken={first['nextPageToken']}",
            headers=user,
        )
    )
    assert len(second["auditLogEntries"]) == 2
    assert second["nextPageToken"] == ""
    names = [e["name"] for e in first["auditLogEntries"] + second["auditLogEntries"]]
    ids = [int(n.rsplit("/", 1)[1]) for n in names]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 6
    actions = [e["action"] for e in first["auditLogEntries"] + second["auditLogEntries"]]
    assert actions == ["UNSUSPENDED", "SUSPENDED"] * 3
    assert [
        e["detail"]["detail"]
        for e in first["auditLogEntries"] + second["auditLogEntries"]
        if e["action"] == "SUSPENDED"
    ] == ["r2", "r1", "r0"]

    contributor = bearer(member_key(api, operator_headers, "acme", "c", "contributor"))
    denied = api.get("/v1/accounts/acme/auditLog", headers=contributor)
    assert denied.status_code == 403
    foreign = api.get("/v1/accounts/other/auditLog", headers=user)
    assert foreign.status_code == 404
    bad = api.get("/v1/accounts/acme/auditLog?pageToken=!!!", headers=user)
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_page_token"
    ghost = api.get("/v1/accounts/ghost/auditLog", headers=operator_headers)
    assert ghost.status_code == 404
