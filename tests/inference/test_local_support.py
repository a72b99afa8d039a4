"""Builders shared by the local text engine tests: tiny random checkpoints, add-ons, references.

Everything is generated into temporary folders (no model hub): a byte-level
BPE tokenizer trained in milliseconds with a ChatML template, random Llama /
Qwen2 / Mistral checkpoints saved with ``save_pretrained``, and random PEFT
LoRA add-ons (``init_lora_weights=False`` so that B is not zero and each
add-on really changes the output). The reference is transformers itself:
``generate(do_sample=False)`` one prompt at a time, returning per-step logits
so that a token that differs can be told apart from a near-tie.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from firebox.inference.engine import (
    ChoiceFinished,
    GenerationEvent,
    GenerationRequest,
    PromptInfo,
    SamplingParams,
    TextDelta,
    UsageReport,
)

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Firebox serves large language models on your own hardware.",
    "A paged cache stores keys and values in fixed-size blocks.",
    "Continuous batching lets requests join and leave at every step.",
    "Low-rank adapters change a few projections of the base model.",
    "Grüße aus Köln! Café, naïve, façade — 東京 と 大阪 🙂🚀",
    "0123456789 + - * / = ( ) [ ] { } < > ; : , . ! ?",
] * 4


def build_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (any UTF-8 text encodes) with a ChatML chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return fast


def build_model(folder: Path, arch: str = "llama", seed: int = 0, **overrides: Any) -> Path:
    """A tiny random ``arch`` checkpoint (llama, qwen2, mistral) with a tokenizer in ``folder``."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer(folder)
    kwargs: dict[str, Any] = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 512,
        "initializer_range": 0.1,  # peakier than 0.02: attention matters, near-ties are rare
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    kwargs.update(overrides)
    torch.manual_seed(seed)
    if arch == "qwen2":
        model: Any = Qwen2ForCausalLM(Qwen2Config(**kwargs))
    elif arch == "mistral":
        from transformers import MistralConfig, MistralForCausalLM

        model = MistralForCausalLM(MistralConfig(**kwargs))
    else:
        model = LlamaForCausalLM(LlamaConfig(**kwargs))
    if arch == "qwen2":  # make the q/k/v biases matter
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (
                    layer.self_attn.q_proj,
                    layer.self_attn.k_proj,
                    layer.self_attn.v_proj,
                ):
                    proj.bias.normal_(0, 0.5)
    model.save_pretrained(str(folder))
    return folder


def build_lora(
    base: Path,
    folder: Path,
    seed: int,
    r: int = 4,
    alpha: int = 8,
    targets: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ),
) -> Path:
    """A random PEFT LoRA add-on of ``base`` (B not zero, so it changes outputs)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    config = LoraConfig(
        r=r, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.3)
    peft_model.save_pretrained(str(folder))
    return folder


@dataclass
class Reference:
    tokens: list[int]
    logprobs: list[torch.Tensor]  # per generated step: log-softmax over the vocabulary


class ReferenceModels:
    """transformers (and PEFT) models of the same folders, loaded once each."""

    def __init__(self, base: Path) -> None:
        self._base = base
        self._models: dict[str | None, Any] = {}

    def model(self, adapter: Path | None = None) -> Any:
        key = str(adapter) if adapter else None
        if key not in self._models:
            model = AutoModelForCausalLM.from_pretrained(str(self._base), dtype=torch.float32)
            if adapter is not None:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, str(adapter))
            model.eval()
            self._models[key] = model
        return self._models[key]

    @torch.no_grad()
    def greedy(self, ids: list[int], max_new_tokens: int, adapter: Path | None = None) -> Reference:
        model = self.model(adapter)
        out = model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            return_dict_in_generate=True,
            output_logits=True,
        )
        tokens = out.sequences[0, len(ids) :].tolist()
        logprobs = [torch.log_softmax(step[0].float(), -1) for step in out.logits]
        return Reference(tokens, logprobs)


@dataclass
class Result:
    prompt: PromptInfo | None = None
    texts: dict[int, str] = field(default_factory=dict)
    deltas: dict[int, list[TextDelta]] = field(default_factory=dict)
    finish: dict[int, str] = field(default_factory=dict)
    usage: UsageReport | None = None
    events: list[GenerationEvent] = field(default_factory=list)

    def logprob_entries(self, index: int = 0) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        for d in self.deltas.get(index, []):
            if d.logprobs:
                entries.extend(d.logprobs["content"])
        return entries


async def collect(stream: AsyncIterator[GenerationEvent]) -> Result:
    result = Result()
    async for event in stream:
        result.events.append(event)
        if isinstance(event, PromptInfo):
            result.prompt = event
        elif isinstance(event, TextDelta):
            result.texts[event.index] = result.texts.get(event.index, "") + event.text
            result.deltas.setdefault(event.index, []).append(event)
        elif isinstance(event, ChoiceFinished):
            result.finish[event.index] = event.finish_reason
        elif isinstance(event, UsageReport):
            result.usage = event
    return result


def completion(
    prompt: str | list[int],
    adapter: str | None = None,
    request_id: str = "r",
    prompt_cache_max_len: int | None = None,
    context_length: int = 0,
    truncate: bool = False,
    **params: Any,
) -> GenerationRequest:
    """A completion request, greedy unless ``temperature`` is given."""
    params.setdefault("temperature", 0.0)
    return GenerationRequest(
        request_id=request_id,
        model="tiny",
        kind="completion",
        params=SamplingParams(**params),
        prompt=prompt,
        adapter=adapter,
        prompt_cache_max_len=prompt_cache_max_len,
        context_length=context_length,
        truncate_max_tokens=truncate,
    )


def chat(
    messages: list[dict[str, Any]], request_id: str = "c", adapter: str | None = None, **params: Any
) -> GenerationRequest:
    params.setdefault("temperature", 0.0)
    return GenerationRequest(
        request_id=request_id,
        model="tiny",
        kind="chat",
        params=SamplingParams(**params),
        messages=messages,
        adapter=adapter,
    )


def prompts(
    count: int, vocab: int, seed: int = 0, lengths: tuple[int, ...] = (3, 9, 17, 33, 50, 71)
) -> list[list[int]]:
    """Token-id prompts of mixed lengths (ids above the special tokens)."""
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randint(len(SPECIALS), vocab, (lengths[i % len(lengths)],), generator=gen).tolist()
        for i in range(count)
    ]


class TokenIds:
    """Token text (as the engine's logprobs name it) back to its id; texts are unique per token."""

    def __init__(self, folder: Path) -> None:
        from transformers import AutoTokenizer

        from firebox.inference.local.choice_output import TokenTexts

        texts = TokenTexts(AutoTokenizer.from_pretrained(str(folder), local_files_only=True))
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.ids = {texts(i): i for i in range(len(tokenizer))}
        assert len(self.ids) == len(tokenizer), "token texts must be unique for the parity check"

    def __call__(self, text: str) -> int:
        return self.ids[text]


def engine_steps(
    result: Result, token_ids: TokenIds, index: int = 0
) -> tuple[list[int], list[float]]:
    """The generated token ids and their logprobs, from a completion's logprob deltas."""
    tokens: list[int] = []
    logprobs: list[float] = []
    for delta in result.deltas.get(index, []):
        if delta.logprobs:
            tokens.extend(token_ids(t) for t in delta.logprobs["tokens"])
            logprobs.extend(delta.logprobs["token_logprobs"])
    return tokens, logprobs


def assert_matches_reference(tokens: list[int], logprobs: list[float], ref: Reference) -> None:
    """Engine tokens equal the reference's; each step's logprob agrees within 1e-4.

    A token that differs is accepted only as a near-tie: at that step the
    reference gives both tokens logprobs within 1e-4 of each other, and the
    engine's logprob of its own token matches the reference's within 1e-4
    (the logits agree; batch-order rounding chose the other twin). The
    sequences legitimately diverge after it, so the comparison stops there.
    """
    for step, (mine, theirs) in enumerate(zip(tokens, ref.tokens, strict=False)):
        ref_lp = ref.logprobs[step]
        assert abs(logprobs[step] - float(ref_lp[mine])) < 1e-4, (
            step,
            logprobs[step],
            float(ref_lp[mine]),
        )
        if mine != theirs:
            gap = abs(float(ref_lp[mine]) - float(ref_lp[theirs]))
            assert gap < 1e-4, f"step {step}: engine chose {mine}, reference {theirs} (gap {gap})"
            return
    assert tokens == ref.tokens
