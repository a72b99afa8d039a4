"""Quota and limits routes, and ``firebox list quotas`` / ``update quota`` against them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import typer
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from firebox.app import create_app
from firebox.cli.client import ApiClient
from firebox.cli.commands import limits as limits_cli
from firebox.cli.context import Call
from firebox.cli.main import root_options
from firebox.cli.verbs import Verbs
from firebox.limits.endpoints import build_router
from firebox.limits.models import AuditLogRow
from firebox.limits.plans import PlanLimits
from firebox.limits.quotas import QuotaService
from firebox.limits.rate_limiter import InProcessRateLimiter
from firebox.services import Services
from tests.conftest import OPERATOR_KEY
from tests.support.api import bearer, create_account, member_key, ok

QUOTAS = "/v1/accounts/{}/quotas"


@pytest.fixture
def limiter(services: Services) -> InProcessRateLimiter:
    return InProcessRateLimiter(services.clock)


class WithLimits:
    """The app's services, with this module's quota service (over ``limiter``) in front."""

    def __init__(self, services: Services, limiter: InProcessRateLimiter) -> None:
        self._services = services
        self.limits_plans = PlanLimits(services.db, services.clock)
        self.limits_quotas = QuotaService(services.db, services.clock, self.limits_plans, limiter)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._services, name)


@pytest.fixture
def client(services: Services, limiter: InProcessRateLimiter) -> Iterator[TestClient]:
    """The real app, its limits services over a limiter this test can see."""
    app = create_app(services)
    app.state.services = WithLimits(services, limiter)
    paths = {getattr(route, "path", "") for route in app.routes}
    if "/v1/accounts/{account}/quotas" not in paths:  # not wired into the app yet
        app.include_router(build_router())
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def operator() -> dict[str, str]:
    return bearer(OPERATOR_KEY)


def quotas_of(client: TestClient, account: str, headers: dict[str, str]) -> dict[str, Any]:
    body = ok(client.get(QUOTAS.format(account), headers=headers))
    return {q["name"].rsplit("/", 1)[1]: q for q in body["quotas"]}


def test_plans_set_defaults_and_what_can_be_raised(
    client: TestClient, operator: dict[str, str]
) -> None:
    for account, plan in (("dev", "DEVELOPER"), ("biz", "BUSINESS"), ("ent", "ENTERPRISE")):
        create_account(client, operator, account, plan)
    table = {
        account: {
            qid: (q["value"], q["usage"], q["canRaise"])
            for qid, q in quotas_of(client, account, operator).items()
        }
        for account in ("dev", "biz", "ent")
    }
    assert table == {
        "dev": {
            "deployed-models": (100, 0, False),
            "a100-gpus": (8, 0, True),
            "h100-gpus": (8, 0, True),
            "serverless-requests-per-minute": (600, 0, False),
        },
        "biz": {
            "deployed-models": (100, 0, True),
            "a100-gpus": (8, 0, True),
            "h100-gpus": (8, 0, True),
            "serverless-requests-per-minute": (600, 0, True),
        },
        "ent": {
            "deployed-models": (None, 0, False),
            "a100-gpus": (8, 0, True),
            "h100-gpus": (8, 0, True),
            "serverless-requests-per-minute": (None, 0, False),
        },
    }


def test_only_the_operator_changes_quotas_and_it_is_audited(
    client: TestClient, operator: dict[str, str], services: Services
) -> None:
    create_account(client, operator, "acme", "BUSINESS")
    member = bearer(member_key(client, operator, "acme", "alice", "admin"))
    path = QUOTAS.format("acme") + "/a100-gpus"
    denied = client.patch(path, json={"value": 16}, headers=member)
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "operator_only"
    raised = ok(client.patch(path, json={"value": 16}, headers=operator))
    assert (raised["name"], raised["value"]) == ("accounts/acme/quotas/a100-gpus", 16)
    assert ok(client.get(path, headers=member))["value"] == 16
    reset = ok(client.patch(path, json={"value": None}, headers=operator))
    assert reset["value"] == 8
    with services.db.transaction() as session:
        audit = session.scalars(select(AuditLogRow).order_by(AuditLogRow.id)).all()
        assert [(a.action, a.detail) for a in audit] == [
            ("QUOTA_UPDATED", "a100-gpus: default -> 16"),
            ("QUOTA_UPDATED", "a100-gpus: 16 -> default"),
        ]
    missing = client.get(QUOTAS.format("acme") + "/tpu-pods", headers=member)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "quota_not_found"
    other = client.get(QUOTAS.format("globex"), headers=member)
    assert other.status_code == 404  # another account looks absent
    negative = client.patch(path, json={"value": -1}, headers=operator)
    assert negative.status_code == 400


def test_rpm_quota_and_limits_are_one_setting(
    client: TestClient, operator: dict[str, str], limiter: InProcessRateLimiter
) -> None:
    create_account(client, operator, "acme", "BUSINESS")
    limits = "/v1/accounts/acme/limits"
    assert ok(client.get(limits, headers=operator)) == {
        "name": "accounts/acme/limits",
        "plan": "BUSINESS",
        "rateLimitRequestsPerMinute": 600,
        "rateLimitIsPlanDefault": True,
        "promptTokensPerMinute": None,
        "generatedTokensPerMinute": None,
    }
    rpm = QUOTAS.format("acme") + "/serverless-requests-per-minute"
    assert ok(client.patch(rpm, json={"value": 1200}, headers=operator))["value"] == 1200
    assert ok(client.get(limits, headers=operator))["rateLimitRequestsPerMinute"] == 1200
    changed = ok(client.patch(limits, json={"promptTokensPerMinute": 5000}, headers=operator))
    assert (changed["rateLimitRequestsPerMinute"], changed["promptTokensPerMinute"]) == (1200, 5000)
    back = ok(client.patch(limits, json={"rateLimitRequestsPerMinute": None}, headers=operator))
    assert (back["rateLimitRequestsPerMinute"], back["rateLimitIsPlanDefault"]) == (600, True)
    assert back["promptTokensPerMinute"] == 5000  # a field left out stays
    zero = client.patch(limits, json={"rateLimitRequestsPerMinute": 0}, headers=operator)
    assert zero.status_code == 400
    member = bearer(member_key(client, operator, "acme", "bob", "user"))
    denied = client.patch(limits, json={"rateLimitRequestsPerMinute": 5}, headers=member)
    assert denied.status_code == 403
    for _ in range(3):
        limiter.check("acme", 600)
    assert ok(client.get(rpm, headers=member))["usage"] == 3


def test_cli_lists_and_updates_quotas(
    client: TestClient, operator: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    create_account(client, operator, "acme", "BUSINESS")

    def forward(request: httpx.Request) -> httpx.Response:
        """Hand the CLI's request to the app, in process."""
        answer = client.request(
            request.method, str(request.url), content=request.content, headers=request.headers
        )
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    transport = httpx.MockTransport(forward)

    def in_process(self: Call) -> ApiClient:
        return ApiClient("http://testserver", OPERATOR_KEY, transport=transport)

    monkeypatch.setattr(Call, "client", in_process)
    app = typer.Typer()
    app.callback()(root_options)
    verbs = Verbs.build()
    limits_cli.register(verbs)
    verbs.attach(app)
    runner = CliRunner()
    env = {"COLUMNS": "200"}
    updated = runner.invoke(
        app, ["--account", "acme", "update", "quota", "h100-gpus", "--value", "12"], env=env
    )
    assert updated.exit_code == 0, updated.output
    listed = runner.invoke(app, ["--account", "acme", "list", "quotas"], env=env)
    assert listed.exit_code == 0, listed.output
    rows = [line.split("│")[1:-1] for line in listed.stdout.splitlines() if "quotas/" in line]
    assert [[cell.strip() for cell in row] for row in rows] == [
        ["accounts/acme/quotas/deployed-models", "100", "0", "true"],
        ["accounts/acme/quotas/a100-gpus", "8", "0", "true"],
        ["accounts/acme/quotas/h100-gpus", "12", "0", "true"],
        ["accounts/acme/quotas/serverless-requests-per-minute", "600", "0", "true"],
    ]
    as_json = runner.invoke(app, ["--account", "acme", "-o", "json", "list", "quotas"], env=env)
    assert json.loads(as_json.stdout)["totalSize"] == 4
