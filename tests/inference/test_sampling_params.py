"""Sampling parameters at the API edge, and an engine failing mid-answer.

Every sampling parameter is held to the range vLLM / OpenAI use and must be
finite: a value an engine cannot sample with used to abort every request in
the local engine's batch. A 400 names the parameter, also when the bad
number is nested (JSON ``1e400`` parses to infinity).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from firebox.app import create_app
from firebox.catalog.binding import EngineBinding
from firebox.clock import FakeClock
from firebox.errors import InvalidArgument
from firebox.inference.engine import (
    EmbeddingEngine,
    EngineCapabilities,
    GenerationEvent,
    GenerationFailed,
    GenerationRequest,
    PromptInfo,
    TextDelta,
    UsageReport,
)
from firebox.inference.models import ModelRef
from firebox.inference.protocol import ChatCompletionRequest
from firebox.server import initialize
from firebox.services import Services, build_services
from firebox.settings import Settings
from firebox.store.database import Database
from tests.catalog.conftest import create_model, text_base
from tests.inference.conftest import register_upstream_models
from tests.support.api import bearer, create_account, member_key
from tests.support.fake_upstream import FakeUpstream
from tests.support.ledger import usage_rows

BASE = "accounts/firebox/models/llama-8b"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def key(
    client: TestClient, operator_headers: dict[str, str], upstream: FakeUpstream
) -> dict[str, str]:
    register_upstream_models(client, operator_headers, upstream)
    create_account(client, operator_headers, "acme")
    return bearer(member_key(client, operator_headers, "acme", "dev", "user"))


def _post_raw(client: TestClient, key: dict[str, str], fields: str) -> Any:
    """POST a chat body whose extra fields are raw JSON text (to carry 1e400 or NaN)."""
    body = f'{{"model": "{BASE}", "messages": {json.dumps(MESSAGES)}, {fields}}}'
    return client.post(
        "/v1/chat/completions",
        content=body.encode(),
        headers={**key, "content-type": "application/json"},
    )


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ('"temperature": 2.5', "temperature"),
        ('"temperature": -0.1', "temperature"),
        ('"top_p": 0', "top_p"),
        ('"top_p": 1.01', "top_p"),
        ('"top_k": -2', "top_k"),
        ('"min_p": 1.5', "min_p"),
        ('"repetition_penalty": 0', "repetition_penalty"),
        ('"repetition_penalty": 2.5', "repetition_penalty"),
        ('"presence_penalty": -2.01', "presence_penalty"),
        ('"frequency_penalty": 3', "frequency_penalty"),
        ('"seed": 9223372036854775808', "seed"),
        ('"seed": -9223372036854775809', "seed"),
        ('"seed": 1e30', "seed"),
        ('"logit_bias": {"42": 100.5}', "logit_bias"),
        ('"logit_bias": {"abc": 1}', "logit_bias"),
        ('"logit_bias": {"-1": 1}', "logit_bias"),
        ('"logit_bias": {"99999999999": 1}', "logit_bias"),
        # non-finite numbers, which orjson refuses: the 400 still names the field
        ('"temperature": 1e400', "temperature"),
        ('"repetition_penalty": NaN', "repetition_penalty"),
        ('"presence_penalty": -Infinity', "presence_penalty"),
        ('"logit_bias": {"42": 1e999}', "logit_bias.42"),
        (
            '"tools": [{"type": "function", "function": {"name": "f", '
            '"parameters": {"type": "number", "minimum": -1e400}}}]',
            "tools.0.function.parameters.minimum",
        ),
    ],
)
def test_out_of_range_sampling_parameters_are_a_400_naming_them(
    client: TestClient, key: dict[str, str], upstream: FakeUpstream, fields: str, param: str
) -> None:
    response = _post_raw(client, key, fields)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] is not None and error["param"].startswith(param), error
    assert error["type"] == "invalid_request_error"
    assert upstream.requests == []  # refused before any work


def test_edge_values_are_accepted(
    client: TestClient, key: dict[str, str], upstream: FakeUpstream
) -> None:
    fields = (
        '"temperature": 2, "top_p": 1, "top_k": -1, "min_p": 1, "repetition_penalty": 2, '
        '"presence_penalty": -2, "frequency_penalty": 2, "seed": 9223372036854775807, '
        '"logit_bias": {"0": -100, "42": 100}, "max_tokens": 2'
    )
    response = _post_raw(client, key, fields)
    assert response.status_code == 200, response.text
    [sent] = upstream.requests
    assert "top_k" not in sent  # -1 means "disabled", as 0 does
    assert sent["seed"] == 2**63 - 1
    assert sent["logit_bias"] == {"0": -100, "42": 100}


def test_logit_bias_token_ids_are_checked_against_a_known_vocabulary() -> None:
    body = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": MESSAGES, "logit_bias": {"7": 1, "420": 2, "500": 3}}
    )
    body.check_vocabulary(None)  # unknown vocabulary (an upstream): the range check alone
    body.check_vocabulary(501)
    with pytest.raises(InvalidArgument) as caught:
        body.check_vocabulary(420)
    assert caught.value.param == "logit_bias.420"


def _sse_chunks(text: str) -> list[dict[str, Any]]:
    events = [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_an_upstream_failing_mid_stream_ends_it_with_an_error_event(
    client: TestClient, key: dict[str, str], upstream: FakeUpstream, services: Services
) -> None:
    upstream.close_after_tokens = 2
    response = client.post(
        "/v1/chat/completions",
        json={"model": BASE, "messages": MESSAGES, "stream": True, "max_tokens": 8},
        headers={**key, "x-request-id": "broken-mid-stream"},
    )
    assert response.status_code == 200
    chunks = _sse_chunks(response.text)
    text = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")
    )
    assert text == "tok0 tok1"
    error = chunks[-1]["error"]
    assert error["code"] == "upstream_error" and error["message"]
    [record] = usage_rows(services, "broken-mid-stream")
    assert record.outcome == "failed" and record.account_id == "acme"


class FailingEngine:
    """Fails as the local engine fails one request: usage of what it produced, then the error."""

    capabilities = EngineCapabilities(params=frozenset({"max_tokens"}))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        yield PromptInfo(prompt_tokens=5)
        yield TextDelta(index=0, text="half an ans", token_count=2)
        # a third token was produced but its text held back (part of a character)
        yield UsageReport(prompt_tokens=5, completion_tokens=3)
        raise GenerationFailed("The local engine could not continue this request (test).")

    async def close(self) -> None:
        pass


class FailingEngines:
    def text(self, binding: EngineBinding, model: ModelRef) -> FailingEngine:
        return FailingEngine()

    def embedding(self, binding: EngineBinding, model: ModelRef) -> EmbeddingEngine:
        raise AssertionError("no embeddings here")


@pytest.fixture
def failing_services(
    settings: Settings, database: Database, clock: FakeClock
) -> Iterator[Services]:
    built = build_services(settings, db=database, clock=clock, engine_factory=FailingEngines())
    initialize(built)
    yield built
    built.revocations.close()


@pytest.mark.parametrize("stream", [True, False])
def test_a_request_the_engine_fails_is_billed_for_what_it_produced(
    failing_services: Services, operator_headers: dict[str, str], stream: bool
) -> None:
    with TestClient(create_app(failing_services), raise_server_exceptions=False) as client:
        create_model(
            client,
            operator_headers,
            "firebox",
            "tiny",
            text_base(public=True, engine={"type": "local"}),
        )
        create_account(client, operator_headers, "acme")
        headers = bearer(member_key(client, operator_headers, "acme", "dev", "user"))
        response = client.post(
            "/v1/chat/completions",
            json={"model": "accounts/firebox/models/tiny", "messages": MESSAGES, "stream": stream},
            headers={**headers, "x-request-id": f"engine-failed-{stream}"},
        )
    if stream:
        assert response.status_code == 200
        chunks = _sse_chunks(response.text)
        assert chunks[0]["choices"][0]["delta"]["content"] == "half an ans"
        assert chunks[-1]["error"]["code"] == "generation_failed"
        assert chunks[-1]["error"]["type"] == "internal_error"
    else:
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "generation_failed"
    [record] = usage_rows(failing_services, f"engine-failed-{stream}")
    assert record.outcome == "failed" and record.account_id == "acme"
    assert record.prompt_tokens == 5
    assert record.completion_tokens == 3  # the engine's count, held-back token included
