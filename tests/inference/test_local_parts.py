"""The local engine's parts on their own: block pool, hashes, LoRA batching, detokenizer, rope."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig

from firebox.inference.local.choice_output import ChoiceOutput, IncrementalDetokenizer, TokenTexts
from firebox.inference.local.kv_cache import BlockPool, block_hashes
from firebox.inference.local.lora_slots import GroupStack, LoraBatch
from firebox.inference.local.rope import inverse_frequencies
from firebox.inference.local.text_config import RopeSpec
from tests.inference.test_local_support import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> object:
    folder = tmp_path_factory.mktemp("tok")
    build_tokenizer(folder)
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def test_block_hashes_chain_over_the_prefix_and_the_adapter() -> None:
    a = block_hashes(list(range(40)), 16, "")
    assert len(a) == 2  # the partial third block has no hash
    assert block_hashes(list(range(33)), 16, "") == a
    b = block_hashes([99, *range(1, 40)], 16, "")
    assert a[0] != b[0] and a[1] != b[1]  # a change in block 0 changes every later hash
    assert block_hashes(list(range(40)), 16, "lora#1") != a


def test_block_pool_reuses_cached_blocks_and_evicts_least_recently_used() -> None:
    pool = BlockPool(4)
    first = pool.allocate(2)
    assert first is not None
    pool.register(first[0], b"h0")
    pool.register(first[1], b"h1")
    pool.release(first)
    assert pool.stats().cached == 2 and pool.stats().used == 0
    assert pool.match([b"h0", b"h1", b"h2"]) == first  # reused, refcount taken
    assert pool.stats().used == 2
    pool.release(first)
    pool.match([b"h1"])  # h1 becomes most recently used
    pool.release([first[1]])
    taken = pool.allocate(3)  # 2 never-used blocks, then evict the LRU cached one (h0)
    assert taken is not None and first[0] in taken
    assert pool.match([b"h0"]) == []
    assert pool.match([b"h1"]) == [first[1]]
    assert pool.allocate(1) is None


def test_lora_batch_strategies_agree() -> None:
    torch.manual_seed(0)
    slots, width, fan_in, fan_out = 4, 24, 256, 256
    stack = GroupStack(a=torch.randn(slots, width, fan_in), bt=torch.randn(slots, width, fan_out))
    stack.a[0].zero_()
    stack.bt[0].zero_()
    x = torch.randn(600, fan_in)
    token_slots = [i % slots for i in range(600)]
    expected = torch.stack([stack.bt[s].T @ stack.a[s] @ x[i] for i, s in enumerate(token_slots)])
    cpu = torch.device("cpu")
    for tokens in (12, 600):  # dense over all slots (few tokens), then one pass per slot
        out = torch.zeros(tokens, fan_out)
        batch = LoraBatch.build(token_slots[:tokens], slots, cpu, torch.float32)
        assert batch is not None
        assert batch._dense_is_cheaper(stack, x, out) == (tokens == 12)
        batch.add(stack, x[:tokens], out)
        torch.testing.assert_close(out, expected[:tokens], rtol=1e-4, atol=1e-3)
    out = torch.zeros(5, fan_out)  # one add-on for all rows
    one = LoraBatch.build([2] * 5, slots, cpu, torch.float32)
    assert one is not None
    one.add(stack, x[:5], out)
    torch.testing.assert_close(out, x[:5] @ stack.a[2].T @ stack.bt[2], rtol=1e-4, atol=1e-3)
    assert LoraBatch.build([0, 0, 0], slots, cpu, torch.float32) is None


def test_detokenizer_never_splits_a_utf8_character(tokenizer: object) -> None:
    text = "Grüße 🙂🚀 aus 東京 — café"
    ids = tokenizer(text)["input_ids"]
    assert len(ids) > len(text.split())  # multi-byte characters span several tokens
    detok = IncrementalDetokenizer(tokenizer, [])
    pieces = [detok.add(t) for t in ids]
    pieces.append(detok.flush())
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text


def test_stop_strings_are_held_back_and_trimmed_across_tokens(tokenizer: object) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    ids = tokenizer(text)["input_ids"]
    output = ChoiceOutput(
        index=0,
        kind="completion",
        tokenizer=tokenizer,
        texts=TokenTexts(tokenizer),
        prompt_ids=[],
        stops=("fox ju", "zzz"),
        logprobs=False,
    )
    streamed = []
    added = 0
    for token in ids:
        added += 1
        delta = output.add(token, None)
        if delta is not None:
            streamed.append(delta)
        if output.stopped:
            break
    last = output.finish()
    if last is not None:
        streamed.append(last)
    assert output.stopped and added < len(ids)
    assert "".join(d.text for d in streamed) == "The quick brown "
    assert sum(d.token_count for d in streamed) == added  # held-back tokens are still counted


def test_token_texts_name_partial_characters_by_their_bytes(tokenizer: object) -> None:
    texts = TokenTexts(tokenizer)
    ids = tokenizer("🙂")["input_ids"]
    assert b"".join(bytes(texts.bytes(t)) for t in ids) == "🙂".encode()
    if len(ids) > 1:
        assert texts(ids[0]).startswith("bytes:\\x")
    everything = {texts(i) for i in range(len(tokenizer))}
    assert len(everything) == len(tokenizer)


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "default", "rope_theta": 10000.0},
        {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
            "rope_theta": 500000.0,
        },
    ],
)
def test_rope_frequencies_equal_transformers(rope: dict) -> None:
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(hidden_size=256, num_attention_heads=4, rope_parameters=rope)
    kind = rope["rope_type"]
    if kind == "default":
        expected = 1.0 / (10000.0 ** (torch.arange(0, 64, 2, dtype=torch.int64).float() / 64))
    else:
        expected, _ = ROPE_INIT_FUNCTIONS[kind](config, None)
    spec = RopeSpec(
        theta=rope["rope_theta"],
        kind=kind,
        factor=rope.get("factor", 1.0),
        low_freq_factor=rope.get("low_freq_factor", 1.0),
        high_freq_factor=rope.get("high_freq_factor", 4.0),
        original_max_positions=rope.get("original_max_position_embeddings", 8192),
    )
    assert torch.equal(inverse_frequencies(spec, 64), expected)
