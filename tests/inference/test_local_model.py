"""The local engine's outputs against transformers' own, token for token, in float32.

The reference is ``generate(do_sample=False)`` of ``LlamaForCausalLM`` (plus
``peft.PeftModel`` for add-ons) on the same folder, one prompt at a time; the
engine runs the same prompts concurrently, so they share forward steps, with
a small token budget so that the longer prompts are prefilled in chunks.
Each step's logprob is compared too (within 1e-4): it catches a wrong KV
entry even where it would not change the greedy token.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from firebox.inference.local.text_config import UnsupportedModel
from firebox.inference.local.text_engine import LocalTextEngine
from tests.inference.test_local_support import (
    ReferenceModels,
    TokenIds,
    assert_matches_reference,
    build_lora,
    build_model,
    chat,
    collect,
    completion,
    engine_steps,
    prompts,
)

NEW_TOKENS = 16


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("local-model")
    base = build_model(root / "base")
    return {
        "base": base,
        "a1": build_lora(base, root / "a1", seed=1, r=4),
        "a2": build_lora(base, root / "a2", seed=2, r=8, targets=("q_proj", "v_proj", "down_proj")),
        "a3": build_lora(
            base, root / "a3", seed=3, r=2, targets=("k_proj", "o_proj", "gate_proj", "up_proj")
        ),
    }


@pytest.fixture(scope="module")
def refs(folders: dict[str, Path]) -> ReferenceModels:
    return ReferenceModels(folders["base"])


@pytest.fixture(scope="module")
def token_ids(folders: dict[str, Path]) -> TokenIds:
    return TokenIds(folders["base"])


@pytest.fixture(scope="module")
def engine(folders: dict[str, Path]) -> Iterator[LocalTextEngine]:
    engine = LocalTextEngine.load(
        folders["base"],
        device="cpu",
        dtype="float32",
        kv_cache_tokens=4096,
        max_batch_tokens=40,
        max_adapters=2,
    )
    for name in ("a1", "a2", "a3"):
        engine.register_adapter(name, folders[name])
    yield engine
    engine.shutdown()


async def _run_all(engine: LocalTextEngine, jobs: list[tuple[list[int], str | None]]) -> list:
    requests = [
        completion(
            ids,
            adapter=adapter,
            request_id=f"r{i}",
            max_tokens=NEW_TOKENS,
            logprobs=True,
            top_logprobs=2,
        )
        for i, (ids, adapter) in enumerate(jobs)
    ]
    return list(await asyncio.gather(*(collect(engine.generate(r)) for r in requests)))


@pytest.mark.anyio
async def test_batched_base_model_matches_transformers_greedy(
    engine: LocalTextEngine, refs: ReferenceModels, token_ids: TokenIds
) -> None:
    jobs = [(p, None) for p in prompts(6, engine.config.vocab_size, seed=10)]
    before = engine.stats().forward_passes
    results = await _run_all(engine, jobs)
    # six requests of 16 tokens shared steps: far fewer passes than 6 * 16
    assert engine.stats().forward_passes - before < 6 * NEW_TOKENS
    for (ids, _), result in zip(jobs, results, strict=True):
        tokens, logprobs = engine_steps(result, token_ids)
        assert result.usage.completion_tokens == len(tokens)
        assert_matches_reference(tokens, logprobs, refs.greedy(ids, NEW_TOKENS))


@pytest.mark.anyio
async def test_batch_mixing_base_and_two_adapters_matches_each_alone(
    engine: LocalTextEngine, folders: dict[str, Path], refs: ReferenceModels, token_ids: TokenIds
) -> None:
    ids = prompts(6, engine.config.vocab_size, seed=11)
    jobs = [
        (ids[0], None),
        (ids[1], "a1"),
        (ids[2], "a2"),
        (ids[3], "a1"),
        (ids[4], None),
        (ids[5], "a2"),
    ]
    together = await _run_all(engine, jobs)
    alone = [(await _run_all(engine, [job]))[0] for job in jobs]
    outputs = []
    for (prompt, adapter), mixed, single in zip(jobs, together, alone, strict=True):
        mixed_tokens, mixed_lps = engine_steps(mixed, token_ids)
        single_tokens, single_lps = engine_steps(single, token_ids)
        ref = refs.greedy(prompt, NEW_TOKENS, folders[adapter] if adapter else None)
        assert_matches_reference(mixed_tokens, mixed_lps, ref)
        assert_matches_reference(single_tokens, single_lps, ref)
        outputs.append(mixed_tokens)
    # the add-ons really change the output: the same prompt differs across adapters
    same_prompt = await _run_all(engine, [(ids[0], None), (ids[0], "a1"), (ids[0], "a2")])
    texts = {r.texts[0] for r in same_prompt}
    assert len(texts) == 3


@pytest.mark.anyio
async def test_adapters_evict_and_reload_under_a_budget_of_two(
    engine: LocalTextEngine, folders: dict[str, Path], refs: ReferenceModels, token_ids: TokenIds
) -> None:
    prompt = prompts(1, engine.config.vocab_size, seed=12, lengths=(20,))[0]
    loads = engine.stats().adapter_loads
    for name in ("a1", "a2", "a3", "a1", "a2", "a3"):
        (result,) = await _run_all(engine, [(prompt, name)])
        assert_matches_reference(
            *engine_steps(result, token_ids), refs.greedy(prompt, NEW_TOKENS, folders[name])
        )
        stats = engine.stats()
        assert len(stats.adapters_loaded) <= 2
        assert name in stats.adapters_loaded
    assert (
        engine.stats().adapter_loads - loads >= 4
    )  # cycling 3 add-ons over 2 slots: the last 4 miss
    # three adapters at once with two slots: the third waits for a slot, all still exact
    jobs = [(prompt, "a1"), (prompt, "a2"), (prompt, "a3")]
    for (p, name), result in zip(jobs, await _run_all(engine, jobs), strict=True):
        assert_matches_reference(
            *engine_steps(result, token_ids), refs.greedy(p, NEW_TOKENS, folders[name])
        )


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("arch", "overrides"),
    [
        ("qwen2", {"tie_word_embeddings": True}),
        (
            "llama",
            {
                "rope_scaling": {
                    "rope_type": "llama3",
                    "factor": 4.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 32,
                },
                "rope_theta": 5000.0,
                "head_dim": 32,
            },
        ),
        ("mistral", {"sliding_window": None}),
    ],
    ids=["qwen2-biases-tied", "llama3-rope", "mistral"],
)
async def test_other_family_members_match_transformers(
    tmp_path: Path, arch: str, overrides: dict
) -> None:
    folder = build_model(tmp_path / arch, arch=arch, seed=5, **overrides)
    refs = ReferenceModels(folder)
    engine = LocalTextEngine.load(folder, device="cpu", kv_cache_tokens=1024, max_batch_tokens=32)
    try:
        jobs = [
            (p, None) for p in prompts(3, engine.config.vocab_size, seed=13, lengths=(5, 40, 70))
        ]
        token_ids = TokenIds(folder)
        for (ids, _), result in zip(jobs, await _run_all(engine, jobs), strict=True):
            assert_matches_reference(*engine_steps(result, token_ids), refs.greedy(ids, NEW_TOKENS))
    finally:
        engine.shutdown()


DEMO = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.anyio
@pytest.mark.skipif(
    not (DEMO / "firebox-tiny" / "config.json").is_file(), reason="demo model not built"
)
async def test_bundled_demo_model_and_its_add_on_match_transformers() -> None:
    base, lora = DEMO / "firebox-tiny", DEMO / "firebox-tiny-lora"
    engine = LocalTextEngine.load(base, device="cpu", kv_cache_tokens=2048)
    try:
        engine.register_adapter("upper", lora)
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        refs = ReferenceModels(base)
        rendered = engine._tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        ids = engine._tokenizer(rendered, add_special_tokens=False)["input_ids"]
        for adapter in (None, "upper"):
            result = await collect(engine.generate(chat(messages, max_tokens=24, adapter=adapter)))
            ref = refs.greedy(ids, 24, lora if adapter else None)
            expected = engine._tokenizer.decode(ref.tokens, skip_special_tokens=True)
            assert result.texts[0] == expected
    finally:
        engine.shutdown()


def _write_config(folder: Path, **fields: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(fields))
    return folder


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "GPT2LMHeadModel"),
        (
            {"model_type": "mistral", "sliding_window": 4096, "max_position_embeddings": 32768},
            "sliding-window",
        ),
        ({"model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
        ({"model_type": "llama", "hidden_act": "gelu"}, "gelu"),
    ],
)
def test_unrunnable_models_are_refused_with_a_pointer_to_the_upstream_engine(
    tmp_path: Path, fields: dict, why: str
) -> None:
    base = {
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 1,
        "intermediate_size": 8,
        "vocab_size": 10,
    }
    folder = _write_config(tmp_path / "m", **(base | fields))
    with pytest.raises(UnsupportedModel) as refused:
        LocalTextEngine.load(folder, device="cpu")
    assert why in str(refused.value)
    assert "upstream engine" in str(refused.value)
    assert "vLLM" in str(refused.value)
