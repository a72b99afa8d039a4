"""UpstreamEngine against the fake vLLM server over loopback: streams, usage, errors, cancel."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

import pytest

from firebox.errors import InvalidArgument, RateLimited
from firebox.inference.engine import (
    ChoiceFinished,
    EmbeddingRequest,
    GenerationEvent,
    GenerationRequest,
    SamplingParams,
    TextDelta,
    UpstreamError,
    UpstreamTimeout,
    UsageReport,
)
from firebox.inference.upstream import UpstreamEmbeddingEngine, UpstreamEngine
from tests.support.fake_upstream import FakeUpstream

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def running_upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(adapters=("my-lora",), context_length=256) as fake:
        yield fake


@pytest.fixture
def upstream(running_upstream: FakeUpstream) -> FakeUpstream:
    running_upstream.reset()
    return running_upstream


# -- helpers (the replica tests import them) ---------------------------------


def chat_request(
    content: str = "hello there world",
    *,
    adapter: str | None = None,
    extra: dict[str, Any] | None = None,
    **params: Any,
) -> GenerationRequest:
    return GenerationRequest(
        request_id="req-1",
        model="fake-model",
        kind="chat",
        params=SamplingParams(**params),
        messages=[{"role": "user", "content": content}],
        adapter=adapter,
        extra=extra or {},
    )


def completion_request(prompt: str | list[int] = "once upon", **params: Any) -> GenerationRequest:
    return GenerationRequest(
        request_id="req-2",
        model="fake-model",
        kind="completion",
        params=SamplingParams(**params),
        prompt=prompt,
    )


@asynccontextmanager
async def engine_for(*fakes: FakeUpstream | str, **options: Any) -> AsyncIterator[UpstreamEngine]:
    urls = [f if isinstance(f, str) else f.url for f in fakes]
    engine = UpstreamEngine(urls, "fake-model", **options)
    try:
        yield engine
    finally:
        await engine.close()


async def collect(engine: UpstreamEngine, request: GenerationRequest) -> list[GenerationEvent]:
    return [event async for event in engine.generate(request)]


def text_of(events: list[GenerationEvent], index: int = 0) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta) and e.index == index)


async def wait_until(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll ``predicate``; the deadline is only the failure path (a loaded machine is slow)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


# -- streaming ---------------------------------------------------------------


async def test_chat_streams_events_in_order_then_usage(upstream: FakeUpstream) -> None:
    async with engine_for(upstream) as engine:
        events = await collect(engine, chat_request(max_tokens=3))
    assert events == [
        TextDelta(index=0, text="", role="assistant"),
        TextDelta(index=0, text="tok0"),
        TextDelta(index=0, text=" tok1"),
        TextDelta(index=0, text=" tok2"),
        ChoiceFinished(index=0, finish_reason="length"),
        UsageReport(prompt_tokens=3, completion_tokens=3),
    ]
    body = upstream.requests[-1]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "user", "content": "hello there world"}]


async def test_completion_streams_text(upstream: FakeUpstream) -> None:
    async with engine_for(upstream) as engine:
        events = await collect(engine, completion_request())
    assert text_of(events) == " ".join(f"tok{i}" for i in range(16))
    assert events[-2] == ChoiceFinished(index=0, finish_reason="stop")
    assert events[-1] == UsageReport(prompt_tokens=2, completion_tokens=16)
    assert upstream.requests[-1]["prompt"] == "once upon"


async def test_first_event_arrives_while_the_upstream_is_still_generating(
    upstream: FakeUpstream,
) -> None:
    # The upstream stalls after its first token until the client leaves: the first event can
    # only have arrived while it was still generating, however slow the machine.
    upstream.hold_after_tokens = 1
    async with (
        engine_for(upstream) as engine,
        aclosing(engine.generate(chat_request(max_tokens=10))) as events,
    ):
        async for event in events:
            if isinstance(event, TextDelta) and event.text:
                still_generating = upstream.in_flight == 1
                break
    assert still_generating


async def test_connections_are_kept_alive_between_requests(upstream: FakeUpstream) -> None:
    async with engine_for(upstream) as engine:
        for _ in range(5):
            await collect(engine, chat_request(max_tokens=2))
    assert len(upstream.connections) == 1


async def test_n_choices_and_stop_strings(upstream: FakeUpstream) -> None:
    async with engine_for(upstream) as engine:
        events = await collect(engine, chat_request(n=2, stop=("tok2",)))
    for index in (0, 1):
        assert text_of(events, index) == "tok0 tok1 "
        assert ChoiceFinished(index=index, finish_reason="stop") in events
    assert events[-1] == UsageReport(prompt_tokens=3, completion_tokens=6)


# -- usage when the upstream reports none --------------------------------------


async def test_usage_counted_with_the_tokenizer_when_upstream_omits_it(
    upstream: FakeUpstream,
) -> None:
    upstream.omit_usage = True
    words: Callable[[str], int] = lambda text: len(text.split())  # noqa: E731
    async with engine_for(upstream, count_tokens=words) as engine:
        events = await collect(engine, chat_request("one two three four", max_tokens=5, n=2))
        ids = await collect(engine, completion_request([1, 2, 3, 4, 5, 6], max_tokens=2))
    assert events[-1] == UsageReport(prompt_tokens=4, completion_tokens=10)
    assert ids[-1] == UsageReport(prompt_tokens=6, completion_tokens=2)


async def test_usage_estimated_without_tokenizer_and_warned_once(
    upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.omit_usage = True
    prompt = "héllo wörld, this is a prompt"
    async with engine_for(upstream) as engine:
        with caplog.at_level(logging.WARNING, logger="firebox.inference.upstream"):
            first = await collect(engine, chat_request(prompt, max_tokens=7))
            second = await collect(engine, chat_request(prompt, max_tokens=3))
    expected_prompt = math.ceil(len(prompt.encode()) / 4)
    assert first[-1] == UsageReport(prompt_tokens=expected_prompt, completion_tokens=7)
    assert second[-1] == UsageReport(prompt_tokens=expected_prompt, completion_tokens=3)
    warnings = [r for r in caplog.records if "estimated" in r.getMessage()]
    assert len(warnings) == 1


# -- errors --------------------------------------------------------------------


async def test_context_length_400_reaches_the_user_as_invalid_argument(
    upstream: FakeUpstream,
) -> None:
    async with engine_for(upstream) as engine:
        with pytest.raises(InvalidArgument) as caught:
            await collect(engine, chat_request("word " * 300, max_tokens=10))
    assert caught.value.code == "upstream_rejected"
    assert caught.value.http_status == 400
    assert "maximum context length is 256 tokens" in caught.value.message
    assert len(upstream.requests) == 1  # a 4xx is not retried


async def test_unknown_adapter_is_invalid_argument_with_the_upstream_message(
    upstream: FakeUpstream,
) -> None:
    async with engine_for(upstream) as engine:
        with pytest.raises(InvalidArgument, match="`nope` does not exist"):
            await collect(engine, chat_request(adapter="nope"))


async def test_429_is_rate_limited(upstream: FakeUpstream) -> None:
    upstream.fail_status = 429
    async with engine_for(upstream) as engine:
        with pytest.raises(RateLimited) as caught:
            await collect(engine, chat_request())
    assert caught.value.code == "upstream_overloaded"


async def test_read_timeout_is_upstream_timeout(upstream: FakeUpstream) -> None:
    # The upstream sends its role chunk, then nothing until the client leaves: only the
    # engine's read timeout can end the call (without one the test would hang).
    upstream.hold_after_tokens = 0
    async with engine_for(upstream, timeout_s=0.2) as engine:
        with pytest.raises(UpstreamTimeout):
            await collect(engine, chat_request())


async def test_connection_dropped_mid_stream_is_upstream_error(upstream: FakeUpstream) -> None:
    upstream.close_after_tokens = 2
    received: list[GenerationEvent] = []
    async with engine_for(upstream) as engine:
        with pytest.raises(UpstreamError):
            async for event in engine.generate(chat_request()):
                received.append(event)
    assert text_of(received) == "tok0 tok1"
    assert len(upstream.requests) == 1


# -- cancellation --------------------------------------------------------------


async def test_closing_the_stream_disconnects_from_the_upstream(upstream: FakeUpstream) -> None:
    upstream.hold_after_tokens = 2  # never ends by itself: a disconnect is the client's doing
    async with engine_for(upstream) as engine:
        stream = engine.generate(chat_request(max_tokens=200))
        async for event in stream:
            if isinstance(event, TextDelta) and event.text == " tok1":
                break
        await stream.aclose()
        await wait_until(lambda: upstream.disconnects == 1)
        await wait_until(lambda: upstream.in_flight == 0)
        assert engine.pool.in_flight(upstream.url) == 0
        # the engine stays usable
        assert text_of(await collect(engine, chat_request(max_tokens=2))) == "tok0 tok1"


async def test_cancelling_the_consumer_task_disconnects_from_the_upstream(
    upstream: FakeUpstream,
) -> None:
    upstream.hold_after_tokens = 2  # never ends by itself: a disconnect is the client's doing
    started = asyncio.Event()

    async def consume(engine: UpstreamEngine) -> None:
        async for event in engine.generate(chat_request(max_tokens=200)):
            if isinstance(event, TextDelta) and event.text:
                started.set()

    async with engine_for(upstream) as engine:
        task = asyncio.create_task(consume(engine))
        await asyncio.wait_for(started.wait(), 60)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until(lambda: upstream.disconnects == 1)
        assert engine.pool.in_flight(upstream.url) == 0


# -- embeddings ----------------------------------------------------------------


async def test_embeddings(upstream: FakeUpstream) -> None:
    engine = UpstreamEmbeddingEngine([upstream.url], "fake-model")
    try:
        result = await engine.embed(EmbeddingRequest("e", "fake-model", ["a b c", "d e"]))
        sized = await engine.embed(EmbeddingRequest("e", "fake-model", [[1, 2, 3]], dimensions=4))
    finally:
        await engine.close()
    assert len(result.vectors) == 2 and all(len(v) == 8 for v in result.vectors)
    assert result.vectors[0] != result.vectors[1]
    assert result.prompt_tokens == 5
    assert len(sized.vectors[0]) == 4 and sized.prompt_tokens == 3
    assert upstream.requests[0]["encoding_format"] == "float"
    assert upstream.requests[1]["dimensions"] == 4


async def test_embeddings_map_upstream_errors(upstream: FakeUpstream) -> None:
    engine = UpstreamEmbeddingEngine([upstream.url], "unknown-model")
    try:
        with pytest.raises(InvalidArgument, match="does not exist"):
            await engine.embed(EmbeddingRequest("e", "unknown-model", ["x"]))
        upstream.fail_status = 503
        with pytest.raises(UpstreamError, match="HTTP 503"):
            await engine.embed(EmbeddingRequest("e", "unknown-model", ["x"]))
    finally:
        await engine.close()
