"""``ApiClient`` against ``httpx.MockTransport``: error mapping and pagination."""

from __future__ import annotations

import json

import httpx
import pytest

from firebox.cli.client import ApiClient, segment
from firebox.cli.errors import ApiError, CliError, ExitCode, ServerUnreachable


def error(status: int, message: str, code: str) -> httpx.Response:
    return httpx.Response(
        status,
        json={
            "error": {"message": message, "type": "x", "code": code, "param": None, "status": "X"}
        },
    )


@pytest.mark.parametrize(
    ("status", "exit_code"),
    [
        (400, ExitCode.API_ERROR),
        (401, ExitCode.AUTH),
        (403, ExitCode.AUTH),
        (404, ExitCode.NOT_FOUND),
        (409, ExitCode.CONFLICT),
        (413, ExitCode.API_ERROR),
        (500, ExitCode.API_ERROR),
    ],
)
def test_error_bodies_become_api_errors(status: int, exit_code: ExitCode) -> None:
    transport = httpx.MockTransport(lambda _: error(status, "It went wrong.", "some_code"))
    with (
        ApiClient("http://fb.test", "k", transport=transport) as api,
        pytest.raises(ApiError) as caught,
    ):
        api.get("/v1/accounts/x")
    assert caught.value.exit_code == exit_code
    assert caught.value.status == status
    assert caught.value.describe() == "It went wrong. (some_code)"


def test_a_non_json_error_still_says_what_happened() -> None:
    transport = httpx.MockTransport(lambda _: httpx.Response(502, text="Bad gateway from proxy"))
    with (
        ApiClient("http://fb.test", None, transport=transport) as api,
        pytest.raises(ApiError) as caught,
    ):
        api.get("/v1/accounts")
    assert caught.value.exit_code == ExitCode.API_ERROR
    assert "502" in caught.value.describe() and "proxy" in caught.value.describe()


def test_a_non_json_success_is_an_error() -> None:
    transport = httpx.MockTransport(lambda _: httpx.Response(200, text="<html>"))
    with ApiClient("http://fb.test", None, transport=transport) as api, pytest.raises(CliError):
        api.get("/v1/accounts")


def test_connection_refused_is_unreachable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    transport = httpx.MockTransport(refuse)
    with (
        ApiClient("http://fb.test", None, transport=transport) as api,
        pytest.raises(ServerUnreachable) as caught,
    ):
        api.get("/v1/accounts")
    assert caught.value.exit_code == ExitCode.UNREACHABLE
    assert "http://fb.test" in caught.value.describe()


def test_bearer_key_and_json_body_are_sent() -> None:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    with ApiClient("http://fb.test/", "fb_secret", transport=httpx.MockTransport(record)) as api:
        assert api.post("/v1/accounts", {"plan": "BUSINESS"}, params={"accountId": "a"}) == {
            "ok": True
        }
    (request,) = seen
    assert request.headers["authorization"] == "Bearer fb_secret"
    assert request.url.params["accountId"] == "a"
    assert json.loads(request.content) == {"plan": "BUSINESS"}


def test_list_all_follows_next_page_tokens() -> None:
    pages = {
        None: {"accounts": [{"name": "a"}, {"name": "b"}], "nextPageToken": "t1", "totalSize": 3},
        "t1": {"accounts": [{"name": "c"}], "nextPageToken": "", "totalSize": 3},
    }

    def serve(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=pages[request.url.params.get("pageToken")])

    with ApiClient("http://fb.test", None, transport=httpx.MockTransport(serve)) as api:
        listing = api.list_all("/v1/accounts", "accounts")
    assert [item["name"] for item in listing.items] == ["a", "b", "c"]
    assert listing.total_size == 3


def test_list_all_stops_on_a_repeated_token() -> None:
    page = {"accounts": [{"name": "a"}], "nextPageToken": "same", "totalSize": 1}
    transport = httpx.MockTransport(lambda _: httpx.Response(200, json=page))
    with ApiClient("http://fb.test", None, transport=transport) as api:
        assert len(api.list_all("/v1/accounts", "accounts").items) == 2


def test_segment_keeps_ids_inside_one_path_segment() -> None:
    assert segment("a/../b") == "a%2F..%2Fb"
