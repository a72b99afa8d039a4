"""The trainer's encoding: the loss falls on the assistant's words (and end of turn) only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from firebox.finetune.worker.examples import IGNORE, ExampleError, encode
from firebox.finetune.worker.protocol import TrainSpec
from firebox.finetune.worker.trainer import batches_of, epoch_batches

MODEL = Path(__file__).resolve().parents[2] / "models" / "firebox-tiny"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(str(MODEL))


def test_only_assistant_turns_are_trained_and_the_ids_match_the_whole_render(
    tokenizer: Any,
) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Spain?"},
        {"role": "assistant", "content": "Madrid."},
    ]
    example = encode(tokenizer, {"messages": messages}, "CHAT", 2048)
    whole = tokenizer.apply_chat_template(messages, tokenize=False)
    assert example.ids == tokenizer(whole, add_special_tokens=False)["input_ids"]
    trained = tokenizer.decode([t for t, label in zip(example.ids, example.labels, strict=True)
                                if label != IGNORE])  # fmt: skip
    assert trained.replace("<|im_end|>", "|").replace("\n", "") == "Paris.|Madrid.|"
    assert "France" not in trained and "Be brief" not in trained and "assistant" not in trained


def test_examples_the_trainer_cannot_learn_from_are_refused(tokenizer: Any) -> None:
    with pytest.raises(ExampleError, match="no assistant tokens"):
        encode(tokenizer, {"messages": [{"role": "user", "content": "hi"}]}, "CHAT", 2048)
    with pytest.raises(ExampleError, match="starts with the assistant"):
        encode(tokenizer, {"messages": [{"role": "assistant", "content": "hi"}]}, "CHAT", 2048)
    long_question = [
        {"role": "user", "content": "x " * 50},
        {"role": "assistant", "content": "y"},
    ]
    # Cut to the context length, the answer is gone: nothing to learn.
    with pytest.raises(ExampleError, match="no assistant tokens"):
        encode(tokenizer, {"messages": long_question}, "CHAT", 16)
    long_answer = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "y " * 50}]
    assert len(encode(tokenizer, {"messages": long_answer}, "CHAT", 16).ids) == 16


def test_completion_examples_train_the_completion_only(tokenizer: Any) -> None:
    example = encode(
        tokenizer, {"prompt": "Two plus two is", "completion": " four."}, "COMPLETION", 64
    )
    trained = tokenizer.decode([t for t, label in zip(example.ids, example.labels, strict=True)
                                if label != IGNORE])  # fmt: skip
    assert trained == " four."


def test_batches_respect_token_and_sample_bounds_and_epochs_reshuffle(tokenizer: Any) -> None:
    lines = [{"messages": [{"role": "user", "content": f"q{n}" * (n + 1)},
                           {"role": "assistant", "content": "a"}]} for n in range(12)]  # fmt: skip
    examples = [encode(tokenizer, line, "CHAT", 2048) for line in lines]
    spec = TrainSpec(job="t", base_model_path="", train_files=[], output_dir="", checkpoint_dir="",
                     base_model_name="", batch_size_tokens=120, batch_size_samples=3)  # fmt: skip
    batches = batches_of(examples, list(range(12)), spec)
    assert sorted(i for b in batches for i in b) == list(range(12))
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) == 1 or max(len(examples[i].ids) for i in batch) * len(batch) <= 120
    assert epoch_batches(examples, spec, 0) == epoch_batches(examples, spec, 0)
    assert epoch_batches(examples, spec, 0) != epoch_batches(examples, spec, 1)
