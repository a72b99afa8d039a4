"""The billing HTTP API and the operator's test-clock routes, on SQLite and PostgreSQL.

An app per test over the real services (``build_services``) on a migrated
database, a fake base clock under the test clock (2026-01-15 12:00 UTC) and
the test payment provider. Usage is written through the real pricer and ledger.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from firebox.app import create_app
from firebox.billing.events import NoListener
from firebox.billing.ledger import Ledger
from firebox.billing.overrides import NoOverrides
from firebox.billing.price_book import PriceBook
from firebox.billing.pricing import Pricer
from firebox.clock import FakeClock, OffsetClock
from firebox.inference.metering import UsageRecord
from firebox.server import initialize
from firebox.services import Services, build_services
from firebox.settings import Settings
from firebox.store.database import Database
from tests.conftest import OPERATOR_KEY
from tests.support.api import bearer, create_account, member_key

T0 = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
OPERATOR = bearer(OPERATOR_KEY)
SMALL = "accounts/fireworks/models/small"
_ids = itertools.count()


@dataclass
class Env:
    http: TestClient
    services: Services
    base: FakeClock
    db: Database

    def usage(self, account: str, tokens: int, when: datetime = T0) -> None:
        """Write one chat record of ``tokens`` prompt tokens at $0.20 / 1M through the ledger."""
        record = UsageRecord(
            request_id=f"req-{next(_ids)}",
            account_id=account,
            model=SMALL,
            base_model=SMALL,
            kind="chat",
            time=when,
            prompt_tokens=tokens,
            completion_tokens=0,
            price_class="TEXT_DENSE_UP_TO_16B",
        )
        pricer = Pricer(PriceBook.load(), NoOverrides(), clock=self.base)
        ledger = Ledger(self.db, self.services.clock, NoListener())
        assert ledger.apply([pricer.price(record)]) == 1


def make_env(database: Database, tmp_path: Path, *, test_clock: bool = True) -> Env:
    base = FakeClock(T0)
    clock = OffsetClock(base) if test_clock else base
    settings = Settings(
        data_dir=tmp_path / "data",
        admin_key=OPERATOR_KEY,
        access_log=False,
        bootstrap_demo=False,
        warm_local_engines=False,
        test_clock=test_clock,
    )
    services = build_services(settings, db=database, clock=clock)
    # build_services makes its own test clock only when it is given no clock.
    services.test_clock = clock if isinstance(clock, OffsetClock) else None
    initialize(services)
    http = TestClient(create_app(services), raise_server_exceptions=False)
    return Env(http, services, base, database)


@pytest.fixture
def env(database: Database, tmp_path: Path) -> Iterator[Env]:
    built = make_env(database, tmp_path)
    with built.http:
        yield built
    built.services.revocations.close()


def new_account(env: Env, account: str = "acme") -> str:
    create_account(env.http, OPERATOR, account)
    return account


def call(env: Env, method: str, path: str, status: int = 200, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("headers", OPERATOR)
    response = env.http.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


def error(env: Env, method: str, path: str, status: int, **kwargs: Any) -> dict[str, Any]:
    detail: dict[str, Any] = call(env, method, path, status, **kwargs)["error"]
    return detail


def pick(obj: dict[str, Any], *fields: str) -> tuple[Any, ...]:
    return tuple(obj[f] for f in fields)


def billing(env: Env, account: str = "acme") -> dict[str, Any]:
    return call(env, "GET", f"/v1/accounts/{account}/billing")


def add_card(env: Env, account: str, card: str = "pm_card_visa") -> dict[str, Any]:
    return call(env, "POST", f"/v1/accounts/{account}/paymentMethods", json={"paymentMethod": card})


def test_new_account_overview(env: Env) -> None:
    new_account(env)
    view = billing(env)
    assert view == {
        "name": "accounts/acme/billing",
        "tier": "1",
        "usageTier": "1",
        "spendLimit": "50.00",
        "tierSpendLimit": "50.00",
        "customSpendLimit": None,
        "unlimited": False,
        "accountSpendLimit": None,
        "monthToDateUsage": "0.00",
        "creditBalance": "1.00",
        "historicalSpend": "0.00",
        "failedInvoices": 0,
        "paymentMethods": [],
        "suspendState": "UNSUSPENDED",
        "period": "2026-01",
        "periodStart": "2026-01-01T00:00:00Z",
        "periodEnd": "2026-02-01T00:00:00Z",
    }
    env.usage("acme", 2_500_000)  # $0.50
    assert (billing(env)["monthToDateUsage"], billing(env)["creditBalance"]) == ("0.50", "0.50")


def test_account_spend_limit_set_and_cleared(env: Env) -> None:
    new_account(env)
    path = "/v1/accounts/acme/billing"
    view = call(env, "PATCH", path, json={"accountSpendLimit": "20"})
    assert (view["accountSpendLimit"], view["spendLimit"], view["tier"]) == ("20.00", "20.00", "1")
    view = call(env, "PATCH", path, json={"accountSpendLimit": "70.50"})  # above the tier's
    assert (view["accountSpendLimit"], view["spendLimit"]) == ("70.50", "50.00")
    view = call(env, "PATCH", path, json={"accountSpendLimit": None})
    assert (view["accountSpendLimit"], view["spendLimit"]) == (None, "50.00")
    for bad in ("abc", "-5", "1.0000001", "", 20):
        detail = error(env, "PATCH", path, 400, json={"accountSpendLimit": bad})
        assert detail["param"] == "accountSpendLimit", detail
    assert error(env, "PATCH", path, 400, json={})["code"] == "empty_update"
    assert error(env, "PATCH", path, 400, json={"tier": "4"})["code"] == "unknown_field"


def test_custom_limits_are_the_operators(env: Env) -> None:
    new_account(env)
    admin = bearer(member_key(env.http, OPERATOR, "acme", "ann", "admin"))
    path = "/v1/accounts/acme/billing"
    for body in ({"customSpendLimit": "900"}, {"unlimited": True}):
        detail = error(env, "PATCH", path, 403, json=body, headers=admin)
        assert detail["code"] == "operator_only"
    assert billing(env)["tier"] == "1"
    view = call(env, "PATCH", path, json={"customSpendLimit": "900"})
    assert (view["tier"], view["usageTier"], view["spendLimit"]) == ("custom", "1", "900.00")
    view = call(env, "PATCH", path, json={"unlimited": True})
    assert (view["spendLimit"], view["customSpendLimit"], view["unlimited"]) == (None, None, True)
    view = call(env, "PATCH", path, json={"accountSpendLimit": "30"}, headers=admin)
    assert view["spendLimit"] is None  # unlimited wins over the account's own limit
    view = call(env, "PATCH", path, json={"unlimited": False, "customSpendLimit": None})
    assert (view["tier"], view["spendLimit"]) == ("1", "30.00")


def test_payment_methods(env: Env) -> None:
    new_account(env)
    base = "/v1/accounts/acme/paymentMethods"
    visa = add_card(env, "acme")
    assert (visa["brand"], visa["last4"], visa["provider"]) == ("visa", "4242", "test")
    assert visa["name"] == f"accounts/acme/paymentMethods/{visa['id']}"
    env.base.advance(timedelta(seconds=1))
    amex = add_card(env, "acme", "pm_card_amex")
    listed = call(env, "GET", base)
    assert [m["id"] for m in listed["paymentMethods"]] == [amex["id"], visa["id"]]
    assert listed["totalSize"] == 2
    first = call(env, "GET", base, params={"pageSize": 1})
    assert [m["id"] for m in first["paymentMethods"]] == [amex["id"]]
    second = call(env, "GET", base, params={"pageSize": 1, "pageToken": first["nextPageToken"]})
    assert [m["id"] for m in second["paymentMethods"]] == [visa["id"]]
    assert second["nextPageToken"] == ""
    assert call(env, "GET", f"{base}/{visa['id']}")["last4"] == "4242"
    assert call(env, "DELETE", f"{base}/{visa['id']}") == {}
    assert call(env, "POST", f"{base}/{amex['id']}:delete") == {}
    assert call(env, "GET", base)["paymentMethods"] == []
    assert error(env, "GET", f"{base}/{visa['id']}", 404)["code"] == "payment_method_not_found"
    assert error(env, "DELETE", f"{base}/pm-nope", 404)["code"] == "payment_method_not_found"
    refused = error(env, "POST", base, 400, json={"paymentMethod": "pm_card_bogus"})
    assert (refused["code"], refused["param"]) == ("invalid_payment_method", "paymentMethod")


def test_buying_100_dollars_reaches_tier_2_at_once(env: Env) -> None:
    new_account(env)
    path = "/v1/accounts/acme/credits:purchase"
    refused = error(env, "POST", path, 400, json={"amount": "100.00"})
    assert refused["code"] == "payment_method_required"
    add_card(env, "acme")
    for bad in ("abc", "0.50", "100.001", "-100", 100):
        assert error(env, "POST", path, 400, json={"amount": bad})["param"] == "amount", bad
    assert billing(env)["creditBalance"] == "1.00"
    key = {**OPERATOR, "Idempotency-Key": "buy-1"}
    bought = call(env, "POST", path, json={"amount": "100.00"}, headers=key)
    assert pick(bought, "amount", "state", "idempotencyKey") == ("100.00", "SUCCEEDED", "buy-1")
    view = billing(env)
    assert pick(view, "tier", "spendLimit", "creditBalance", "historicalSpend") == (
        "2",
        "500.00",
        "101.00",
        "100.00",
    )
    again = call(env, "POST", path, json={"amount": "100.00", "idempotencyKey": "buy-1"})
    assert again["id"] == bought["id"]
    assert billing(env)["creditBalance"] == "101.00"  # a replay charges nothing
    mismatch = call(
        env, "POST", path, 400, json={"amount": "5", "idempotencyKey": "a"}, headers=key
    )
    assert mismatch["error"]["code"] == "idempotency_key_mismatch"
    grants = call(env, "GET", "/v1/accounts/acme/credits")
    assert sorted((g["source"], g["amount"], g["remaining"]) for g in grants["credits"]) == [
        ("FREE", "1.00", "1.00"),
        ("PURCHASE", "100.00", "100.00"),
    ]


def test_declined_purchase_is_402_and_changes_nothing(env: Env) -> None:
    new_account(env)
    add_card(env, "acme", "pm_card_chargeDeclined")
    before = billing(env)
    detail = error(env, "POST", "/v1/accounts/acme/credits:purchase", 402, json={"amount": "100"})
    assert detail["code"] == "payment_declined"
    assert billing(env) == before
    assert len(call(env, "GET", "/v1/accounts/acme/credits")["credits"]) == 1


def test_operator_grants_credit(env: Env) -> None:
    new_account(env)
    admin = bearer(member_key(env.http, OPERATOR, "acme", "ann", "admin"))
    path = "/v1/accounts/acme/credits:grant"
    body = {"amount": "25.00", "reason": "sorry for the outage"}
    assert error(env, "POST", path, 403, json=body, headers=admin)["code"] == "operator_only"
    granted = call(env, "POST", path, json={**body, "expireTime": "2026-03-01T00:00:00Z"})
    assert pick(granted, "source", "amount", "expireTime") == (
        "OPERATOR",
        "25.00",
        "2026-03-01T00:00:00Z",
    )
    assert billing(env)["creditBalance"] == "26.00"
    assert error(env, "POST", path, 400, json={**body, "amount": "x"})["param"] == "amount"
    past = {**body, "expireTime": "2025-01-01T00:00:00Z"}
    assert error(env, "POST", path, 400, json=past)["param"] == "expireTime"
    assert call(env, "GET", "/v1/accounts/acme/credits", headers=admin)["totalSize"] == 2


def test_usage_report(env: Env) -> None:
    new_account(env)
    env.usage("acme", 1_000_000)  # $0.20
    env.usage("acme", 2_000_000, when=datetime(2026, 1, 16, 9, tzinfo=UTC))  # $0.40
    path = "/v1/accounts/acme/usage"
    by_model = call(env, "GET", path)
    assert pick(by_model, "startTime", "endTime", "groupBy") == (
        "2026-01-01T00:00:00Z",
        "2026-02-01T00:00:00Z",
        "model",
    )
    assert [
        (g["key"], g["requests"], g["promptTokens"], g["amount"]) for g in by_model["groups"]
    ] == [(SMALL, 2, 3_000_000, "0.60")]
    assert (by_model["total"]["amount"], by_model["total"]["creditApplied"]) == ("0.60", "0.60")
    by_day = call(env, "GET", path, params={"groupBy": "day"})
    assert [(g["key"], g["amount"]) for g in by_day["groups"]] == [
        ("2026-01-15", "0.20"),
        ("2026-01-16", "0.40"),
    ]
    window = {"startTime": "2026-01-16T00:00:00Z", "endTime": "2026-01-17T00:00:00+00:00"}
    assert call(env, "GET", path, params={**window, "groupBy": "kind"})["groups"][0]["amount"] == (
        "0.40"
    )
    for params, param in (
        ({"groupBy": "hour"}, "groupBy"),
        ({"startTime": "yesterday"}, "startTime"),
        ({"endTime": "2026-01-20T00:00:00"}, "endTime"),  # no zone
        ({"startTime": "2026-01-20T00:00:00Z", "endTime": "2026-01-10T00:00:00Z"}, "endTime"),
    ):
        assert error(env, "GET", path, 400, params=params)["param"] == param, params


def test_month_end_invoice_declined_then_paid(env: Env) -> None:
    new_account(env)
    add_card(env, "acme", "pm_card_chargeDeclined")
    env.usage("acme", 15_000_000)  # $3.00, $1.00 of it from the free credit
    early = call(env, "POST", "/v1/admin/testClock:advance", json={"to": "2026-02-01T00:00:05Z"})
    assert early["closedPeriods"] == []  # within the 1-hour grace for late usage
    moved = call(env, "POST", "/v1/admin/testClock:advance", json={"to": "2026-02-01T01:00:05Z"})
    assert moved["closedPeriods"] == ["2026-01"]
    assert moved["now"].startswith("2026-02-01T01:00:05")
    invoices = call(env, "GET", "/v1/accounts/acme/invoices")
    assert invoices["totalSize"] == 1
    (listed,) = invoices["invoices"]
    assert pick(listed, "period", "state", "usage", "creditsApplied") == (
        "2026-01",
        "PAYMENT_FAILED",
        "3.00",
        "1.00",
    )
    assert (listed["total"], listed["amountDue"], listed["attemptCount"]) == ("2.00", "2.00", 1)
    path = f"/v1/accounts/acme/invoices/{listed['id']}"
    one = call(env, "GET", path)
    assert [(line["model"], line["requests"], line["amount"]) for line in one["lines"]] == [
        (SMALL, 1, "3.00")
    ]
    view = billing(env)
    assert (view["failedInvoices"], view["spendLimit"], view["period"]) == (1, "0.00", "2026-02")
    assert error(env, "POST", f"{path}:pay", 402)["code"] == "payment_declined"
    add_card(env, "acme", "pm_card_visa")
    paid = call(env, "POST", f"{path}:pay")
    assert (paid["state"], paid["attemptCount"]) == ("PAID", 3)
    assert paid["paidTime"].startswith("2026-02-01T01:00:05")
    view = billing(env)
    assert pick(view, "failedInvoices", "spendLimit", "historicalSpend") == (0, "50.00", "2.00")
    assert error(env, "POST", f"{path}:pay", 400)["code"] == "invoice_already_paid"
    assert error(env, "GET", "/v1/accounts/acme/invoices/inv_nope", 404)["code"] == (
        "invoice_not_found"
    )


def test_close_period_by_hand(env: Env) -> None:
    new_account(env)
    env.usage("acme", 2_500_000)  # $0.50: all on credit, so the invoice is $0 and PAID
    path = "/v1/admin/billing:closePeriod"
    assert error(env, "POST", path, 400, json={"period": "2026-1"})["code"] == "invalid_period"
    assert error(env, "POST", path, 400, json={"period": "2026-01"})["code"] == "period_not_ended"
    env.base.set(datetime(2026, 2, 3, tzinfo=UTC))
    report = call(env, "POST", path, json={"period": "2026-01"})
    assert (report["period"], len(report["invoiceIds"]), report["paid"]) == ("2026-01", 1, 1)
    again = call(env, "POST", path, json={"period": "2026-01"})
    assert (again["invoiceIds"], again["alreadyInvoiced"]) == ([], 1)
    (invoice,) = call(env, "GET", "/v1/accounts/acme/invoices")["invoices"]
    assert (invoice["state"], invoice["total"]) == ("PAID", "0.00")


def test_test_clock_routes(env: Env) -> None:
    new_account(env)
    admin = bearer(member_key(env.http, OPERATOR, "acme", "ann", "admin"))
    state = call(env, "GET", "/v1/admin/testClock")
    assert pick(state, "enabled", "offsetSeconds", "now") == (True, 0, "2026-01-15T12:00:00Z")
    to = {"to": "2026-01-20T12:00:00Z"}
    assert (
        error(env, "POST", "/v1/admin/testClock:advance", 403, json=to, headers=admin)["code"]
        == "operator_only"
    )
    assert error(env, "GET", "/v1/admin/testClock", 403, headers=admin)["code"] == "operator_only"
    moved = call(env, "POST", "/v1/admin/testClock:advance", json=to)
    assert (moved["now"], moved["closedPeriods"]) == ("2026-01-20T12:00:00Z", [])
    assert call(env, "GET", "/v1/admin/testClock")["offsetSeconds"] == 5 * 86_400
    back = error(
        env, "POST", "/v1/admin/testClock:advance", 400, json={"to": "2026-01-19T00:00:00Z"}
    )
    assert (back["code"], back["param"]) == ("clock_backwards", "to")
    naive = error(env, "POST", "/v1/admin/testClock:advance", 400, json={"to": "2026-02-01T00:00"})
    assert naive["param"] == "to"
    far = error(
        env, "POST", "/v1/admin/testClock:advance", 400, json={"to": "2100-01-01T00:00:00Z"}
    )
    assert (far["code"], far["param"]) == (
        "clock_too_far",
        "to",
    )  # years past 9998: 400 at the edge
    assert call(env, "GET", "/v1/admin/testClock")["now"] == "2026-01-20T12:00:00Z"  # unmoved
    call(env, "POST", "/v1/admin/testClock:advance", json={"to": "2036-01-01T00:00:00Z"})
    assert call(env, "GET", "/v1/accounts/acme/billing")["period"] == "2036-01"  # still answers
    closing = error(
        env, "POST", "/v1/admin/billing:closePeriod", 403, json={"period": "2025-12"}, headers=admin
    )
    assert closing["code"] == "operator_only"


def test_test_clock_disabled(database: Database, tmp_path: Path) -> None:
    built = make_env(database, tmp_path, test_clock=False)
    with built.http:
        detail = error(
            built, "POST", "/v1/admin/testClock:advance", 400, json={"to": "2026-02-01T00:00:00Z"}
        )
        assert detail["code"] == "test_clock_disabled"
        assert "FIREBOX_TEST_CLOCK=1" in detail["message"]
        assert call(built, "GET", "/v1/admin/testClock")["enabled"] is False
    built.services.revocations.close()


def test_authorization(env: Env) -> None:
    new_account(env)
    new_account(env, "rival")
    stranger = bearer(member_key(env.http, OPERATOR, "rival", "eve", "admin"))
    user = bearer(member_key(env.http, OPERATOR, "acme", "uma", "user"))
    contributor = bearer(member_key(env.http, OPERATOR, "acme", "cal", "contributor"))
    reads = ("billing", "paymentMethods", "credits", "usage", "invoices")
    for noun in reads:
        path = f"/v1/accounts/acme/{noun}"
        assert error(env, "GET", path, 404, headers=stranger)["code"] == "account_not_found"
        assert error(env, "GET", path, 403, headers=contributor)["code"] == "role_forbids"
        call(env, "GET", path, headers=user)
    writes: tuple[tuple[str, str, dict[str, Any]], ...] = (
        ("PATCH", "billing", {"accountSpendLimit": "10"}),
        ("POST", "paymentMethods", {"paymentMethod": "pm_card_visa"}),
        ("POST", "credits:purchase", {"amount": "10"}),
    )
    for method, noun, body in writes:
        path = f"/v1/accounts/acme/{noun}"
        assert error(env, method, path, 403, json=body, headers=user)["code"] == "role_forbids"
        assert error(env, method, path, 404, json=body, headers=stranger)["code"] == (
            "account_not_found"
        )
    assert env.http.get("/v1/accounts/acme/billing").status_code == 401
    assert error(env, "GET", "/v1/accounts/ghost/billing", 404)["code"] == "account_not_found"
