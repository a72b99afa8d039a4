"""SentenceEmbeddingEngine against sentence-transformers itself, with the bundled model.

The reference is ``SentenceTransformer(default_model_path())``: same folder,
loaded offline. Loading both takes a couple of seconds, so each is built once
per module.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from firebox.errors import InvalidArgument
from firebox.inference.engine import EmbeddingRequest, EmbeddingResult
from firebox.inference.local.embedding import (
    EngineClosed,
    SentenceEmbeddingEngine,
    default_model_path,
)

ATOL = 1e-5
LONG_TEXT = " ".join(f"word{i} and some filler text" for i in range(300))  # far over 256 tokens
TEXTS = [
    "A man is eating food.",
    "The girl is carrying a baby.",
    "Hi",
    "Firebox serves embeddings in process, with dynamic micro-batching of concurrent callers.",
    "Ünïcödé, emoji 🚀 and punctuation?! — all in one line.",
    LONG_TEXT,
]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def engine() -> Iterator[SentenceEmbeddingEngine]:
    eng = SentenceEmbeddingEngine(device="cpu")
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(default_model_path()), local_files_only=True)


@pytest.fixture(scope="module")
def reference() -> SentenceTransformer:
    return SentenceTransformer(str(default_model_path()), device="cpu", local_files_only=True)


def request(inputs: Any, dimensions: int | None = None) -> EmbeddingRequest:
    return EmbeddingRequest(
        request_id="req-1", model="all-minilm-l6-v2", inputs=inputs, dimensions=dimensions
    )


async def embed(engine: SentenceEmbeddingEngine, inputs: Any) -> EmbeddingResult:
    return await engine.embed(request(inputs))


def expected(reference: SentenceTransformer, engine: SentenceEmbeddingEngine, texts: list[str]):
    return reference.encode(texts, normalize_embeddings=engine.normalized, convert_to_numpy=True)


def cosine(a: list[float], b: list[float]) -> float:
    va, vb = np.asarray(a), np.asarray(b)
    return float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))


def test_model_facts(engine: SentenceEmbeddingEngine, reference: SentenceTransformer) -> None:
    assert engine.dimensions == 384
    assert engine.max_seq_length == reference.max_seq_length == 256
    assert engine.normalized  # all-MiniLM-L6-v2 lists a Normalize module
    assert engine.device == "cpu"
    assert engine.model_path == SentenceEmbeddingEngine.default_model_path()


@pytest.mark.anyio
async def test_matches_sentence_transformers_in_one_batch(
    engine: SentenceEmbeddingEngine, reference: SentenceTransformer
) -> None:
    result = await embed(engine, TEXTS)
    assert len(result.vectors) == len(TEXTS)
    assert all(len(v) == 384 for v in result.vectors)
    np.testing.assert_allclose(result.vectors, expected(reference, engine, TEXTS), atol=ATOL)


@pytest.mark.anyio
async def test_matches_sentence_transformers_one_by_one(
    engine: SentenceEmbeddingEngine, reference: SentenceTransformer
) -> None:
    for text in TEXTS:
        result = await embed(engine, [text])
        want = reference.encode(text, normalize_embeddings=engine.normalized)
        np.testing.assert_allclose(result.vectors[0], want, atol=ATOL)


@pytest.mark.anyio
async def test_batching_does_not_change_vectors(engine: SentenceEmbeddingEngine) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    alone = (await embed(engine, [text])).vectors[0]
    batch = ["Hi", LONG_TEXT, text, "Two words", TEXTS[3]]
    inside = (await embed(engine, batch)).vectors[2]
    np.testing.assert_allclose(inside, alone, atol=ATOL)


@pytest.mark.anyio
async def test_semantic_sanity(engine: SentenceEmbeddingEngine) -> None:
    food, bread, baby = (
        await embed(
            engine,
            [
                "A man is eating food.",
                "A man is eating a piece of bread.",
                "The girl is carrying a baby.",
            ],
        )
    ).vectors
    assert cosine(food, bread) > cosine(food, baby) + 0.2


@pytest.mark.anyio
async def test_vectors_have_unit_norm(engine: SentenceEmbeddingEngine) -> None:
    result = await embed(engine, TEXTS)
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.anyio
async def test_token_ids_embed_like_their_text(
    engine: SentenceEmbeddingEngine, tokenizer: PreTrainedTokenizerBase
) -> None:
    for text in ["a man is eating food.", "the girl is carrying a baby."]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        decoded = tokenizer.decode(ids)
        assert tokenizer.encode(decoded, add_special_tokens=False) == ids  # round-trips
        by_ids, by_text = await embed(engine, [ids]), await embed(engine, [decoded])
        np.testing.assert_allclose(by_ids.vectors[0], by_text.vectors[0], atol=ATOL)
        assert by_ids.prompt_tokens == by_text.prompt_tokens == len(ids) + 2  # [CLS] ... [SEP]


@pytest.mark.anyio
async def test_prompt_tokens_count_special_tokens(
    engine: SentenceEmbeddingEngine, tokenizer: PreTrainedTokenizerBase
) -> None:
    texts = TEXTS[:5]
    want = sum(len(tokenizer(t, add_special_tokens=True)["input_ids"]) for t in texts)
    result = await embed(engine, texts)
    assert result.prompt_tokens == want
    assert engine.count_tokens(texts) == want


@pytest.mark.anyio
async def test_long_input_is_truncated_to_max_seq_length(
    engine: SentenceEmbeddingEngine,
    reference: SentenceTransformer,
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    assert len(tokenizer(LONG_TEXT)["input_ids"]) > engine.max_seq_length
    result = await embed(engine, [LONG_TEXT])
    assert result.prompt_tokens == engine.max_seq_length == 256
    assert engine.count_tokens([LONG_TEXT]) == engine.count_tokens(LONG_TEXT) == 256
    want = reference.encode(LONG_TEXT, normalize_embeddings=engine.normalized)  # truncates too
    np.testing.assert_allclose(result.vectors[0], want, atol=ATOL)
    # The same holds for a token array: its content is cut so that [CLS] ... [SEP] fit.
    ids = tokenizer.encode(LONG_TEXT, add_special_tokens=False)
    by_ids = await embed(engine, [ids])
    assert by_ids.prompt_tokens == 256
    np.testing.assert_allclose(by_ids.vectors[0], want, atol=ATOL)


@pytest.mark.anyio
async def test_concurrent_requests_share_forward_passes(
    engine: SentenceEmbeddingEngine, reference: SentenceTransformer
) -> None:
    texts = [f"Request number {i} asks about {'cats' if i % 2 else 'dogs'}." for i in range(32)]
    want = expected(reference, engine, texts)
    before = engine.forward_passes
    results = await asyncio.gather(*(embed(engine, [t]) for t in texts))
    passes = engine.forward_passes - before
    assert 1 <= passes < len(texts)
    for result, vector in zip(results, want, strict=True):
        np.testing.assert_allclose(result.vectors[0], vector, atol=ATOL)
        assert len(result.vectors) == 1


@pytest.mark.anyio
async def test_a_request_split_over_several_passes_gives_the_same_result(
    engine: SentenceEmbeddingEngine,
) -> None:
    texts = [*TEXTS[:5], "one more", "and another sentence, a little longer than that"]
    small = SentenceEmbeddingEngine(device="cpu", max_batch_size=3, max_batch_tokens=64)
    try:
        split = await small.embed(request(texts))
        assert small.forward_passes >= 3
    finally:
        await small.close()
    whole = await embed(engine, texts)
    np.testing.assert_allclose(split.vectors, whole.vectors, atol=ATOL)
    assert split.prompt_tokens == whole.prompt_tokens


@pytest.mark.anyio
async def test_event_loop_keeps_running_during_a_forward_pass(
    engine: SentenceEmbeddingEngine,
) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    await embed(engine, [LONG_TEXT] * 2)
    task.cancel()
    assert ticks > 1  # the loop ran other tasks while the worker computed


@pytest.mark.anyio
async def test_a_cancelled_caller_does_not_break_the_engine(
    engine: SentenceEmbeddingEngine,
) -> None:
    task = asyncio.create_task(embed(engine, [LONG_TEXT] * 8))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    result = await embed(engine, ["still fine"])
    assert len(result.vectors[0]) == 384


@pytest.mark.anyio
@pytest.mark.parametrize("dimensions", [None, 384])
async def test_native_dimensions_are_accepted(
    engine: SentenceEmbeddingEngine, dimensions: int | None
) -> None:
    result = await engine.embed(request(["hello"], dimensions=dimensions))
    assert len(result.vectors[0]) == 384


@pytest.mark.anyio
@pytest.mark.parametrize("dimensions", [0, 128, 383, 385, 1536])
async def test_other_dimensions_are_refused(
    engine: SentenceEmbeddingEngine, dimensions: int
) -> None:
    with pytest.raises(InvalidArgument) as info:
        await engine.embed(request(["hello"], dimensions=dimensions))
    assert info.value.param == "dimensions"
    assert "384 dimensions" in info.value.message


@pytest.mark.anyio
@pytest.mark.parametrize(
    "inputs",
    [[], [""], ["fine", ""], [[]], [[101, 102], []], [[-1]], [[30522]], [[1.5]], [None]],
    ids=["no-inputs", "empty-string", "one-empty", "empty-ids", "one-empty-ids",
         "negative-id", "id-past-vocab", "float-id", "none"],
)  # fmt: skip
async def test_bad_inputs_are_refused(engine: SentenceEmbeddingEngine, inputs: Any) -> None:
    with pytest.raises(InvalidArgument) as info:
        await embed(engine, inputs)
    assert info.value.param == "input"
    with pytest.raises(InvalidArgument):
        engine.count_tokens(inputs)


@pytest.mark.anyio
async def test_close_is_idempotent_and_refuses_later_requests() -> None:
    engine = SentenceEmbeddingEngine(device="cpu", num_threads=1)
    workers_before = sum(t.name == "embedding-worker" for t in threading.enumerate())
    # A request queued before close() is still answered.
    pending = asyncio.create_task(embed(engine, ["queued before close"]))
    await asyncio.sleep(0)
    await engine.close()
    assert len((await pending).vectors[0]) == 384
    await engine.close()
    engine.shutdown()
    assert engine.closed
    assert sum(t.name == "embedding-worker" for t in threading.enumerate()) == workers_before - 1
    with pytest.raises(EngineClosed, match="shut down"):
        await embed(engine, ["too late"])
