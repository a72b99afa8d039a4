"""The bundled demo models load offline through the standard Llama code path.

``models/`` is built by ``make demo-models``; these tests pin what Firebox's
demos and engine tests rely on: a real ``LlamaConfig`` with GQA, a ChatML
chat template, greedy generation that stops at ``<|im_end|>``, and a LoRA
add-on whose answers visibly differ (UPPERCASE) from the base's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

MODELS = Path(__file__).resolve().parents[1] / "models"
BASE = MODELS / "firebox-tiny"
LORA = MODELS / "firebox-tiny-lora"
PROMPT = [{"role": "user", "content": "What is the capital of France?"}]
CHATML_PROMPT = (
    "<|begin_of_text|><|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
MAX_NEW_TOKENS = 24


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(BASE, local_files_only=True)


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(BASE, local_files_only=True)
    return model.eval()


@pytest.fixture(scope="module")
def prompt_ids(tokenizer):
    text = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]


def _generate(model, tokenizer, prompt_ids) -> tuple[list[int], str]:
    with torch.no_grad():
        out = model.generate(input_ids=prompt_ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    new = out[0, prompt_ids.shape[1] :].tolist()
    return new, tokenizer.decode(new, skip_special_tokens=True)


def _upper_share(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    return sum(c.isupper() for c in letters) / max(1, len(letters))


@pytest.fixture(scope="module")
def base_reply(base, tokenizer, prompt_ids):
    return _generate(base, tokenizer, prompt_ids)


def test_config_is_a_gqa_llama(base) -> None:
    config = base.config
    assert isinstance(config, transformers.LlamaConfig)
    assert isinstance(base, transformers.LlamaForCausalLM)
    assert config.num_key_value_heads < config.num_attention_heads  # GQA
    assert config.max_position_embeddings >= 2048


def test_size_within_bounds(base) -> None:
    parameters = sum(p.numel() for p in base.parameters())
    assert 3_000_000 <= parameters <= 8_000_000
    assert (BASE / "model.safetensors").stat().st_size < 30 * 1024 * 1024
    assert next(base.parameters()).dtype == torch.float32


def test_chat_template_renders_chatml(tokenizer) -> None:
    text = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    assert text == CHATML_PROMPT
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|pad|>"
    assert tokenizer.bos_token == "<|begin_of_text|>"


def test_tokenizer_is_byte_level(tokenizer) -> None:
    text = "naïve café ☕ 12345"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_greedy_chat_stops_at_im_end(base_reply, tokenizer) -> None:
    new, text = base_reply
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert text.strip()
    assert new[-1] == im_end or len(new) == MAX_NEW_TOKENS


def test_lora_answers_in_uppercase(base, tokenizer, prompt_ids, base_reply) -> None:
    _, base_text = base_reply
    lora = peft.PeftModel.from_pretrained(base, LORA).eval()
    try:
        assert lora.peft_config["default"].base_model_name_or_path == "firebox-tiny"
        _, lora_text = _generate(lora, tokenizer, prompt_ids)
    finally:
        lora.unload()  # give the module-scoped base back without LoRA layers
    assert lora_text.strip()
    assert lora_text != base_text
    assert _upper_share(lora_text) > 0.8, lora_text
    assert _upper_share(base_text) < 0.5, base_text
