"""Scheduling behaviour of the local engine: cancellation, prefix cache, preemption, closing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from firebox.errors import FailedPrecondition
from firebox.inference.engine import PromptInfo, TextDelta
from firebox.inference.local.lora_files import AdapterError
from firebox.inference.local.scheduler import EngineClosed
from firebox.inference.local.stats import EngineStats
from firebox.inference.local.text_engine import LocalTextEngine
from tests.inference.test_local_support import (
    ReferenceModels,
    TokenIds,
    assert_matches_reference,
    build_lora,
    build_model,
    collect,
    completion,
    engine_steps,
    prompts,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model(tmp_path_factory.mktemp("local-sched") / "base", seed=7)


@pytest.fixture(scope="module")
def engine(folder: Path) -> Iterator[LocalTextEngine]:
    engine = LocalTextEngine.load(folder, device="cpu", kv_cache_tokens=2048, max_batch_tokens=64)
    yield engine
    engine.shutdown()


async def _settled(engine: LocalTextEngine) -> EngineStats:
    """Stats once the scheduler has nothing running or waiting."""
    deadline = time.monotonic() + 60  # only the failure path
    while True:
        stats = engine.stats()
        if (stats.running == 0 and stats.waiting == 0) or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.01)


@pytest.mark.anyio
async def test_cancelled_request_frees_its_kv_blocks(engine: LocalTextEngine) -> None:
    before = await _settled(engine)
    stream = engine.generate(completion(prompts(1, 400, seed=1, lengths=(40,))[0], max_tokens=300))
    deltas = 0
    async for event in stream:
        if isinstance(event, TextDelta):
            deltas += 1
            if deltas == 5:
                break
    during = engine.stats()
    assert during.blocks_used > before.blocks_used
    await stream.aclose()  # the client went away
    after = await _settled(engine)
    assert after.running == 0
    assert after.blocks_used == before.blocks_used == 0
    # its full prompt blocks stay reusable in the prefix cache; everything else is free again
    assert after.blocks_free + after.blocks_cached == after.blocks_total


@pytest.mark.anyio
async def test_cancelling_the_task_also_frees_the_blocks(engine: LocalTextEngine) -> None:
    async def consume() -> None:
        async for _ in engine.generate(completion([5, 6, 7, 8], max_tokens=400)):
            pass

    task = asyncio.create_task(consume())
    while engine.stats().running == 0:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    after = await _settled(engine)
    assert after.running == 0 and after.blocks_used == 0


@pytest.mark.anyio
async def test_prefix_cache_reports_cached_tokens_and_keeps_outputs(
    engine: LocalTextEngine, folder: Path
) -> None:
    shared = prompts(1, 400, seed=2, lengths=(53,))[0]
    first = [*shared, 100, 101, 102]
    second = [*shared, 200, 201]
    block = engine.stats().block_size
    cold = await collect(engine.generate(completion(first, max_tokens=8)))
    assert cold.prompt.cached_tokens == 0
    computed = engine.stats().prompt_tokens_computed
    warm = await collect(engine.generate(completion(second, max_tokens=8)))
    expected = (len(shared) // block) * block  # 48: three full blocks of the shared 53 tokens
    assert warm.prompt == PromptInfo(prompt_tokens=len(second), cached_tokens=expected)
    assert warm.usage.cached_tokens == expected
    assert engine.stats().prompt_tokens_computed - computed == len(second) - expected
    # same output as with the cache disabled, and as transformers
    uncached = await collect(
        engine.generate(completion(second, max_tokens=8, prompt_cache_max_len=0))
    )
    assert uncached.prompt.cached_tokens == 0
    assert uncached.texts == warm.texts
    reference = ReferenceModels(folder).greedy(second, 8)
    warm_lp = await collect(engine.generate(completion(second, max_tokens=8, logprobs=True)))
    assert_matches_reference(*engine_steps(warm_lp, TokenIds(folder)), reference)
    # the cap: at most 20 prompt tokens from the cache -> one block
    capped = await collect(
        engine.generate(completion(second, max_tokens=2, prompt_cache_max_len=20))
    )
    assert capped.prompt.cached_tokens == block
    # the very same prompt again: everything but its last partial block/token is reused
    again = await collect(engine.generate(completion(second, max_tokens=2)))
    assert again.prompt.cached_tokens == expected


@pytest.mark.anyio
async def test_prefix_cache_is_per_adapter(folder: Path, tmp_path: Path) -> None:
    engine = LocalTextEngine.load(folder, device="cpu", kv_cache_tokens=1024, max_batch_tokens=64)
    try:
        engine.register_adapter("a", build_lora(folder, tmp_path / "a", seed=4))
        prompt = prompts(1, 400, seed=3, lengths=(40,))[0]
        await collect(engine.generate(completion(prompt, max_tokens=2)))
        on_adapter = await collect(engine.generate(completion(prompt, adapter="a", max_tokens=2)))
        assert on_adapter.prompt.cached_tokens == 0  # the base model's keys are not the add-on's
        again = await collect(engine.generate(completion(prompt, adapter="a", max_tokens=2)))
        assert again.prompt.cached_tokens == 32
    finally:
        engine.shutdown()


@pytest.mark.anyio
async def test_an_add_on_that_fails_to_load_fails_its_request_only(
    folder: Path, tmp_path: Path
) -> None:
    engine = LocalTextEngine.load(folder, device="cpu", kv_cache_tokens=512)
    try:
        adapter = build_lora(folder, tmp_path / "broken", seed=9)
        engine.register_adapter("broken", adapter)
        (adapter / "adapter_model.safetensors").write_bytes(b"not safetensors")
        with pytest.raises(FailedPrecondition, match="broken"):
            await collect(engine.generate(completion([5, 6, 7], adapter="broken", max_tokens=2)))
        ok = await collect(engine.generate(completion([5, 6, 7], max_tokens=2)))
        assert ok.usage.completion_tokens == 2
        assert (await _settled(engine)).blocks_used == 0
        with pytest.raises(AdapterError):
            engine.register_adapter("missing", tmp_path / "nowhere")
    finally:
        engine.shutdown()


@pytest.mark.anyio
async def test_small_cache_preempts_by_recompute_and_outputs_stay_exact(folder: Path) -> None:
    # 10 blocks of 16 tokens; six requests of up to ~70 + 40 tokens cannot all fit at once
    engine = LocalTextEngine.load(folder, device="cpu", kv_cache_tokens=160, max_batch_tokens=48)
    try:
        jobs = prompts(6, 400, seed=4, lengths=(10, 30, 50, 20, 60, 5))
        requests = [
            completion(p, request_id=str(i), max_tokens=40, logprobs=True)
            for i, p in enumerate(jobs)
        ]
        results = await asyncio.gather(*(collect(engine.generate(r)) for r in requests))
        stats = await _settled(engine)
        assert stats.preemptions > 0
        assert stats.blocks_used == 0
        refs, token_ids = ReferenceModels(folder), TokenIds(folder)
        for prompt, result in zip(jobs, results, strict=True):
            assert result.usage.completion_tokens == 40 or result.finish[0] == "stop"
            assert_matches_reference(*engine_steps(result, token_ids), refs.greedy(prompt, 40))
        # a request that could never fit the cache is refused up front
        with pytest.raises(Exception, match="context length"):
            await collect(engine.generate(completion(jobs[0], max_tokens=400)))
    finally:
        engine.shutdown()


@pytest.mark.anyio
async def test_n_choices_share_the_prompt_blocks(engine: LocalTextEngine) -> None:
    prompt = prompts(1, 400, seed=5, lengths=(37,))[0]
    result = await collect(
        engine.generate(completion(prompt, max_tokens=6, n=3, temperature=1.0, seed=1))
    )
    assert set(result.finish) == {0, 1, 2}
    assert result.usage.prompt_tokens == 37
    assert result.usage.completion_tokens == sum(
        d.token_count for ds in result.deltas.values() for d in ds
    )
    assert (await _settled(engine)).blocks_used == 0


@pytest.mark.anyio
async def test_close_fails_unfinished_requests_and_refuses_new_ones(folder: Path) -> None:
    engine = LocalTextEngine.load(folder, device="cpu", kv_cache_tokens=512)
    stream = engine.generate(completion([5, 6, 7], max_tokens=400))
    await stream.__anext__()
    await engine.close()
    with pytest.raises(EngineClosed):
        async for _ in stream:
            pass
    with pytest.raises(EngineClosed):
        await collect(engine.generate(completion([5], max_tokens=1)))
