"""``UpstreamEngine`` loads LoRA adapters through vLLM's runtime API on every replica.

A tiny server answers ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``
as vLLM does, for two replicas (``/a/v1`` and ``/b/v1``) on one loopback port.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import uvicorn
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from firebox.inference.engine import UpstreamError
from firebox.inference.upstream import UpstreamEngine
from tests.catalog.conftest import Members, addon, create_model, error_of, text_base
from tests.support.api import ok


class VllmAdapters:
    """vLLM's runtime LoRA endpoints, per replica; ``fail`` maps a replica to an HTTP status."""

    def __init__(self) -> None:
        self.loaded: dict[str, dict[str, str]] = {"a": {}, "b": {}}
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.fail: dict[str, int] = {}
        self.app = Starlette(
            routes=[
                Route("/{replica}/v1/load_lora_adapter", self._load, methods=["POST"]),
                Route("/{replica}/v1/unload_lora_adapter", self._unload, methods=["POST"]),
            ]
        )

    async def _load(self, request: Request) -> Response:
        replica, body = request.path_params["replica"], await request.json()
        self.calls.append((replica, "load", body))
        if replica in self.fail:
            return _error(f"Cannot read {body['lora_path']}", self.fail[replica])
        name = body["lora_name"]
        if name in self.loaded[replica]:
            return _error(f"The lora adapter '{name}' has already been loaded.", 400)
        self.loaded[replica][name] = body["lora_path"]
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    async def _unload(self, request: Request) -> Response:
        replica, body = request.path_params["replica"], await request.json()
        self.calls.append((replica, "unload", body))
        if replica in self.fail:
            return _error("engine dead", self.fail[replica])
        name = body["lora_name"]
        if self.loaded[replica].pop(name, None) is None:
            return _error(f"The lora adapter '{name}' cannot be found.", 404)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")


def _error(message: str, status: int) -> JSONResponse:
    body = {"object": "error", "message": message, "type": "BadRequestError", "code": status}
    return JSONResponse(body, status_code=status)


@pytest.fixture(scope="module")
def vllm_server() -> Iterator[tuple[VllmAdapters, str]]:
    fake = VllmAdapters()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(fake.app, lifespan="off", log_config=None, log_level="critical")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, args=([sock],), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60  # only the failure path
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the tiny vLLM did not start"
        time.sleep(0.005)
    yield fake, f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def vllm(vllm_server: tuple[VllmAdapters, str]) -> tuple[VllmAdapters, list[str]]:
    fake, root = vllm_server
    fake.loaded = {"a": {}, "b": {}}
    fake.calls.clear()
    fake.fail.clear()
    return fake, [f"{root}/a/v1", f"{root}/b/v1"]


def run(engine: UpstreamEngine, verb: str, *args: Any) -> None:
    async def call() -> None:
        try:
            await getattr(engine, f"{verb}_adapter")(*args)
        finally:
            await engine.close()

    anyio.run(call)


def test_every_replica_loads_and_unloads(vllm: tuple[VllmAdapters, list[str]]) -> None:
    fake, urls = vllm
    run(UpstreamEngine(urls, "llama"), "load", "sql", "/srv/sql")
    assert fake.loaded == {"a": {"sql": "/srv/sql"}, "b": {"sql": "/srv/sql"}}
    assert [call[2] for call in fake.calls] == [{"lora_name": "sql", "lora_path": "/srv/sql"}] * 2
    run(UpstreamEngine(urls, "llama"), "load", "sql", "/srv/sql")  # already there: done
    run(UpstreamEngine(urls, "llama"), "unload", "sql")
    assert fake.loaded == {"a": {}, "b": {}}
    run(UpstreamEngine(urls, "llama"), "unload", "sql")  # gone already: done


def test_without_a_path_there_is_nothing_to_load(vllm: tuple[VllmAdapters, list[str]]) -> None:
    fake, urls = vllm
    run(UpstreamEngine(urls, "llama"), "load", "sql", None)
    assert fake.calls == []


def test_a_refusing_replica_is_a_502_and_the_others_undo(
    vllm: tuple[VllmAdapters, list[str]],
) -> None:
    fake, urls = vllm
    fake.fail["b"] = 500
    with pytest.raises(UpstreamError) as caught:
        run(UpstreamEngine(urls, "llama"), "load", "sql", "/srv/sql")
    error = caught.value
    assert (error.http_status, error.code) == (502, "adapter_update_failed")
    assert urls[1] in error.message and "HTTP 500: Cannot read /srv/sql" in error.message
    assert fake.loaded["a"] == {}  # loaded, then unloaded again
    assert [(r, verb) for r, verb, _ in fake.calls] == [
        ("a", "load"),
        ("b", "load"),
        ("a", "unload"),
    ]


def test_an_unload_failure_is_a_502_after_trying_every_replica(
    vllm: tuple[VllmAdapters, list[str]],
) -> None:
    fake, urls = vllm
    run(UpstreamEngine(urls, "llama"), "load", "sql", "/srv/sql")
    fake.fail["a"] = 503
    with pytest.raises(UpstreamError) as caught:
        run(UpstreamEngine(urls, "llama"), "unload", "sql")
    assert urls[0] in caught.value.message
    assert fake.loaded["b"] == {}


def test_a_server_without_the_runtime_api_or_down_is_a_502(
    vllm: tuple[VllmAdapters, list[str]],
) -> None:
    _, urls = vllm
    missing = urls[0].replace("/a/v1", "/v1")  # no such route: a plain 404
    with pytest.raises(UpstreamError, match="HTTP 404: Not Found"):
        run(UpstreamEngine([missing], "llama"), "unload", "sql")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{free.getsockname()[1]}/v1"
    with pytest.raises(UpstreamError, match="Could not load LoRA adapter 'sql'"):
        run(UpstreamEngine([down], "llama", timeout_s=2), "load", "sql", "/srv/sql")


def test_loading_through_the_api(
    client: TestClient,
    operator_headers: dict[str, str],
    members: Members,
    vllm: tuple[VllmAdapters, list[str]],
) -> None:
    fake, urls = vllm
    engine = {"type": "upstream", "urls": urls, "upstreamModel": "llama", "timeoutS": 5}
    create_model(
        client, operator_headers, "firebox", "llama", text_base(public=True, engine=engine)
    )
    base = "accounts/firebox/models/llama"
    create_model(client, operator_headers, "acme", "sql", addon(base, adapterPath="/srv/sql"))
    name = "accounts/acme/models/sql"

    fake.fail["b"] = 500
    refused = client.post(
        "/v1/accounts/acme/deployedModels", json={"model": name}, headers=members.acme_user
    )
    assert error_of(refused, 502)["code"] == "adapter_update_failed"
    assert fake.loaded == {"a": {}, "b": {}}
    listed = ok(client.get("/v1/accounts/acme/deployedModels", headers=members.acme_user))
    assert listed["deployedModels"] == []

    del fake.fail["b"]
    loaded = ok(
        client.post(
            "/v1/accounts/acme/deployedModels", json={"model": name}, headers=members.acme_user
        )
    )
    assert fake.loaded == {"a": {name: "/srv/sql"}, "b": {name: "/srv/sql"}}
    ok(client.delete(f"/v1/{loaded['name']}", headers=members.acme_user))
    assert fake.loaded == {"a": {}, "b": {}}
