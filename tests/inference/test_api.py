"""The inference routes end to end through the gateway, in process, over a fake vLLM."""

from __future__ import annotations

import json
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient

from firebox.services import Services
from tests.catalog.conftest import post_model, text_base
from tests.inference.conftest import ADAPTER, register_upstream_models
from tests.support.api import bearer, create_account, member_key, ok
from tests.support.fake_upstream import FakeUpstream
from tests.support.ledger import usage_rows

BASE = "accounts/firebox/models/llama-8b"
ADDON = "accounts/firebox/models/llama-8b-sql"


@pytest.fixture
def key(
    client: TestClient, operator_headers: dict[str, str], upstream: FakeUpstream
) -> dict[str, str]:
    register_upstream_models(client, operator_headers, upstream)
    create_account(client, operator_headers, "acme")
    return bearer(member_key(client, operator_headers, "acme", "dev", "user"))


def sse(response: Any) -> list[dict[str, Any]]:
    events = []
    for line in response.text.splitlines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            events.append({"done": True} if payload == "[DONE]" else json.loads(payload))
    return events


@pytest.mark.parametrize("prefix", ["/v1", "/inference/v1"])
def test_chat_non_streaming(
    client: TestClient, key: dict[str, str], prefix: str, services: Services
) -> None:
    response = client.post(
        f"{prefix}/chat/completions",
        json={
            "model": BASE,
            "messages": [{"role": "user", "content": "say five words"}],
            "max_tokens": 5,
        },
        headers={**key, "x-request-id": "req-chat-1"},
    )
    body = ok(response)
    assert body["object"] == "chat.completion"
    assert body["model"] == BASE
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"]
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + 5
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    assert response.headers["fireworks-prompt-tokens"] == str(usage["prompt_tokens"])
    assert response.headers["fireworks-cached-prompt-tokens"] == "0"
    assert response.headers["x-request-id"] == "req-chat-1"
    [record] = usage_rows(services, "req-chat-1")
    assert record.account_id == "acme"
    assert record.model == BASE and record.base_model == BASE
    assert record.completion_tokens == 5 and record.outcome == "completed"
    assert record.prompt_tokens == usage["prompt_tokens"]
    # 8B dense: $0.20 per 1M tokens, rounded half-even to the micro-dollar.
    tokens = usage["prompt_tokens"] + 5
    expected = (Decimal(tokens) * Decimal("0.2")).to_integral_value(ROUND_HALF_EVEN)
    assert record.amount_micros == int(expected) and record.unit_price_micros == 200_000


def test_chat_streaming_with_usage(
    client: TestClient, key: dict[str, str], services: Services
) -> None:
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": BASE,
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 4,
            "stream": True,
            "stream_options": {"include_usage": True},
            "perf_metrics_in_response": True,
        },
        headers={**key, "x-request-id": "req-stream-1"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse(response)
    assert events[-1] == {"done": True}
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "length"
    last = chunks[-1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 4
    assert last["perf_metrics"]["completion_tokens"] == 4
    records = usage_rows(services, "req-stream-1")
    assert len(records) == 1 and records[0].outcome == "completed"
    assert records[0].completion_tokens == 4


def test_lora_addon_goes_to_its_adapter_at_base_price(
    client: TestClient, key: dict[str, str], upstream: FakeUpstream, services: Services
) -> None:
    body = ok(
        client.post(
            "/v1/completions",
            json={"model": ADDON, "prompt": "SELECT", "max_tokens": 3},
            headers={**key, "x-request-id": "req-lora"},
        )
    )
    assert body["object"] == "text_completion"
    assert body["model"] == ADDON
    assert upstream.requests[-1]["model"] == ADAPTER
    [record] = usage_rows(services, "req-lora")
    assert record.model == ADDON and record.base_model == BASE
    assert record.unit_price_micros == 200_000  # the base model's rate, no surcharge


def test_completions_batch_prompts_and_n(client: TestClient, key: dict[str, str]) -> None:
    body = ok(
        client.post(
            "/v1/completions",
            json={"model": BASE, "prompt": ["one", "two three"], "max_tokens": 2, "n": 2},
            headers=key,
        )
    )
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["usage"]["completion_tokens"] == 8


def test_parameters_are_mapped_upstream(
    client: TestClient, key: dict[str, str], upstream: FakeUpstream
) -> None:
    ok(
        client.post(
            "/v1/chat/completions",
            json={
                "model": BASE,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2,
                "temperature": 0.3,
                "top_p": 0.9,
                "top_k": 40,
                "stop": ["\n"],
                "seed": 7,
                "logprobs": True,
                "top_logprobs": 2,
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
                "tool_choice": "auto",
                "response_format": {"type": "json_object"},
            },
            headers=key,
        )
    )
    sent = upstream.requests[-1]
    assert sent["temperature"] == 0.3 and sent["top_p"] == 0.9 and sent["top_k"] == 40
    assert sent["stop"] == ["\n"] and sent["seed"] == 7
    assert sent["logprobs"] is True and sent["top_logprobs"] == 2
    assert sent["tools"][0]["function"]["name"] == "f" and sent["tool_choice"] == "auto"
    assert sent["response_format"] == {"type": "json_object"}
    # A non-streaming call is fetched whole from the upstream; a streaming one streams.
    assert sent["stream"] is False and "stream_options" not in sent
    streamed = client.post(
        "/v1/chat/completions",
        json={"model": BASE, "messages": [{"role": "user", "content": "hi"}], "stream": True},
        headers=key,
    )
    assert streamed.status_code == 200
    sent = upstream.requests[-1]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, 400, "model", "missing_parameter"),
        ({"model": BASE, "messages": []}, 400, "messages", "invalid_argument"),
        (
            {"model": BASE, "messages": [{"role": "user", "content": "x"}], "bogus": 1},
            400,
            "bogus",
            "unknown_parameter",
        ),
        (
            {"model": BASE, "messages": [{"role": "user", "content": "x"}], "mirostat_lr": 0.1},
            400,
            "mirostat_lr",
            "unsupported_parameter",
        ),
        (
            {"model": BASE, "messages": [{"role": "user", "content": "x"}], "temperature": 3},
            400,
            "temperature",
            "invalid_argument",
        ),
        (
            {"model": BASE, "messages": [{"role": "robot", "content": "x"}]},
            400,
            "messages.0.role",
            "invalid_argument",
        ),
        (
            {
                "model": "accounts/firebox/models/nope",
                "messages": [{"role": "user", "content": "x"}],
            },
            404,
            None,
            "model_not_found",
        ),
        (
            {
                "model": "accounts/firebox/models/all-minilm-l6-v2",
                "messages": [{"role": "user", "content": "x"}],
            },
            400,
            "model",
            "wrong_model_kind",
        ),
        (
            {"model": BASE + "#dep-1", "messages": [{"role": "user", "content": "x"}]},
            404,
            "model",
            "deployment_not_found",
        ),
    ],
)
def test_bad_chat_requests(
    client: TestClient,
    key: dict[str, str],
    body: dict[str, Any],
    status: int,
    param: str | None,
    code: str,
) -> None:
    response = client.post("/v1/chat/completions", json=body, headers=key)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    if param:
        assert error["param"] == param


def test_malformed_json_and_auth(client: TestClient, key: dict[str, str]) -> None:
    bad = client.post(
        "/v1/chat/completions",
        content=b"{not json",
        headers={**key, "content-type": "application/json"},
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    anonymous = client.post("/v1/chat/completions", json={"model": BASE, "messages": []})
    assert anonymous.status_code == 401


def test_images_need_a_vision_model(
    client: TestClient,
    key: dict[str, str],
    operator_headers: dict[str, str],
    upstream: FakeUpstream,
) -> None:
    message = {
        "role": "user",
        "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ],
    }
    refused = client.post(
        "/v1/chat/completions",
        json={"model": BASE, "messages": [message], "max_tokens": 2},
        headers=key,
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "images_not_supported"
    ok(
        client.patch(
            "/v1/accounts/firebox/models/llama-8b",
            json={"supportsImageInput": True},
            headers=operator_headers,
        )
    )
    accepted = ok(
        client.post(
            "/v1/chat/completions",
            json={"model": BASE, "messages": [message], "max_tokens": 2},
            headers=key,
        )
    )
    text_only = ok(
        client.post(
            "/v1/chat/completions",
            json={
                "model": BASE,
                "messages": [{"role": "user", "content": "what is this"}],
                "max_tokens": 2,
            },
            headers=key,
        )
    )
    assert accepted["usage"]["prompt_tokens"] == text_only["usage"]["prompt_tokens"] + 576


def test_upstream_failures_map_to_502_and_context_to_400(
    client: TestClient, key: dict[str, str], upstream: FakeUpstream
) -> None:
    upstream.fail_status = 500
    failed = client.post(
        "/v1/chat/completions",
        json={"model": BASE, "messages": [{"role": "user", "content": "x"}]},
        headers=key,
    )
    assert failed.status_code == 502
    assert failed.json()["error"]["type"] == "upstream_error"
    upstream.fail_status = None
    long_prompt = " ".join(["word"] * 600)
    too_long = client.post(
        "/v1/completions", json={"model": BASE, "prompt": long_prompt, "max_tokens": 5}, headers=key
    )
    assert too_long.status_code == 400
    assert too_long.json()["error"]["code"] == "upstream_rejected"


def test_models_list_and_get(client: TestClient, key: dict[str, str]) -> None:
    listed = ok(client.get("/v1/models", headers=key))
    ids = {m["id"] for m in listed["data"]}
    assert {BASE, ADDON, "accounts/firebox/models/all-minilm-l6-v2"} <= ids
    got = ok(client.get(f"/inference/v1/models/{BASE}", headers=key))
    assert got["id"] == BASE and got["object"] == "model"
    assert got["created"] > 1_700_000_000  # when it entered the catalog (unix seconds)
    assert all(m["created"] > 1_700_000_000 for m in listed["data"])


def test_inference_user_may_infer_but_not_other_accounts_private_models(
    client: TestClient, operator_headers: dict[str, str], upstream: FakeUpstream
) -> None:
    register_upstream_models(client, operator_headers, upstream)
    create_account(client, operator_headers, "other")
    infer = bearer(member_key(client, operator_headers, "other", "bot", "inference-user"))
    ok(
        client.post(
            "/v1/completions", json={"model": BASE, "prompt": "a", "max_tokens": 1}, headers=infer
        )
    )


TOKENIZER = str(Path(__file__).resolve().parents[2] / "models" / "firebox-tiny")


def count(text: str) -> int:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(f"{TOKENIZER}/tokenizer.json")
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def _register_counted(client: TestClient, operator: dict[str, str], fake: FakeUpstream) -> str:
    """A model on the fake whose tokenizer the gateway knows, with a 64-token context."""
    engine = {
        "type": "upstream",
        "urls": [fake.url],
        "upstreamModel": fake.model,
        "tokenizer": TOKENIZER,
    }
    body = text_base(8e9, public=True, engine=engine)
    body["contextLength"] = 64
    ok(post_model(client, operator, "firebox", "counted", body))
    return "accounts/firebox/models/counted"


def test_context_length_is_checked_with_the_models_tokenizer(
    client: TestClient,
    key: dict[str, str],
    operator_headers: dict[str, str],
    upstream: FakeUpstream,
) -> None:
    model = _register_counted(client, operator_headers, upstream)
    prompt = "the quick brown fox jumps over the lazy dog " * 2
    counted = count(prompt)
    assert counted < 60
    request = {"model": model, "prompt": prompt, "max_tokens": 60}
    refused = client.post("/v1/completions", json=request, headers=key)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert f"({counted} tokens)" in error["message"] and "(60)" in error["message"]
    sent_before = len(upstream.requests)
    request["context_length_exceeded_behavior"] = "truncate"
    truncated = ok(client.post("/v1/completions", json=request, headers=key))
    assert len(upstream.requests) == sent_before + 1
    assert upstream.requests[-1]["max_tokens"] == 64 - counted
    assert truncated["usage"]["completion_tokens"] == 64 - counted


def test_usage_is_counted_with_the_tokenizer_when_the_upstream_omits_it(
    client: TestClient,
    key: dict[str, str],
    operator_headers: dict[str, str],
    upstream: FakeUpstream,
) -> None:
    from tokenizers import Tokenizer

    model = _register_counted(client, operator_headers, upstream)
    upstream.omit_usage = True
    body = ok(
        client.post(
            "/v1/completions",
            json={"model": model, "prompt": "hello world", "max_tokens": 3},
            headers=key,
        )
    )
    tok = Tokenizer.from_file(f"{TOKENIZER}/tokenizer.json")
    assert body["usage"]["prompt_tokens"] == len(
        tok.encode("hello world", add_special_tokens=False).ids
    )
    text = body["choices"][0]["text"]
    assert body["usage"]["completion_tokens"] == len(tok.encode(text, add_special_tokens=False).ids)


def test_a_repeated_client_request_id_is_billed_every_time(
    client: TestClient, key: dict[str, str], services: Services
) -> None:
    body = {"model": BASE, "prompt": "hello", "max_tokens": 2}
    for _ in range(2):
        answer = client.post("/v1/completions", json=body, headers={**key, "x-request-id": "same"})
        assert answer.status_code == 200
        assert answer.headers["x-request-id"] == "same"  # still echoed
    rows = usage_rows(services, "same")
    assert len(rows) == 2 and len({r.request_id for r in rows}) == 2
    assert all(r.completion_tokens == 2 and r.account_id == "acme" for r in rows)


def test_a_client_gone_before_the_stream_starts_is_metered_and_settled(
    client: TestClient, key: dict[str, str], services: Services
) -> None:
    """Starlette skips the body when the headers cannot be sent; the run must still end."""
    body = json.dumps(
        {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    ).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (b"authorization", key["Authorization"].encode()),
            (b"x-request-id", b"gone-early"),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            raise OSError("the client went away")

    async def call() -> None:
        # Starlette reports the failed send, possibly wrapped in an exception group.
        with pytest.raises((OSError, ExceptionGroup)):
            await client.app(scope, receive, send)

    anyio.run(call)
    [record] = usage_rows(services, "gone-early")
    assert record.outcome == "cancelled" and record.account_id == "acme"
    assert services.money.spend_guard.reserved("acme") == 0  # type: ignore[attr-defined]
