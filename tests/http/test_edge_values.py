"""Edge values (issue 15 #6-#9): each a clear 4xx, or stored as sent, on each store.

Column widths agree with the schemas' bounds (a requests/min of 2**31 fits),
times are bounded to the years 1970-9998 (no overflow converting to UTC),
page tokens are validated fully, and amounts are parsed exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from firebox.paging import MAX_ROW_ID, decode_row_id_token, encode_token
from firebox.store.database import Database
from tests.billing.test_endpoints import OPERATOR, Env, call, error, make_env, new_account
from tests.support.api import create_user


@pytest.fixture
def env(database: Database, tmp_path: Path) -> Iterator[Env]:
    built = make_env(database, tmp_path)
    with built.http:
        yield built
    built.services.revocations.close()


# -- #6: 32-bit columns ----------------------------------------------------------------------


@pytest.mark.parametrize("value", [2**31, 2**31 + 1, 10_000_000_000])
def test_a_requests_per_minute_above_32_bits_is_stored(env: Env, value: int) -> None:
    new_account(env)
    limits = call(
        env, "PATCH", "/v1/accounts/acme/limits", json={"rateLimitRequestsPerMinute": value}
    )
    assert limits["rateLimitRequestsPerMinute"] == value
    path = "/v1/accounts/acme/quotas/serverless-requests-per-minute"
    assert call(env, "PATCH", path, json={"value": value})["value"] == value
    assert call(env, "GET", path)["value"] == value


def test_a_requests_per_minute_above_the_bound_is_a_400(env: Env) -> None:
    new_account(env)
    body = {"rateLimitRequestsPerMinute": 10_000_000_001}
    err = error(env, "PATCH", "/v1/accounts/acme/limits", 400, json=body)
    assert err["param"] == "rateLimitRequestsPerMinute"


# -- #7: times at the ends of the range --------------------------------------------------------

EDGE_TIMES = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "1969-12-31T00:00:00Z"]


@pytest.mark.parametrize("param", ["startTime", "endTime"])
@pytest.mark.parametrize("value", EDGE_TIMES)
def test_usage_times_outside_the_range_are_a_400(env: Env, param: str, value: str) -> None:
    new_account(env)
    err = error(env, "GET", "/v1/accounts/acme/usage", 400, params={param: value})
    assert (err["code"], err["param"]) == ("invalid_time", param)


@pytest.mark.parametrize("value", EDGE_TIMES)
def test_body_times_outside_the_range_are_a_400(env: Env, value: str) -> None:
    new_account(env)
    grant = {"amount": "1.00", "reason": "edge", "expireTime": value}
    assert error(env, "POST", "/v1/accounts/acme/credits:grant", 400, json=grant)["param"] == (
        "expireTime"
    )
    advance = error(env, "POST", "/v1/admin/testClock:advance", 400, json={"to": value})
    assert advance["param"] == "to"
    create_user(env.http, OPERATOR, "acme", "ann", "admin")
    key = {"apiKey": {"expireTime": value}}
    path = "/v1/accounts/acme/users/ann/apiKeys"
    assert error(env, "POST", path, 400, json=key)["param"] == "apiKey.expireTime"


def test_times_inside_the_range_still_work(env: Env) -> None:
    new_account(env)
    early = {"startTime": "1970-01-01T00:00:00+01:00", "endTime": "1970-01-02T00:00:00Z"}
    call(env, "GET", "/v1/accounts/acme/usage", params=early)
    late = {"startTime": "9998-12-30T00:00:00Z", "endTime": "9998-12-31T23:59:59-01:00"}
    call(env, "GET", "/v1/accounts/acme/usage", params=late)


# -- #8: page tokens ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "decoded", [str(MAX_ROW_ID + 1), "9" * 40, "0", "-1", "+5", " 7", "1_000", "٣"]
)
def test_an_audit_page_token_out_of_range_is_a_400(env: Env, decoded: str) -> None:
    new_account(env)
    token = encode_token(decoded)
    err = error(env, "GET", "/v1/accounts/acme/auditLog", 400, params={"pageToken": token})
    assert (err["code"], err["param"]) == ("invalid_page_token", "pageToken")


def test_row_id_tokens_round_trip_to_the_largest_id() -> None:
    assert decode_row_id_token(encode_token(str(MAX_ROW_ID))) == MAX_ROW_ID
    assert decode_row_id_token(encode_token("42")) == 42
    assert decode_row_id_token(None) is None


# -- #9: smaller ones --------------------------------------------------------------------------


def test_invoices_of_a_missing_account_are_a_404(env: Env) -> None:
    err = error(env, "GET", "/v1/accounts/nobody/invoices", 404)
    assert err["code"] == "account_not_found"


@pytest.mark.parametrize("period", ["0000-01", "1969-12", "9999-01"])
def test_close_period_refuses_years_outside_the_range(env: Env, period: str) -> None:
    err = error(env, "POST", "/v1/admin/billing:closePeriod", 400, json={"period": period})
    assert (err["code"], err["param"]) == ("invalid_period", "period")


def test_a_long_grant_amount_is_refused_as_sent(env: Env) -> None:
    new_account(env)
    amount = "1234567890123456789012345678901"  # 31 digits: more than Decimal's 28
    body = {"amount": amount, "reason": "big"}
    err = error(env, "POST", "/v1/accounts/acme/credits:grant", 400, json=body)
    assert (err["code"], err["param"]) == ("invalid_amount", "amount")
    assert amount in err["message"]
