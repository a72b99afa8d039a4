"""Serving tells the engine the completion bound admission paid for (issue 13, finding 7).

Without ``max_tokens`` a choice may generate the model's default bound (not
the rest of the context), and a ticket admitted with a capped completion
lowers ``max_tokens`` to that cap, so the engine stops there with
``finish_reason: "length"`` and the request cannot cost more than was held.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any, cast

import pytest

from firebox.accounts.principal import Principal
from firebox.accounts.roles import Role
from firebox.catalog.binding import LocalEngine
from firebox.catalog.kinds import ModelKind
from firebox.clock import SystemClock
from firebox.inference.admission import Demand, OpenTicket, Ticket
from firebox.inference.engine import (
    ChoiceFinished,
    EngineCapabilities,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
    UsageReport,
)
from firebox.inference.metering import CollectingUsageSink
from firebox.inference.models import ModelRef, ModelResolver
from firebox.inference.protocol import ChatCompletionRequest
from firebox.inference.router import EngineRouter
from firebox.inference.serving import Answer, InferenceService

pytestmark = pytest.mark.anyio

MEMBER = Principal("acme", "alice", 2, Role.USER, "k1", "h1")
MODEL = ModelRef(
    name="accounts/firebox/models/m",
    kind=ModelKind.TEXT_BASE,
    binding=LocalEngine(path="m"),
    engine_model="m",
    adapter=None,
    billing_model="accounts/firebox/models/m",
    context_length=100_000,
    vision=False,
    price_class="TEXT_DENSE_UP_TO_16B",
    max_completion_tokens=30,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class CountingEngine:
    """Generates one token at a time until ``max_tokens`` (or 1,000 without one)."""

    capabilities = EngineCapabilities(params=frozenset())

    def __init__(self) -> None:
        self.requests: list[GenerationRequest] = []

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        self.requests.append(request)
        limit = request.params.max_tokens or 1_000
        for _ in range(limit):
            yield TextDelta(index=0, text="x", token_count=1)
        yield ChoiceFinished(index=0, finish_reason="length")
        yield UsageReport(prompt_tokens=3, completion_tokens=limit)

    async def close(self) -> None:
        return None


@dataclass
class Models:
    model: ModelRef = MODEL

    def resolve_text(self, account_id: str, name: str) -> ModelRef:
        return self.model


@dataclass
class Router:
    engine: CountingEngine

    async def text_engine(self, model: ModelRef) -> CountingEngine:
        return self.engine


@dataclass
class CappingAdmission:
    """Admits with ``cap`` completion tokens per choice; keeps the demands it saw."""

    cap: int | None
    demands: list[Demand] = field(default_factory=list)

    async def admit(self, principal: Principal, demand: Demand) -> Ticket:
        self.demands.append(demand)
        return OpenTicket(completion_cap=self.cap)


def service(
    engine: CountingEngine, admission: CappingAdmission, model: ModelRef = MODEL
) -> InferenceService:
    return InferenceService(
        cast(ModelResolver, Models(model)),
        cast(EngineRouter, Router(engine)),
        CollectingUsageSink(),
        SystemClock(),
        admission,
    )


def chat(**extra: Any) -> ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    return ChatCompletionRequest.model_validate(body)


async def test_without_max_tokens_the_engine_is_bound_by_the_default_it_was_charged_for() -> None:
    engine, admission = CountingEngine(), CappingAdmission(None)
    answer = await service(engine, admission).generate(MEMBER, chat(), "r1")
    assert isinstance(answer, Answer)
    assert admission.demands[0].completion_tokens == 30
    (request,) = engine.requests
    assert request.params.max_tokens == 30 and request.truncate_max_tokens
    assert answer.body["usage"]["completion_tokens"] == 30
    # A context no longer than the default bounds the choice anyway: the engine's own rule.
    short = replace(MODEL, context_length=20)
    engine.requests.clear()
    await service(engine, admission, short).generate(MEMBER, chat(), "r2")
    assert engine.requests[0].params.max_tokens is None
    assert admission.demands[1].completion_tokens == 20


async def test_a_capped_ticket_lowers_max_tokens_so_the_answer_ends_by_length() -> None:
    engine, admission = CountingEngine(), CappingAdmission(7)
    answer = await service(engine, admission).generate(MEMBER, chat(max_tokens=20), "r1")
    assert isinstance(answer, Answer)
    assert admission.demands[0].completion_tokens == 20  # the demand is what was asked
    (request,) = engine.requests
    assert request.params.max_tokens == 7 and not request.truncate_max_tokens
    assert answer.body["choices"][0]["finish_reason"] == "length"
    assert answer.body["usage"]["completion_tokens"] == 7


async def test_a_cap_above_max_tokens_changes_nothing() -> None:
    engine, admission = CountingEngine(), CappingAdmission(50)
    await service(engine, admission).generate(MEMBER, chat(max_tokens=5), "r1")
    assert engine.requests[0].params.max_tokens == 5
