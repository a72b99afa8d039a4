"""The money cycle through a real server with the test clock on.

Free credit, a card, a credit purchase raising the tier, a declined card,
real chat usage on the bundled model, the month end moved by the test clock,
an invoice that fails to charge (suspending the account with the reason
FAILED_PAYMENTS, where the limits slice is wired) and is then paid by hand.

Usage here comes from ``firebox-tiny-priced``: the bundled firebox-tiny with
an explicit price of $50,000 per 1M tokens ($0.05 a token) in an operator
catalog file, so one short chat outspends the $1 of free credit.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import OPERATOR_KEY
from tests.e2e.conftest import E2E_BACKENDS, drop_schema, pg_schema_url
from tests.support.api import bearer, create_account, member_key
from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.slow

OPERATOR = bearer(OPERATOR_KEY)
PRICED = "accounts/firebox/models/firebox-tiny-priced"
CATALOG = """
[[models]]
id = "firebox-tiny-priced"
kind = "HF_BASE_MODEL"
displayName = "Firebox tiny at a steep price (money-cycle test)"
parameterCount = 4_999_424
contextLength = 2048
public = true
price = "50000"
engine = { type = "local", path = "firebox-tiny" }
"""
PROMPT = "Tell me, in a few words, what the weather is like on a quiet winter morning by the sea."


@pytest.fixture(scope="module", params=E2E_BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    data_dir: Path = tmp_path_factory.mktemp("money")
    catalog = data_dir / "catalog.toml"
    catalog.write_text(CATALOG)
    env = {
        "FIREBOX_ADMIN_KEY": OPERATOR_KEY,
        "FIREBOX_TEST_CLOCK": "1",
        "FIREBOX_CATALOG_FILE": str(catalog),
    }
    schema = None
    if request.param == "postgresql":
        schema, env["FIREBOX_DATABASE_URL"] = pg_schema_url()
    running = start_server(data_dir, env=env)
    yield running
    running.stop()
    if schema:
        drop_schema(schema)


@pytest.fixture(scope="module")
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text


def member(http: httpx.Client, account: str) -> dict[str, str]:
    create_account(http, OPERATOR, account)
    return bearer(member_key(http, OPERATOR, account, "owner", "admin"))


def billing(http: httpx.Client, account: str, key: dict[str, str]) -> dict[str, Any]:
    return ok(http.get(f"/v1/accounts/{account}/billing", headers=key))


def add_card(http: httpx.Client, account: str, key: dict[str, str], card: str) -> str:
    answer = ok(
        http.post(
            f"/v1/accounts/{account}/paymentMethods", json={"paymentMethod": card}, headers=key
        )
    )
    return str(answer["id"])


def after_next_month_close(now: datetime) -> datetime:
    """01:05 on the 1st of next month: past the period job's 1-hour grace for late usage."""
    return datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, 1, 5, tzinfo=UTC)


def test_free_credit_purchase_and_decline(http: httpx.Client) -> None:
    key = member(http, "buyer")
    view = billing(http, "buyer", key)
    assert (view["creditBalance"], view["tier"], view["spendLimit"]) == ("1.00", "1", "50.00")
    declined = add_card(http, "buyer", key, "pm_card_chargeDeclined")
    view = billing(http, "buyer", key)
    purchase = "/v1/accounts/buyer/credits:purchase"
    refused(http.post(purchase, json={"amount": "100.00"}, headers=key), 402, "payment_declined")
    assert billing(http, "buyer", key) == view  # nothing changed
    assert (view["creditBalance"], view["historicalSpend"]) == ("1.00", "0.00")
    ok(http.delete(f"/v1/accounts/buyer/paymentMethods/{declined}", headers=key))
    add_card(http, "buyer", key, "pm_card_visa")
    bought = ok(
        http.post(purchase, json={"amount": "100.00"}, headers={**key, "Idempotency-Key": "k1"})
    )
    assert (bought["amount"], bought["state"]) == ("100.00", "SUCCEEDED")
    view = billing(http, "buyer", key)
    assert (view["tier"], view["spendLimit"], view["creditBalance"], view["historicalSpend"]) == (
        "2",
        "500.00",
        "101.00",
        "100.00",
    )


def wait_for_usage(http: httpx.Client, account: str, key: dict[str, str]) -> dict[str, Any]:
    """Usage reaches the ledger asynchronously (spool, batch); wait until it shows."""
    deadline = time.monotonic() + 120  # only the failure path
    while True:
        view = billing(http, account, key)
        if view["monthToDateUsage"] != "0.00" or time.monotonic() > deadline:
            return view
        time.sleep(0.2)


def test_month_end_invoice_fails_then_is_paid(server: RunningServer, http: httpx.Client) -> None:
    key = member(http, "spender")
    add_card(http, "spender", key, "pm_card_chargeDeclined")
    client = openai.OpenAI(
        base_url=f"{server.url}/inference/v1",
        api_key=key["Authorization"].removeprefix("Bearer "),
        max_retries=0,
        timeout=120,
    )
    answer = client.chat.completions.create(
        model=PRICED, messages=[{"role": "user", "content": PROMPT}], max_tokens=8
    )
    assert answer.usage is not None
    tokens = answer.usage.prompt_tokens + answer.usage.completion_tokens
    assert tokens > 20  # more than the free dollar buys
    cost = f"{tokens * 5 // 100}.{tokens * 5 % 100:02d}"  # $0.05 a token
    view = wait_for_usage(http, "spender", key)
    assert (view["monthToDateUsage"], view["creditBalance"]) == (cost, "0.00")
    usage = ok(http.get("/v1/accounts/spender/usage", headers=key))
    assert [(g["key"], g["requests"], g["amount"]) for g in usage["groups"]] == [(PRICED, 1, cost)]

    now = datetime.fromisoformat(ok(http.get("/v1/admin/testClock", headers=OPERATOR))["now"])
    moved = ok(
        http.post(
            "/v1/admin/testClock:advance",
            json={"to": after_next_month_close(now).isoformat()},
            headers=OPERATOR,
        )
    )
    assert f"{now.year}-{now.month:02d}" in moved["closedPeriods"]
    (invoice,) = ok(http.get("/v1/accounts/spender/invoices", headers=key))["invoices"]
    total = tokens * 50_000 - 1_000_000  # micro-USD: usage less the free dollar
    assert (invoice["state"], invoice["usage"], invoice["creditsApplied"]) == (
        "PAYMENT_FAILED",
        cost,
        "1.00",
    )
    assert invoice["total"] == f"{total // 1_000_000}.{total % 1_000_000 // 10_000:02d}"
    view = billing(http, "spender", key)
    assert (view["failedInvoices"], view["spendLimit"]) == (1, "0.00")
    states = [view["suspendState"]]

    pay = f"/v1/accounts/spender/invoices/{invoice['id']}:pay"
    refused(http.post(pay, headers=key), 402, "payment_declined")
    add_card(http, "spender", key, "pm_card_visa")
    paid = ok(http.post(pay, headers=key))
    assert (paid["state"], paid["amountDue"]) == ("PAID", invoice["total"])
    view = billing(http, "spender", key)
    assert (view["failedInvoices"], view["spendLimit"], view["historicalSpend"]) == (
        0,
        "50.00",
        invoice["total"],
    )
    states.append(view["suspendState"])
    assert states == ["FAILED_PAYMENTS", "UNSUSPENDED"]  # suspended, with the reason
