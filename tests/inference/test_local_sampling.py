"""Request parameters of the local engine: sampling, stops, limits, n, logprobs, echo, context."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from firebox.errors import InvalidArgument, NotFound
from firebox.inference.engine import ContextLengthExceeded
from firebox.inference.local.text_engine import LOCAL_TEXT_CAPABILITIES, LocalTextEngine
from tests.inference.test_local_support import (
    ReferenceModels,
    build_model,
    chat,
    collect,
    completion,
    prompts,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model(tmp_path_factory.mktemp("local-sampling") / "base", seed=3)


@pytest.fixture(scope="module")
def engine(folder: Path) -> Iterator[LocalTextEngine]:
    engine = LocalTextEngine.load(folder, device="cpu", kv_cache_tokens=4096, max_batch_tokens=64)
    yield engine
    engine.shutdown()


PROMPT = "Continuous batching lets requests"


@pytest.mark.anyio
async def test_seed_makes_sampling_reproducible_whatever_shares_the_batch(
    engine: LocalTextEngine,
) -> None:
    def sampled(seed: int | None, rid: str) -> object:
        return collect(
            engine.generate(
                completion(PROMPT, request_id=rid, max_tokens=24, temperature=1.0, seed=seed)
            )
        )

    alone = await sampled(7, "a")
    crowd = await asyncio.gather(
        sampled(7, "b"), sampled(8, "c"), sampled(None, "d"), sampled(7, "e")
    )
    assert crowd[0].texts == alone.texts == crowd[3].texts
    assert crowd[1].texts != alone.texts


@pytest.mark.anyio
async def test_sampling_knobs_still_give_valid_outputs(engine: LocalTextEngine) -> None:
    knobs = [
        {"top_k": 1},
        {"top_p": 0.01},
        {"min_p": 0.99},
        {"presence_penalty": 1.5, "frequency_penalty": 1.0},
        {"repetition_penalty": 1.3},
    ]
    greedy = await collect(engine.generate(completion(PROMPT, max_tokens=12)))
    for extra in knobs:
        result = await collect(
            engine.generate(completion(PROMPT, max_tokens=12, temperature=0.9, seed=1, **extra))
        )
        assert result.usage.completion_tokens >= 1
        if "top_k" in extra or "top_p" in extra or "min_p" in extra:  # these keep only the argmax
            assert result.texts == greedy.texts


@pytest.mark.anyio
async def test_stop_strings_end_the_answer_before_them(engine: LocalTextEngine) -> None:
    full = (await collect(engine.generate(completion(PROMPT, max_tokens=30)))).texts[0]
    clean = [i for i in range(4, len(full) - 3) if "\ufffd" not in full[i : i + 3]]
    stop = full[clean[len(clean) // 2] : clean[len(clean) // 2] + 3]
    stopped = await collect(
        engine.generate(completion(PROMPT, max_tokens=30, stop=(stop, "never-there")))
    )
    assert stopped.texts[0] == full[: full.index(stop)]
    assert stopped.finish == {0: "stop"}
    # streamed deltas never carried part of the stop string
    assert "".join(d.text for d in stopped.deltas[0]) == stopped.texts[0]


@pytest.mark.anyio
async def test_max_tokens_ends_with_length(engine: LocalTextEngine) -> None:
    result = await collect(engine.generate(completion(PROMPT, max_tokens=5)))
    assert result.finish == {0: "length"}
    assert result.usage.completion_tokens == 5
    assert sum(d.token_count for d in result.deltas[0]) == 5


@pytest.mark.anyio
async def test_eos_tokens_from_generation_config_stop_the_choice(
    folder: Path, tmp_path: Path
) -> None:
    ids = prompts(1, 400, seed=8, lengths=(12,))[0]
    third = ReferenceModels(folder).greedy(ids, 3).tokens[2]
    copy = tmp_path / "eos"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "generation_config.json").read_text())
    config["eos_token_id"] = [config["eos_token_id"], third]
    (copy / "generation_config.json").write_text(json.dumps(config))
    engine = LocalTextEngine.load(copy, device="cpu", kv_cache_tokens=512)
    try:
        result = await collect(engine.generate(completion(ids, max_tokens=20)))
        assert result.finish == {0: "stop"}
        assert result.usage.completion_tokens == 3  # the eos token counts, its text is not shown
        reference = ReferenceModels(copy).greedy(ids, 20)
        assert len(reference.tokens) == 3  # transformers stops there too
        assert result.texts[0] == engine._tokenizer.decode(reference.tokens[:2])
    finally:
        engine.shutdown()


@pytest.mark.anyio
async def test_n_gives_distinct_choices(engine: LocalTextEngine) -> None:
    sampled = await collect(
        engine.generate(completion(PROMPT, max_tokens=16, n=2, temperature=1.0, seed=3))
    )
    assert set(sampled.texts) == {0, 1} and set(sampled.finish) == {0, 1}
    assert sampled.texts[0] != sampled.texts[1]
    counted = sum(d.token_count for deltas in sampled.deltas.values() for d in deltas)
    assert sampled.usage.completion_tokens == counted
    greedy = await collect(engine.generate(completion(PROMPT, max_tokens=16, n=2)))
    single = await collect(engine.generate(completion(PROMPT, max_tokens=16)))
    assert greedy.texts[0] == greedy.texts[1] == single.texts[0]


@pytest.mark.anyio
async def test_chat_logprobs_have_the_openai_shape(engine: LocalTextEngine) -> None:
    messages = [{"role": "user", "content": "What is a paged cache?"}]
    result = await collect(
        engine.generate(chat(messages, max_tokens=6, logprobs=True, top_logprobs=3))
    )
    rendered = engine._tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert rendered.endswith("<|im_start|>assistant\n")
    assert result.prompt.prompt_tokens == len(
        engine._tokenizer(rendered, add_special_tokens=False)["input_ids"]
    )
    entries = result.logprob_entries()
    assert len(entries) == result.usage.completion_tokens == 6
    for entry in entries:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert entry["logprob"] <= 0
        assert len(entry["top_logprobs"]) == 3
        assert (
            entry["top_logprobs"][0]["logprob"] >= entry["logprob"] - 1e-6
        )  # greedy took the best
        assert all(set(t) == {"token", "logprob", "bytes"} for t in entry["top_logprobs"])


@pytest.mark.anyio
async def test_chat_content_parts_read_as_their_text(engine: LocalTextEngine) -> None:
    plain = [{"role": "user", "content": "Hello there"}]
    parts = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}],
        }
    ]
    first = await collect(engine.generate(chat(plain, max_tokens=4)))
    second = await collect(engine.generate(chat(parts, max_tokens=4)))
    assert first.texts == second.texts
    assert first.prompt.prompt_tokens == second.prompt.prompt_tokens


@pytest.mark.anyio
async def test_bfloat16_on_cpu_runs_close_to_float32(folder: Path, engine: LocalTextEngine) -> None:
    half = LocalTextEngine.load(folder, device="cpu", dtype="bfloat16", kv_cache_tokens=512)
    try:
        assert half.dtype == torch.bfloat16
        request = completion(PROMPT, max_tokens=1, logprobs=True, top_logprobs=5)
        low = await collect(half.generate(request))
        full = await collect(engine.generate(request))
        low_top = low.deltas[0][0].logprobs["top_logprobs"][0]
        full_top = full.deltas[0][0].logprobs["top_logprobs"][0]
        assert set(low_top) & set(full_top)  # the likely tokens overlap
        shared = next(iter(set(low_top) & set(full_top)))
        assert abs(low_top[shared] - full_top[shared]) < 0.25
    finally:
        half.shutdown()


@pytest.mark.anyio
async def test_completion_logprobs_and_echo_have_the_openai_shape(engine: LocalTextEngine) -> None:
    result = await collect(
        engine.generate(completion(PROMPT, max_tokens=5, logprobs=True, top_logprobs=2))
    )
    lp = result.deltas[0]
    tokens = [t for d in lp for t in d.logprobs["tokens"]]
    offsets = [o for d in lp for o in d.logprobs["text_offset"]]
    assert len(tokens) == 5 and offsets == sorted(offsets) and offsets[0] == 0
    assert all(len(top) in (2, 3) for d in lp for top in d.logprobs["top_logprobs"])
    echoed = await collect(
        engine.generate(completion(PROMPT, max_tokens=5, logprobs=True, echo=True))
    )
    first = echoed.deltas[0][0]
    prompt_len = echoed.usage.prompt_tokens
    assert first.text == PROMPT and first.token_count == 0
    assert len(first.logprobs["tokens"]) == prompt_len
    assert first.logprobs["token_logprobs"][0] is None
    assert all(v <= 0 for v in first.logprobs["token_logprobs"][1:])
    assert echoed.texts[0] == PROMPT + result.texts[0]
    assert echoed.usage.completion_tokens == 5
    plain_echo = await collect(engine.generate(completion(PROMPT, max_tokens=5, echo=True)))
    assert plain_echo.texts[0] == PROMPT + result.texts[0]


@pytest.mark.anyio
async def test_echo_with_zero_max_tokens_scores_the_prompt_only(engine: LocalTextEngine) -> None:
    result = await collect(
        engine.generate(completion(PROMPT, max_tokens=0, logprobs=True, top_logprobs=1, echo=True))
    )
    assert result.texts[0] == PROMPT
    assert result.finish == {0: "length"}
    assert result.usage.completion_tokens == 0
    logprobs = result.deltas[0][0].logprobs
    assert len(logprobs["token_logprobs"]) == result.usage.prompt_tokens
    assert logprobs["top_logprobs"][0] is None and len(logprobs["top_logprobs"][1]) in (1, 2)


@pytest.mark.anyio
async def test_context_length_is_enforced_or_truncated(engine: LocalTextEngine) -> None:
    ids = prompts(1, 400, seed=9, lengths=(30,))[0]
    with pytest.raises(ContextLengthExceeded) as exceeded:
        await collect(engine.generate(completion(ids, max_tokens=20, context_length=40)))
    assert (
        exceeded.value.prompt_tokens,
        exceeded.value.max_tokens,
        exceeded.value.context_length,
    ) == (30, 20, 40)
    truncated = await collect(
        engine.generate(completion(ids, max_tokens=20, context_length=40, truncate=True))
    )
    assert truncated.usage.completion_tokens == 10 and truncated.finish == {0: "length"}
    default = await collect(engine.generate(completion(ids, context_length=36)))
    assert default.usage.completion_tokens == 6  # no max_tokens: the context's remainder
    with pytest.raises(ContextLengthExceeded):  # the model's own 512 positions
        await collect(engine.generate(completion(ids * 18, max_tokens=1, truncate=True)))


@pytest.mark.anyio
async def test_bad_requests_fail_before_queueing(engine: LocalTextEngine) -> None:
    with pytest.raises(NotFound):
        await collect(engine.generate(completion(PROMPT, adapter="nope", max_tokens=1)))
    with pytest.raises(InvalidArgument):
        await collect(engine.generate(completion([1, 10_000], max_tokens=1)))
    with pytest.raises(InvalidArgument):
        await collect(engine.generate(completion("", max_tokens=1)))
    assert engine.stats().waiting == 0


def test_capabilities_list_what_the_engine_honours(engine: LocalTextEngine) -> None:
    assert {"logprobs", "top_logprobs", "echo", "seed", "top_k", "min_p", "repetition_penalty"} <= (
        LOCAL_TEXT_CAPABILITIES.params
    )
    assert "prompt_cache_max_len" in engine.capabilities.params
    assert "tools" not in engine.capabilities.params
    assert engine.capabilities.passthrough == frozenset()
    assert engine.capabilities.vision is False
