"""The OpenAI side of a Ray Serve replica, driven by the gateway's own upstream engine.

``ReplicaServer`` (what ``ray_app``'s replicas answer) is served here by
uvicorn on a loopback port, without Ray, and called by exactly what the
gateway uses for a deployment: ``DeploymentEngine`` over ``UpstreamEngine``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from firebox.deployments.drivers.ray_serve import DeploymentEngine
from firebox.deployments.drivers.replica_server import ReplicaServer
from firebox.errors import FailedPrecondition, InvalidArgument, ServiceUnavailable
from firebox.inference.engine import (
    ChoiceFinished,
    EngineCapabilities,
    GenerationEvent,
    GenerationRequest,
    PromptInfo,
    SamplingParams,
    TextDelta,
    UsageReport,
)
from firebox.inference.upstream import UpstreamEngine

pytestmark = pytest.mark.anyio

MODEL = "accounts/firebox/models/firebox-tiny"
ADDON = "accounts/acme/models/shouty"
DEPLOYMENT = "accounts/acme/deployments/d1"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class WordEngine:
    """Answers ``max_tokens`` words ``w0 w1 ...``; an add-on answers in upper case."""

    capabilities = EngineCapabilities(params=frozenset({"max_tokens"}))

    def __init__(self) -> None:
        self.requests: list[GenerationRequest] = []
        self.gate: threading.Event | None = None  # answers wait for it after their first word

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        self.requests.append(request)
        if request.params.max_tokens == 0:
            raise InvalidArgument("max_tokens must be positive", param="max_tokens")
        count = request.params.max_tokens or 3
        yield PromptInfo(prompt_tokens=5)
        for i in range(count):
            while i > 0 and self.gate is not None and not self.gate.is_set():
                await asyncio.sleep(0.01)  # the server's loop, not the test's: poll
            word = f"w{i} "
            yield TextDelta(index=0, text=word.upper() if request.adapter else word)
        yield ChoiceFinished(index=0, finish_reason="length")
        yield UsageReport(prompt_tokens=5, completion_tokens=count)

    async def close(self) -> None:
        pass


@pytest.fixture
def replica() -> Iterator[tuple[str, WordEngine]]:
    """A ``ReplicaServer`` under ``/acme/d1`` (a Serve route prefix) on a free port."""
    engine = WordEngine()
    server = ReplicaServer(engine, MODEL, {ADDON}, aliases=frozenset({DEPLOYMENT}))

    async def handle(request: Request) -> Response:
        if request.url.path.startswith("/gone"):  # what the Serve proxy says of an unknown route
            return Response(b"Path '/gone' not found. Ping /-/routes for the routes.", 404)
        return await server.handle(request)

    app = Starlette(routes=[Route("/{path:path}", handle, methods=["GET", "POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, log_level="critical", lifespan="off")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, args=([sock],), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not uv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/acme/d1", engine
    finally:
        uv.should_exit = True
        thread.join(timeout=10)


def request(*, stream: bool, adapter: str | None = None, max_tokens: int = 3) -> GenerationRequest:
    return GenerationRequest(
        request_id="r1",
        model=MODEL,
        kind="chat",
        params=SamplingParams(max_tokens=max_tokens, temperature=0.0),
        messages=[{"role": "user", "content": "hi"}],
        adapter=adapter,
        stream=stream,
    )


def deployment_engine(url: str, **kw: object) -> DeploymentEngine:
    defaults: dict[str, object] = {
        "max_in_flight": 4,
        "retry_after_s": 3,
        "blocked": lambda: None,
        "start_timeout_s": 2.0,
    }
    defaults.update(kw)
    return DeploymentEngine(
        "accounts/acme/deployments/d1",
        UpstreamEngine([f"{url}/v1"], MODEL),
        **defaults,  # type: ignore[arg-type]
    )


async def text_of(engine: DeploymentEngine, req: GenerationRequest) -> tuple[str, list[object]]:
    events = [event async for event in engine.generate(req)]
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    return text, events


@pytest.mark.parametrize("stream", [True, False])
async def test_chat_through_the_replica_streaming_or_not(
    replica: tuple[str, WordEngine], stream: bool
) -> None:
    url, word_engine = replica
    engine = deployment_engine(url)
    try:
        text, events = await text_of(engine, request(stream=stream))
        assert text == "w0 w1 w2 "
        assert isinstance(events[-1], UsageReport)
        assert events[-1].prompt_tokens == 5 and events[-1].completion_tokens == 3
        assert any(isinstance(e, ChoiceFinished) and e.finish_reason == "length" for e in events)
        assert word_engine.requests[-1].adapter is None
        assert word_engine.requests[-1].stream is stream
        assert engine.in_flight == 0
    finally:
        await engine.close()


async def test_the_deployment_name_is_the_base_model(replica: tuple[str, WordEngine]) -> None:
    url, word_engine = replica
    engine = DeploymentEngine(
        DEPLOYMENT,
        UpstreamEngine([f"{url}/v1"], DEPLOYMENT),
        max_in_flight=4,
        retry_after_s=1,
        blocked=lambda: None,
    )
    try:
        text, _ = await text_of(engine, request(stream=False))
        assert text == "w0 w1 w2 " and word_engine.requests[-1].adapter is None
    finally:
        await engine.close()


async def test_an_addon_on_the_deployment_and_one_that_is_not(
    replica: tuple[str, WordEngine],
) -> None:
    url, word_engine = replica
    engine = deployment_engine(url)
    try:
        text, _ = await text_of(engine, request(stream=True, adapter=ADDON))
        assert text == "W0 W1 W2 " and word_engine.requests[-1].adapter == ADDON
        with pytest.raises(InvalidArgument) as refused:  # the replica's 404, as the user's 400
            await text_of(engine, request(stream=True, adapter="accounts/acme/models/other"))
        assert "not placed on this deployment" in refused.value.message
    finally:
        await engine.close()


async def test_an_engine_error_reaches_the_gateway_as_the_engine_said(
    replica: tuple[str, WordEngine],
) -> None:
    url, _ = replica
    engine = deployment_engine(url)
    try:
        with pytest.raises(InvalidArgument) as refused:
            await text_of(engine, request(stream=True, max_tokens=0))
        assert "max_tokens must be positive" in refused.value.message
    finally:
        await engine.close()


async def test_other_routes_and_bad_bodies(replica: tuple[str, WordEngine]) -> None:
    url, _ = replica
    async with httpx.AsyncClient() as client:
        models = (await client.get(f"{url}/v1/models")).json()
        assert [m["id"] for m in models["data"]] == [MODEL, ADDON]
        bad = await client.post(f"{url}/v1/chat/completions", content=b"{nope")
        assert bad.status_code == 400 and bad.json()["error"]["message"]
        missing = await client.post(f"{url}/v1/chat/completions", json={"model": MODEL})
        assert missing.status_code == 400 and missing.json()["error"]["param"] == "messages"
        assert (await client.post(f"{url}/v1/elsewhere", json={})).status_code == 404


async def test_the_bounded_queue_answers_503_with_retry_after(
    replica: tuple[str, WordEngine],
) -> None:
    url, word_engine = replica
    word_engine.gate = threading.Event()
    engine = deployment_engine(url, max_in_flight=2)
    held = [engine.generate(request(stream=True)) for _ in range(2)]
    try:
        for hold in held:
            await hold.__anext__()  # type: ignore[attr-defined]  # admitted, waiting on the gate
        assert engine.in_flight == 2
        with pytest.raises(ServiceUnavailable) as full:
            await text_of(engine, request(stream=True))
        assert full.value.http_status == 503 and full.value.code == "deployment_queue_full"
        assert full.value.headers == {"Retry-After": "3"}
    finally:
        word_engine.gate.set()
        for hold in held:
            await hold.aclose()  # type: ignore[attr-defined]
        await engine.close()
    assert engine.in_flight == 0


async def test_a_deployment_without_a_route_yet_is_waited_for_then_503(
    replica: tuple[str, WordEngine],
) -> None:
    """The Serve proxy's 404 while an application deploys: retried, then a clear 503."""
    url, word_engine = replica
    gone = deployment_engine(url.replace("/acme/d1", "/gone"), start_timeout_s=0.5)
    try:
        with pytest.raises(ServiceUnavailable) as starting:
            await text_of(gone, request(stream=True))
        assert starting.value.code == "deployment_starting"
        assert "Retry-After" in starting.value.headers
        assert word_engine.requests == [] and gone.in_flight == 0
    finally:
        await gone.close()


async def test_blocked_deployments_are_refused_before_any_call() -> None:
    def failed() -> str | None:
        raise FailedPrecondition("cannot run", code="deployment_failed")

    scaled = deployment_engine("http://127.0.0.1:9", blocked=lambda: "scaled to zero")
    broken = deployment_engine("http://127.0.0.1:9", blocked=failed)
    try:
        with pytest.raises(ServiceUnavailable) as zero:
            await text_of(scaled, request(stream=True))
        assert zero.value.code == "deployment_unavailable" and "Retry-After" in zero.value.headers
        with pytest.raises(FailedPrecondition):
            await text_of(broken, request(stream=True))
    finally:
        await scaled.close()
        await broken.close()
