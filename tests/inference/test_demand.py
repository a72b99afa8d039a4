"""The worst case admission reserves: an upper bound of what a request can bill."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from typing import Any

import orjson

from firebox.catalog.binding import LocalEngine
from firebox.catalog.kinds import ModelKind
from firebox.inference.admission import Demand
from firebox.inference.demand import (
    TEMPLATE_TOKENS_PER_MESSAGE,
    completion_bound,
    embedding_demand,
    generation_demand,
)
from firebox.inference.models import DEFAULT_MAX_COMPLETION_TOKENS, ModelRef
from firebox.inference.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingCreate


def ref(context_length: int = 0, kind: ModelKind = ModelKind.TEXT_BASE) -> ModelRef:
    return ModelRef(
        name="accounts/firebox/models/m",
        kind=kind,
        binding=LocalEngine(path="m"),
        engine_model="m",
        adapter=None,
        billing_model="accounts/firebox/models/m",
        context_length=context_length,
        vision=False,
        price_class="TEXT_DENSE_UP_TO_16B",
    )


def test_token_id_prompts_are_counted_exactly_and_choices_multiply() -> None:
    body = CompletionRequest.model_validate(
        {"model": "m", "prompt": [[1, 2, 3], [4]], "max_tokens": 5, "n": 2}
    )
    demand = generation_demand(body, ref(512), "acme", "r1", 0)
    assert demand.prompt_tokens == 4
    assert demand.completion_tokens == 2 * 2 * 5  # two prompts, two choices each
    assert demand.choices == 4
    assert demand.price_class == "TEXT_DENSE_UP_TO_16B" and demand.account_id == "acme"


def test_chat_prompt_is_bounded_by_its_bytes_plus_a_template_allowance() -> None:
    messages = [{"role": "user", "content": "héllo wörld"}]
    body = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": messages, "max_tokens": 7}
    )
    demand = generation_demand(body, ref(4096), "acme", "r1", images=2)
    size = len(orjson.dumps([{"role": "user", "content": "héllo wörld"}]))
    assert demand.prompt_tokens == size + TEMPLATE_TOKENS_PER_MESSAGE
    assert demand.completion_tokens == 7 and demand.images == 2


def test_without_max_tokens_each_choice_may_fill_a_short_context() -> None:
    body = CompletionRequest.model_validate({"model": "m", "prompt": "x" * 5000, "n": 3})
    demand = generation_demand(body, ref(1024), "acme", "r1", 0)
    assert demand.prompt_tokens == 1024  # a longer prompt is refused by the engine
    assert demand.completion_tokens == 3 * 1024


def test_without_max_tokens_a_choice_is_bounded_by_the_default_not_the_context() -> None:
    """A request without max_tokens no longer reserves the whole context (issue 13, finding 7)."""
    messages = [{"role": "user", "content": "hi"}]
    chat = ChatCompletionRequest.model_validate({"model": "m", "messages": messages, "n": 2})
    demand = generation_demand(chat, ref(131_072), "acme", "r1", 0)
    assert demand.completion_tokens == 2 * DEFAULT_MAX_COMPLETION_TOKENS
    assert demand.choices == 2
    operator_set = replace(ref(131_072), max_completion_tokens=300)
    assert completion_bound(chat, operator_set) == 300
    explicit = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": messages, "max_tokens": 5000}
    )
    assert completion_bound(explicit, operator_set) == 5000  # what the caller asked for


def test_an_unknown_context_length_is_bounded_by_the_default() -> None:
    prompt = "y" * 100_000
    body = CompletionRequest.model_validate({"model": "m", "prompt": prompt})
    demand = generation_demand(body, ref(0), "acme", "r1", 0)
    assert demand.prompt_tokens == 100_000 + TEMPLATE_TOKENS_PER_MESSAGE
    assert demand.completion_tokens == DEFAULT_MAX_COMPLETION_TOKENS


def test_embedding_demand_is_the_inputs_only() -> None:
    body = EmbeddingCreate.model_validate({"model": "m", "input": ["ab", "cde"]})
    demand = embedding_demand(body, ref(512, ModelKind.EMBEDDING), "acme", "r2")
    assert demand.prompt_tokens == 2 + 3 + 2 * TEMPLATE_TOKENS_PER_MESSAGE
    assert demand.completion_tokens == 0 and demand.kind == "embedding"
    assert demand.choices == 0


def test_with_completion_keeps_every_other_field() -> None:
    """Admission prices its floor with it: a field it dropped would misprice the floor."""
    values: dict[str, Any] = {}
    for number, spec in enumerate(dataclasses.fields(Demand)):
        values[spec.name] = f"v{number}" if spec.type.startswith("str") else number + 1
    demand = Demand(**values)
    assert demand.with_completion(7) == replace(demand, completion_tokens=7)
