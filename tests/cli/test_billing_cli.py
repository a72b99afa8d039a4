"""Billing commands against a real server (test clock on): outputs and exit codes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.cli.runner import ADMIN_KEY, Cli, CliResult, clean_env
from tests.support.api import bearer, create_account, member_key
from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.slow

NewId = Callable[[str], str]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """This module's server has the test clock on (it overrides tests/cli/conftest.py's)."""
    data_dir = tmp_path_factory.mktemp("firebox-billing")
    running = start_server(
        data_dir,
        env=clean_env(
            FIREBOX_ADMIN_KEY=ADMIN_KEY, FIREBOX_ACCESS_LOG="false", FIREBOX_TEST_CLOCK="1"
        ),
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def api(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def ok(result: CliResult) -> CliResult:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def failed(result: CliResult, code: int, text: str = "") -> CliResult:
    assert result.returncode == code, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    assert text in result.stderr, result.stderr
    return result


def account(api: httpx.Client, new_id: NewId) -> str:
    name = new_id("bill")
    create_account(api, bearer(ADMIN_KEY), name)
    return name


def test_get_and_update_billing(cli: Cli, api: httpx.Client, new_id: NewId) -> None:
    acct = account(api, new_id)
    view = ok(cli("get", "billing", "--account", acct, "-o", "json")).json()
    assert (view["tier"], view["spendLimit"], view["creditBalance"]) == ("1", "50.00", "1.00")
    table = ok(cli("get", "billing", "--account", acct)).stdout
    assert "Credit balance" in table and "1.00" in table
    updated = ok(
        cli("update", "billing", "--account", acct, "--account-spend-limit", "20", "-o", "json")
    ).json()
    assert (updated["accountSpendLimit"], updated["spendLimit"]) == ("20.00", "20.00")
    cleared = ok(
        cli("update", "billing", "--account", acct, "--clear-account-spend-limit", "-o", "json")
    ).json()
    assert cleared["accountSpendLimit"] is None
    failed(cli("update", "billing", "--account", acct), 2, "Nothing to update")
    bad = cli("update", "billing", "--account", acct, "--account-spend-limit", "lots")
    failed(bad, 1, "invalid_amount")
    custom = cli(
        "update", "billing", "--account", acct, "--custom-spend-limit", "900", "-o", "json"
    )
    assert ok(custom).json()["tier"] == "custom"
    key = member_key(api, bearer(ADMIN_KEY), acct, "ann", "admin")
    refused = cli("update", "billing", "--account", acct, "--unlimited", api_key=key)
    failed(refused, 3, "operator_only")


def test_cards_and_credits(cli: Cli, api: httpx.Client, new_id: NewId) -> None:
    acct = account(api, new_id)
    failed(cli("buy", "credits", "100", "--account", acct), 1, "payment_method_required")
    card = ok(cli("create", "payment-method", "pm_card_visa", "--account", acct, "-o", "json"))
    assert card.json()["last4"] == "4242"
    listing = ok(cli("list", "payment-methods", "--account", acct)).stdout
    assert "4242" in listing and "visa" in listing
    bought = ok(cli("buy", "credits", "100", "--account", acct, "-o", "json")).json()
    assert (bought["amount"], bought["state"]) == ("100.00", "SUCCEEDED")
    view = ok(cli("get", "billing", "--account", acct, "-o", "json")).json()
    assert (view["tier"], view["spendLimit"], view["creditBalance"]) == ("2", "500.00", "101.00")
    credits = ok(cli("list", "credits", "--account", acct, "-o", "json")).json()
    assert credits["totalSize"] == 2
    failed(cli("buy", "credits", "1.001", "--account", acct), 1, "invalid_amount")
    ok(cli("delete", "payment-method", card.json()["id"], "--account", acct))
    assert ok(cli("list", "payment-methods", "--account", acct, "-o", "json")).json() == {
        "paymentMethods": [],
        "totalSize": 0,
    }
    failed(cli("delete", "payment-method", "pm-nope", "--account", acct), 4)


def test_declined_card(cli: Cli, api: httpx.Client, new_id: NewId) -> None:
    acct = account(api, new_id)
    ok(cli("create", "payment-method", "pm_card_chargeDeclined", "--account", acct))
    failed(cli("buy", "credits", "50", "--account", acct), 1, "payment_declined")
    assert ok(cli("get", "billing", "--account", acct, "-o", "json")).json()["creditBalance"] == (
        "1.00"
    )
    failed(cli("create", "payment-method", "pm_bogus", "--account", acct), 1, "invalid_payment")


def test_usage_and_invoices(cli: Cli, api: httpx.Client, new_id: NewId) -> None:
    acct = account(api, new_id)
    usage = ok(cli("get", "usage", "--by", "day", "--account", acct, "-o", "json")).json()
    assert (usage["groupBy"], usage["groups"], usage["total"]["amount"]) == ("day", [], "0.00")
    failed(cli("get", "usage", "--start", "yesterday", "--account", acct), 2)
    failed(cli("get", "usage", "--by", "hour", "--account", acct), 2)
    assert "total: 0.00 USD" in ok(cli("get", "usage", "--account", acct)).stderr
    assert ok(cli("list", "invoices", "--account", acct, "-o", "json")).json()["invoices"] == []
    failed(cli("get", "invoice", "inv_nope", "--account", acct), 4, "invoice_not_found")
    failed(cli("pay", "invoice", "inv_nope", "--account", acct), 4, "invoice_not_found")


def test_operator_commands(cli: Cli, api: httpx.Client, new_id: NewId) -> None:
    acct = account(api, new_id)
    clock = ok(cli("billing", "clock", "-o", "json")).json()
    assert clock["enabled"] is True
    now = datetime.fromisoformat(clock["now"])
    failed(cli("billing", "close-period", "--period", "2026-13"), 2)
    failed(cli("billing", "close-period", "--period", f"{now.year + 1}-01"), 1, "period_not_ended")
    report = ok(cli("billing", "close-period", "--period", "2020-01", "-o", "json")).json()
    assert (report["period"], report["invoiceIds"]) == ("2020-01", [])
    key = member_key(api, bearer(ADMIN_KEY), acct, "ann", "admin")
    failed(cli("billing", "close-period", "--period", "2020-01", api_key=key), 3, "operator_only")
    target = (now + timedelta(days=3)).astimezone(UTC).replace(microsecond=0)
    moved = ok(cli("billing", "advance-clock", "--to", target.isoformat(), "-o", "json")).json()
    assert datetime.fromisoformat(moved["now"]) >= target
    assert isinstance(moved["closedPeriods"], list)
    back = cli("billing", "advance-clock", "--to", now.isoformat())
    failed(back, 1, "clock_backwards")
    failed(cli("billing", "advance-clock", "--to", "2030-01-01T00:00:00"), 2)
    granted = cli(
        "billing",
        "grant-credits",
        "--account",
        acct,
        "--amount",
        "5",
        "--reason",
        "test",
        "-o",
        "json",
    )
    assert ok(granted).json()["amount"] == "5.00"
