"""UpstreamEngine request bodies: sampling parameters, adapters, pass-through, logprobs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from firebox.inference.engine import GenerationRequest, SamplingParams, TextDelta
from firebox.inference.upstream import UpstreamEngine
from tests.inference.test_upstream import chat_request, collect, completion_request, engine_for
from tests.support.fake_upstream import FakeUpstream

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def running_upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(adapters=("my-lora",)) as fake:
        yield fake


@pytest.fixture
def upstream(running_upstream: FakeUpstream) -> FakeUpstream:
    running_upstream.reset()
    return running_upstream


async def test_adapter_name_is_sent_as_the_model(upstream: FakeUpstream) -> None:
    async with engine_for(upstream) as engine:
        await collect(engine, chat_request(adapter="my-lora", max_tokens=1))
        await collect(engine, chat_request(max_tokens=1))
    assert [r["model"] for r in upstream.requests] == ["my-lora", "fake-model"]


async def test_chat_sampling_params_are_mapped(upstream: FakeUpstream) -> None:
    params = SamplingParams(
        max_tokens=2,
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        min_p=0.05,
        presence_penalty=0.1,
        frequency_penalty=0.2,
        repetition_penalty=1.1,
        stop=("x", "y"),
        seed=7,
        logprobs=True,
        top_logprobs=2,
        n=1,
    )
    request = GenerationRequest("r", "fake-model", "chat", params, messages=[{"role": "user"}])
    async with engine_for(upstream) as engine:
        await collect(engine, request)
    body = upstream.requests[-1]
    assert {k: v for k, v in body.items() if k not in ("messages", "stream_options")} == {
        "model": "fake-model",
        "stream": True,
        "max_tokens": 2,
        "temperature": 0.5,
        "top_p": 0.9,
        "n": 1,
        "stop": ["x", "y"],
        "seed": 7,
        "top_k": 40,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "logprobs": True,
        "top_logprobs": 2,
    }


async def test_defaults_leave_the_extras_out(upstream: FakeUpstream) -> None:
    async with engine_for(upstream) as engine:
        await collect(engine, chat_request())
    body = upstream.requests[-1]
    assert body["temperature"] == 1.0 and body["top_p"] == 1.0 and body["n"] == 1
    absent = {"max_tokens", "top_k", "min_p", "repetition_penalty", "presence_penalty"}
    absent |= {"frequency_penalty", "seed", "stop", "logprobs", "top_logprobs", "echo"}
    assert not absent & body.keys()


async def test_completion_logprobs_is_an_int_and_echo_is_sent(upstream: FakeUpstream) -> None:
    async with engine_for(upstream) as engine:
        events = await collect(
            engine, completion_request(max_tokens=2, logprobs=True, top_logprobs=3, echo=True)
        )
        await collect(engine, completion_request(max_tokens=1, logprobs=True))
    first, second = upstream.requests
    assert first["logprobs"] == 3 and first["echo"] is True
    assert second["logprobs"] == 0 and "echo" not in second
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert deltas[0].text == "once upontok0"
    assert deltas[1].logprobs is not None and deltas[1].logprobs["tokens"] == [" tok1"]
    assert deltas[1].token_count == 1


async def test_chat_logprobs_are_passed_on_as_is(upstream: FakeUpstream) -> None:
    async with engine_for(upstream) as engine:
        events = await collect(engine, chat_request(max_tokens=2, logprobs=True, top_logprobs=1))
    delta = next(e for e in events if isinstance(e, TextDelta) and e.text == "tok0")
    assert delta.logprobs is not None
    [entry] = delta.logprobs["content"]
    assert entry["token"] == "tok0" and entry["top_logprobs"][0]["logprob"] == -0.25
    assert delta.token_count == 1


async def test_extra_params_pass_through_verbatim(upstream: FakeUpstream) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    extra = {
        "tools": tools,
        "tool_choice": "required",
        "response_format": {"type": "json_object"},
        "logit_bias": {"42": -100},
        "parallel_tool_calls": False,
        "stream": False,  # the engine's own fields cannot be overridden
        "model": "other",
    }
    async with engine_for(upstream) as engine:
        await collect(engine, chat_request(extra=extra))
    body = upstream.requests[-1]
    for key in ("tools", "tool_choice", "response_format", "logit_bias", "parallel_tool_calls"):
        assert body[key] == extra[key]
    assert body["stream"] is True and body["model"] == "fake-model"


def test_capabilities() -> None:
    engine = UpstreamEngine(["http://127.0.0.1:1/v1"], "m")
    caps = engine.capabilities
    assert {"logprobs", "top_logprobs", "echo", "seed", "stop", "n", "tools"} <= caps.params
    assert caps.passthrough == {
        "tools",
        "tool_choice",
        "response_format",
        "logit_bias",
        "parallel_tool_calls",
    }
    assert caps.passthrough <= caps.params
    assert caps.vision
