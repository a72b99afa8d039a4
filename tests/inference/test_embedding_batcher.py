"""MicroBatcher scheduling with a fake encoder: merging, splitting, failures, cancel, shutdown.

The fake makes the worker's behaviour deterministic: its ``encode`` can be held
on a gate, so requests pile up behind a running pass exactly as they do behind
a real forward pass, and its vectors encode which sequence they came from.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence

import pytest

from firebox.inference.engine import EmbeddingResult
from firebox.inference.local.embedding_batcher import EncoderInput, EngineClosed, MicroBatcher


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


class FakeEncoder:
    """Token ids: one per character (or the given ids); vector: [first id, length]."""

    def __init__(self) -> None:
        self.passes: list[list[int]] = []  # lengths of the sequences in each pass
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.thread: threading.Thread | None = None

    def attach_thread(self) -> None:
        self.thread = threading.current_thread()

    def tokenize(self, inputs: Sequence[EncoderInput]) -> list[list[int]]:
        return [[ord(c) for c in i] if isinstance(i, str) else list(i) for i in inputs]

    def encode(self, sequences: Sequence[Sequence[int]]) -> list[list[float]]:
        self.entered.set()
        self.gate.wait(5)
        if any(seq[0] == ord("!") for seq in sequences):
            raise RuntimeError("poison input")
        self.passes.append([len(s) for s in sequences])
        return [[float(s[0]), float(len(s))] for s in sequences]


@pytest.fixture
def encoder() -> FakeEncoder:
    return FakeEncoder()


@pytest.fixture
def batcher(encoder: FakeEncoder) -> Iterator[MicroBatcher]:
    b = MicroBatcher(encoder, max_batch_size=8, max_batch_tokens=40)
    yield b
    encoder.gate.set()
    b.shutdown(5)


async def hold_worker(
    batcher: MicroBatcher, encoder: FakeEncoder
) -> asyncio.Future[EmbeddingResult]:
    """Start a pass and keep it running until ``encoder.gate`` is set."""
    encoder.gate.clear()
    encoder.entered.clear()
    first = batcher.submit(["a"], asyncio.get_running_loop())
    await asyncio.to_thread(encoder.entered.wait, 5)
    return first


@pytest.mark.anyio
async def test_queued_requests_share_one_pass(batcher: MicroBatcher, encoder: FakeEncoder) -> None:
    loop = asyncio.get_running_loop()
    first = await hold_worker(batcher, encoder)
    futures = [batcher.submit([f"x{i}", "yy"], loop) for i in range(3)]
    encoder.gate.set()
    await first
    results = await asyncio.gather(*futures)
    assert batcher.forward_passes == 2 == len(encoder.passes)
    assert sorted(encoder.passes[1]) == [2] * 6
    for result in results:
        assert result.vectors == [[float(ord("x")), 2.0], [float(ord("y")), 2.0]]
        assert result.prompt_tokens == 4
    assert encoder.thread is not threading.current_thread()


@pytest.mark.anyio
async def test_a_request_over_the_limits_is_split(
    batcher: MicroBatcher, encoder: FakeEncoder
) -> None:
    inputs = ["b" * n for n in (9, 1, 2, 3, 12, 4, 5, 6, 7, 8, 10, 11)]
    result = await batcher.submit(inputs, asyncio.get_running_loop())
    assert result.vectors == [[float(ord("b")), float(len(i))] for i in inputs]
    assert result.prompt_tokens == sum(len(i) for i in inputs)
    for lengths in encoder.passes:  # shortest first, within both limits
        assert len(lengths) <= 8
        assert len(lengths) * max(lengths) <= 40
    assert [n for p in encoder.passes for n in p] == sorted(len(i) for i in inputs)


@pytest.mark.anyio
async def test_a_failing_request_does_not_fail_its_neighbours(
    batcher: MicroBatcher, encoder: FakeEncoder
) -> None:
    loop = asyncio.get_running_loop()
    first = await hold_worker(batcher, encoder)
    good, bad, other = (batcher.submit(i, loop) for i in (["ok"], ["!boom"], [[7, 8]]))
    encoder.gate.set()
    await first
    assert (await good).vectors == [[float(ord("o")), 2.0]]
    assert (await other).vectors == [[7.0, 2.0]]
    with pytest.raises(RuntimeError, match="poison"):
        await bad


@pytest.mark.anyio
async def test_a_cancelled_request_is_skipped(batcher: MicroBatcher, encoder: FakeEncoder) -> None:
    loop = asyncio.get_running_loop()
    first = await hold_worker(batcher, encoder)
    cancelled = batcher.submit(["zzz"], loop)
    kept = batcher.submit(["kk"], loop)
    cancelled.cancel()
    encoder.gate.set()
    await first
    assert (await kept).prompt_tokens == 2
    assert all(3 not in lengths for lengths in encoder.passes)  # "zzz" never ran


@pytest.mark.anyio
async def test_shutdown_finishes_queued_work_then_refuses(
    batcher: MicroBatcher, encoder: FakeEncoder
) -> None:
    loop = asyncio.get_running_loop()
    first = await hold_worker(batcher, encoder)
    queued = batcher.submit(["q"], loop)
    closing = asyncio.create_task(asyncio.to_thread(batcher.shutdown, 60))
    while not batcher.closed:
        await asyncio.sleep(0.001)
    with pytest.raises(EngineClosed):
        batcher.submit(["late"], loop)
    encoder.gate.set()
    await closing
    assert (await first).prompt_tokens == 1
    assert (await queued).prompt_tokens == 1
    batcher.shutdown()  # idempotent
    assert batcher.closed
