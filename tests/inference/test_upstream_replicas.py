"""UpstreamEngine over several fake replicas: failover, ejection, balancing."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from contextlib import aclosing

import pytest

from firebox.inference.engine import EmbeddingRequest, TextDelta, UpstreamError, UsageReport
from firebox.inference.upstream import UpstreamEmbeddingEngine, UpstreamEngine
from tests.inference.test_upstream import chat_request, collect, engine_for, text_of
from tests.support.fake_upstream import FakeUpstream

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def running_pair() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    with FakeUpstream() as a, FakeUpstream() as b:
        yield a, b


@pytest.fixture
def pair(running_pair: tuple[FakeUpstream, FakeUpstream]) -> tuple[FakeUpstream, FakeUpstream]:
    for fake in running_pair:
        fake.reset()
    return running_pair


class StepClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def dead_url() -> str:
    """A loopback URL nothing listens on: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


async def test_500_is_retried_on_the_other_replica_then_upstream_error(
    pair: tuple[FakeUpstream, FakeUpstream],
) -> None:
    a, b = pair
    a.fail_status = b.fail_status = 500
    async with engine_for(a, b) as engine:
        with pytest.raises(UpstreamError, match="HTTP 500") as caught:
            await collect(engine, chat_request())
    assert caught.value.http_status == 502
    assert len(a.requests) == 1 and len(b.requests) == 1


async def test_failing_replica_is_ejected_then_readmitted(
    pair: tuple[FakeUpstream, FakeUpstream],
) -> None:
    good, bad = pair
    bad.fail_status = 503
    clock = StepClock()
    async with engine_for(good, bad, monotonic=clock, base_ejection_s=1.0) as engine:
        for _ in range(6):
            events = await collect(engine, chat_request(max_tokens=2))
            assert text_of(events) == "tok0 tok1"
        assert len(bad.requests) == 1  # tried once, then skipped
        assert engine.pool.is_ejected(bad.url)

        clock.now += 1.1  # readmitted; fails again: ejected for twice as long
        for _ in range(4):
            await collect(engine, chat_request(max_tokens=2))
        assert len(bad.requests) == 2
        clock.now += 1.1
        assert engine.pool.is_ejected(bad.url)

        bad.fail_status = None  # recovered
        clock.now += 1.0
        for _ in range(4):
            await collect(engine, chat_request(max_tokens=2))
        assert len(bad.requests) == 4  # shares the load again
        assert not engine.pool.is_ejected(bad.url)
    assert len(good.requests) == 6 + 4 + 2


async def test_refused_connection_fails_over(pair: tuple[FakeUpstream, FakeUpstream]) -> None:
    good, _ = pair
    async with engine_for(dead_url(), good) as engine:
        for _ in range(3):
            events = await collect(engine, chat_request(max_tokens=1))
            assert isinstance(events[-1], UsageReport)
    assert len(good.requests) == 3


async def test_dropped_connection_before_any_chunk_fails_over(
    pair: tuple[FakeUpstream, FakeUpstream],
) -> None:
    a, b = pair
    a.fail_close = True
    async with engine_for(a, b) as engine:
        for _ in range(2):
            assert text_of(await collect(engine, chat_request(max_tokens=1))) == "tok0"
    assert len(a.requests) == 1 and len(b.requests) == 2


async def test_a_whole_pool_down_is_still_tried(pair: tuple[FakeUpstream, FakeUpstream]) -> None:
    a, _ = pair
    a.fail_status = 500
    async with engine_for(a) as engine:
        with pytest.raises(UpstreamError):
            await collect(engine, chat_request())
        assert engine.pool.is_ejected(a.url)
        a.fail_status = None  # back before its ejection ends: tried, not refused
        assert text_of(await collect(engine, chat_request(max_tokens=1))) == "tok0"
        assert not engine.pool.is_ejected(a.url)


async def test_only_dead_replicas_is_upstream_error() -> None:
    async with engine_for(dead_url(), dead_url()) as engine:
        with pytest.raises(UpstreamError, match="connect"):
            await collect(engine, chat_request())


async def test_concurrent_requests_are_spread_evenly(
    pair: tuple[FakeUpstream, FakeUpstream],
) -> None:
    a, b = pair
    a.token_delay = b.token_delay = 0.05
    async with engine_for(a, b) as engine:
        await asyncio.gather(*(collect(engine, chat_request(max_tokens=5)) for _ in range(10)))
    assert len(a.requests) == 5 and len(b.requests) == 5
    assert a.peak_in_flight == 5 and b.peak_in_flight == 5


async def test_new_requests_go_to_the_replica_with_fewer_outstanding(
    pair: tuple[FakeUpstream, FakeUpstream],
) -> None:
    a, b = pair
    a.token_delay = b.token_delay = 0.01
    async with (
        engine_for(a, b) as engine,
        aclosing(engine.generate(chat_request(max_tokens=200))) as long,
    ):
        async for event in long:
            if isinstance(event, TextDelta) and event.text:
                break
        busy, idle = (a, b) if a.in_flight else (b, a)
        for _ in range(3):  # round robin would send one of these to the busy one
            await collect(engine, chat_request(max_tokens=2))
        assert len(busy.requests) == 1 and len(idle.requests) == 3


async def test_embeddings_fail_over(pair: tuple[FakeUpstream, FakeUpstream]) -> None:
    a, b = pair
    a.fail_status = 502
    engine = UpstreamEmbeddingEngine([a.url, b.url], "fake-model")
    try:
        for _ in range(2):
            result = await engine.embed(EmbeddingRequest("e", "fake-model", ["x y"]))
            assert result.prompt_tokens == 2
    finally:
        await engine.close()
    assert len(a.requests) == 1 and len(b.requests) == 2


def test_replica_urls_must_be_given_and_distinct() -> None:
    with pytest.raises(ValueError):
        UpstreamEngine([], "m")
    with pytest.raises(ValueError):
        UpstreamEngine(["http://h:1/v1", "http://h:1/v1"], "m")
