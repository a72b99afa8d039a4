"""Fault isolation in the local engine: one request that cannot be sampled ends alone.

The fault is a real request, not a patched engine: sampling parameters the
API refuses (``frequency_penalty=inf``, ``temperature=nan``) but that reach
the engine when a caller bypasses the gateway. With a frequency penalty of
infinity the first token is drawn normally and the second step's
distribution is NaN (``0 * inf``): the request fails mid-answer, after
producing output, while sharing every step with the others.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from firebox.inference.engine import (
    GenerationEvent,
    GenerationFailed,
    GenerationRequest,
    SamplingParams,
    TextDelta,
    UsageReport,
)
from firebox.inference.local.sampling import RowSampler, UnsampleableRow, make_generator, sample
from firebox.inference.local.text_engine import LocalTextEngine
from tests.inference.test_local_support import (
    TokenIds,
    build_model,
    collect,
    completion,
    engine_steps,
    prompts,
)

MAX_TOKENS = 12


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model(tmp_path_factory.mktemp("local-faults") / "base", seed=11)


@pytest.fixture(scope="module")
def engine(folder: Path) -> Iterator[LocalTextEngine]:
    # no end-of-sequence ids: every good request runs to max_tokens, so all of them
    # are still decoding when the poisoned one fails
    engine = LocalTextEngine.load(
        folder,
        device="cpu",
        kv_cache_tokens=4096,
        max_batch_tokens=512,
        num_threads=1,
        eos_token_ids=(),
    )
    yield engine
    engine.shutdown()


@dataclass
class Outcome:
    deltas: list[TextDelta] = field(default_factory=list)
    usage: UsageReport | None = None
    error: BaseException | None = None


async def _outcome(stream: AsyncIterator[GenerationEvent]) -> Outcome:
    out = Outcome()
    try:
        async for event in stream:
            if isinstance(event, TextDelta):
                out.deltas.append(event)
            elif isinstance(event, UsageReport):
                out.usage = event
    except Exception as exc:
        out.error = exc
    return out


def _good(prompt: list[int], rid: str) -> GenerationRequest:
    # greedy, logprobs to read back the token ids, no prefix cache: the crowd
    # computes exactly what a solo run computes
    return completion(
        prompt, request_id=rid, max_tokens=MAX_TOKENS, logprobs=True, prompt_cache_max_len=0
    )


async def _together(engine: LocalTextEngine, requests: list[GenerationRequest]) -> list[Outcome]:
    """Run ``requests`` so that they all join the engine's first step together.

    The scheduler thread takes its inbox under ``_cond``; holding it while the
    requests submit (the lock is re-entrant, and the submits run on this
    thread) makes the scheduler admit all of them at once.
    """
    scheduler = engine._scheduler
    with scheduler._cond:
        tasks = [asyncio.ensure_future(_outcome(engine.generate(r))) for r in requests]
        while len(scheduler._inbox) < len(requests):
            await asyncio.sleep(0)
    return list(await asyncio.gather(*tasks))


@pytest.mark.anyio
async def test_one_unsampleable_request_fails_alone_and_the_batch_is_unaffected(
    engine: LocalTextEngine, folder: Path
) -> None:
    token_ids = TokenIds(folder)
    good = prompts(7, engine.config.vocab_size, seed=3)
    solo = []
    for i, prompt in enumerate(good):
        result = await collect(engine.generate(_good(prompt, f"solo-{i}")))
        solo.append(engine_steps(result, token_ids)[0])
    assert all(len(tokens) == MAX_TOKENS for tokens in solo)

    # 8 streams from 3 tenants (the engine knows no accounts; the ids say whose)
    tenants = ["acme", "bolt", "cirrus"]
    requests = [_good(p, f"{tenants[i % 3]}-{i}") for i, p in enumerate(good)]
    poisoned = completion(
        good[0],
        request_id="cirrus-poisoned",
        max_tokens=MAX_TOKENS,
        temperature=1.0,
        seed=5,
        frequency_penalty=math.inf,
        prompt_cache_max_len=0,
    )
    requests.insert(4, poisoned)
    outcomes = await _together(engine, requests)
    bad = outcomes.pop(4)

    assert isinstance(bad.error, GenerationFailed)
    assert bad.error.http_status == 500
    assert bad.error.code == "generation_failed"
    # it produced one token before its distribution went NaN, and reports it for billing
    assert bad.usage is not None
    assert bad.usage.completion_tokens == 1
    assert bad.usage.prompt_tokens == len(good[0])
    for i, outcome in enumerate(outcomes):
        assert outcome.error is None, (i, outcome.error)
        assert outcome.usage is not None
        assert outcome.usage.completion_tokens == MAX_TOKENS
        tokens = [token_ids(t) for d in outcome.deltas if d.logprobs for t in d.logprobs["tokens"]]
        assert tokens == solo[i], i


@pytest.mark.anyio
async def test_a_request_with_no_distribution_fails_before_output(
    engine: LocalTextEngine,
) -> None:
    bad = await _outcome(
        engine.generate(completion([5, 6, 7], request_id="nan", temperature=math.nan))
    )
    assert isinstance(bad.error, GenerationFailed)
    assert bad.deltas == []
    assert bad.usage is not None and bad.usage.completion_tokens == 0
    after = await collect(engine.generate(completion([5, 6, 7], max_tokens=3)))
    assert after.usage is not None and after.usage.completion_tokens == 3


@pytest.mark.anyio
async def test_a_vanishing_repetition_penalty_is_sampled_not_fatal(
    engine: LocalTextEngine,
) -> None:
    """The reported crash: 1e-320 divides positive logits to +inf and the softmax to NaN."""
    result = await collect(
        engine.generate(
            completion(
                [5, 6, 7, 8], max_tokens=4, temperature=1.0, seed=2, repetition_penalty=1e-320
            )
        )
    )
    assert result.usage is not None and result.usage.completion_tokens == 4


def test_sample_returns_the_error_for_the_row_it_cannot_sample_only() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))

    def rows(middle: SamplingParams) -> list[RowSampler]:
        params = [SamplingParams(temperature=0.7, seed=1), middle, SamplingParams(temperature=0.0)]
        return [
            RowSampler(
                p, make_generator(p.seed, logits.device), torch.empty(0, dtype=torch.long), []
            )
            for p in params
        ]

    clean = sample(logits, rows(SamplingParams(temperature=0.9, seed=4)))
    poisoned = sample(logits, rows(SamplingParams(temperature=math.nan)))
    assert isinstance(poisoned[1], UnsampleableRow)
    assert [poisoned[0], poisoned[2]] == [clean[0], clean[2]]  # seeded and greedy rows unchanged
