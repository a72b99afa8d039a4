"""Shared HTTP behaviour: errors, request ids, body cap, health and metrics."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from firebox.services import Services
from firebox.store import migrate
from tests.conftest import OPERATOR_KEY


def test_malformed_json_is_a_clear_400(
    client: TestClient, operator_headers: dict[str, str]
) -> None:
    response = client.post(
        "/v1/accounts?accountId=x",
        content=b'{"displayName": ',
        headers={**operator_headers, "content-type": "application/json"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_json"
    assert error["type"] == "invalid_request_error"
    assert "JSON" in error["message"]


def test_wrong_types_name_the_field(client: TestClient, operator_headers: dict[str, str]) -> None:
    response = client.post(
        "/v1/accounts?accountId=x", json={"displayName": ["a"]}, headers=operator_headers
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "displayName"
    plan = client.post("/v1/accounts?accountId=x", json={"plan": "GOLD"}, headers=operator_headers)
    assert plan.status_code == 400
    assert plan.json()["error"]["param"] == "plan"


def test_body_cap_declared_and_streamed(
    services: Services, operator_headers: dict[str, str]
) -> None:
    from firebox.app import create_app

    services.settings.max_body_bytes = 1024
    with TestClient(create_app(services)) as small:
        declared = small.post(
            "/v1/accounts?accountId=x",
            content=b"{" + b" " * 4096 + b"}",
            headers={**operator_headers, "content-type": "application/json"},
        )
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "payload_too_large"

        def chunks() -> Iterator[bytes]:
            yield b'{"displayName": "'
            for _ in range(10):
                yield b"x" * 200
            yield b'"}'

        streamed = small.post(
            "/v1/accounts?accountId=x",
            content=chunks(),
            headers={**operator_headers, "content-type": "application/json"},
        )
        assert streamed.status_code == 413


def test_unknown_route_and_method(client: TestClient) -> None:
    missing = client.get("/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    wrong_method = client.delete("/healthz")
    assert wrong_method.status_code == 405
    assert "error" in wrong_method.json()


def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    echoed = client.get("/healthz", headers={"x-request-id": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    generated = client.get("/healthz")
    assert len(generated.headers["x-request-id"]) == 32
    error = client.get("/v1/accounts/demo")  # 401 still carries the id
    assert error.headers["x-request-id"]


def test_health_readiness_and_metrics(client: TestClient, services: Services) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    client.get("/v1/accounts/demo")
    metrics = client.get("/metrics").text
    assert (
        'firebox_http_requests_total{method="GET",route="/v1/accounts/{account}",status="401"}'
        in metrics
    )
    assert "firebox_http_request_duration_seconds_bucket" in metrics
    migrate.downgrade(services.db, "base")
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503
    assert "migrated" in not_ready.json()["database"]


def test_openapi_lists_the_control_plane(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/accounts/{account}/users/{user}/apiKeys:delete" in paths


def test_metrics_label_set_stays_bounded(client: TestClient) -> None:
    for method in ("BREW", "WHEN", "PROPFIND"):
        client.request(method, "/healthz")
    metrics = client.get("/metrics").text
    assert 'method="OTHER",route="/healthz",status="405"} 3.0' in metrics
    assert "BREW" not in metrics


def test_an_unexpected_error_says_the_connection_closes(services: Services) -> None:
    """uvicorn closes the connection after a 500 whose exception Starlette re-raises.

    Unannounced, a keep-alive client would send its next request into that closing
    socket and get a reset (httpx.ReadError); ``connection: close`` tells it not to.
    """
    from firebox.app import create_app

    app = create_app(services)

    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as http:
        answer = http.get("/boom", headers={"x-request-id": "r-1"})
    assert answer.status_code == 500
    assert answer.json()["error"]["code"] == "internal_error"
    assert answer.headers["connection"] == "close"
    assert answer.headers["x-request-id"] == "r-1"


def test_a_client_leaving_mid_body_is_not_a_server_error(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that hangs up while its body is read is logged as such, not as a 500."""
    import anyio

    from firebox.app import create_app

    app = create_app(services)
    sent: list[dict[str, object]] = []
    parts = iter(
        [
            {"type": "http.request", "body": b'{"displayName": ', "more_body": True},
            {"type": "http.disconnect"},
        ]
    )

    async def receive() -> dict[str, object]:
        return next(parts)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/inference/v1/chat/completions",
        "raw_path": b"/inference/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"authorization", b"Bearer " + OPERATOR_KEY.encode()),
            (b"content-type", b"application/json"),
            (b"content-length", b"64"),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }

    async def run() -> None:
        async with app.router.lifespan_context(app):
            await app(scope, receive, send)  # type: ignore[arg-type]

    with caplog.at_level(logging.INFO, logger="firebox.http"):
        anyio.run(run)
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 499, sent
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
